"""The flat path's pass over the CIFAR-10 test set for each batch size given."""
import time, sys
t0=time.perf_counter()
import mlx.core as mx, numpy as np
from core import data
from core.models import registry, resnet
from core.eval.flatconv import FlatResNet
t1=time.perf_counter(); print("import", round(t1-t0,2))
images, labels = data.load_cifar10("test")
inputs = resnet.preprocess(images); mx.eval(inputs)
t2=time.perf_counter(); print("data", round(t2-t1,2))
import inspect
print([n for n in dir(registry) if not n.startswith('_')])
model = registry.load_vision(registry.resolve("resnet20"))
model = model[0] if isinstance(model, tuple) else model
flat = FlatResNet(model)
t3=time.perf_counter(); print("model", round(t3-t2,2))
for bs in [int(a) for a in sys.argv[1:]] or [200]:
    t=time.perf_counter(); lg = flat.classify(inputs, batch_size=bs); t4=time.perf_counter()
    print("bs", bs, "pass", round(t4-t,2), "acc", (lg.argmax(1)==labels).mean())
