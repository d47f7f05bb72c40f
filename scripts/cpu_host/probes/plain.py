"""One plain pass of the float32 ResNet-20 (its own forward, batches of 500) over N test images."""
import time, sys, os
import mlx.core as mx, numpy as np
from core import data, runtime
from core.models import registry, resnet
from core.eval import quality
images, labels = data.load_cifar10("test")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
x = resnet.preprocess(images[:n])
model = registry.load_vision(registry.resolve("resnet20")); model = model[0] if isinstance(model, tuple) else model
with runtime.glibc_default_allocator():
    mx.eval(model(x[:500]))
    s = time.perf_counter(); lg = quality.classify_batches(model, x); d = time.perf_counter() - s
print(f"plain {n} images {d:.2f} s -> 10k-equivalent {d * 10000 / n:.1f} s; acc {(lg.argmax(1) == labels[:n]).mean():.4f}")
