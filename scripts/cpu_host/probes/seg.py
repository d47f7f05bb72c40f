"""Where a batch's time goes in the flat path: each block evaluated on its own, one thread."""
import time, mlx.core as mx, mlx.nn as nn, numpy as np
from core import runtime, data
from core.models import registry, resnet
from core.eval.flatconv import FlatResNet
images, labels = data.load_cifar10("test")
x = resnet.preprocess(images[:200]); mx.eval(x)
model = registry.load_vision(registry.resolve("resnet20")); model = model[0] if isinstance(model, tuple) else model
f = FlatResNet(model)
def run(x, T):
    batch = x.shape[0]
    s = time.perf_counter(); rows = f._to_rows(x); rows = f._conv(rows, f.stem, batch); rows.data = nn.relu(rows.data); mx.eval(rows.data); T["stem"] += time.perf_counter() - s
    for bi, (first, second, sp) in enumerate(f.blocks):
        s = time.perf_counter()
        if first.stride == 1:
            rows = f._room_for_two(rows, batch); shortcut = rows
            inner = f._conv(rows, first, batch); inner.data = nn.relu(inner.data)
            key = f"stage{bi // 3 + 1} s1"
        else:
            ph = f._phases(f._interior(rows, batch))
            inner = f._conv_stride2(ph, first, batch); inner.data = nn.relu(inner.data)
            from core.eval.flatconv import _Rows
            shortcut = _Rows(mx.pad(ph[0].data, [(0, 0), (sp, sp)]), ph[0].start, ph[0].height, ph[0].width)
            key = f"stage{bi // 3 + 1} s2"
        mx.eval(inner.data, shortcut.data); T[key + " conv1"] += time.perf_counter() - s
        s = time.perf_counter()
        out = f._conv(inner, second, batch); off = out.start - shortcut.start
        out.data = nn.relu(out.data + shortcut.data[off: off + out.data.shape[0]]); rows = out
        mx.eval(rows.data); T[key + " conv2"] += time.perf_counter() - s
    s = time.perf_counter(); r = f.head(f._interior(rows, batch).mean(axis=(1, 2))); mx.eval(r); T["head"] += time.perf_counter() - s
from collections import defaultdict
with runtime.blas_threads(1):
    run(x, defaultdict(float)); T = defaultdict(float)
    for _ in range(3): run(x, T)
tot = sum(T.values())
for k, v in T.items(): print(f"{k:22s} {v/3*1000:7.2f} ms  {v/tot*100:5.1f} %")
print("total per batch of 200, one thread:", round(tot / 3 * 1000, 1), "ms")
