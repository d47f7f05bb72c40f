"""The flat path's pass with two CPU streams (one BLAS thread each) against one stream (all BLAS threads)."""
import sys, time, mlx.core as mx
from core import data
from core import parallel
from core.eval.flatconv import FlatResNet
from core.models import registry, resnet
images, labels = data.load_cifar10("test"); x = resnet.preprocess(images); mx.eval(x)
model = registry.load_vision(registry.resolve("resnet20")); model = model[0] if isinstance(model, tuple) else model
f = FlatResNet(model)
for streams in (2, 1):
    parallel._streams[:] = [mx.new_thread_local_stream(mx.cpu) for _ in range(streams)]
    s = time.perf_counter(); lg = f.classify(x, batch_size=200); d = time.perf_counter() - s
    print(f"streams {streams} (BLAS threads {'1' if streams > 1 else 'all'}): pass {d:.2f} s acc {(lg.argmax(1) == labels).mean():.4f}")
