"""Per-op cost of the flat ResNet path, one thread (one CPU stream, BLAS 1 thread)."""
import time, sys, os
import mlx.core as mx, numpy as np
from core import runtime
B = int(os.environ.get("B", 200))
from _timing import best_ms as t
with runtime.blas_threads(1):
    for hw, c in ((32, 16), (16, 32), (8, 64)):
        rows = (B + 2) * (hw + 2) ** 2; reach = hw + 3; n = rows - 2 * reach
        x = mx.random.normal((rows, c)); ws = [mx.random.normal((c, c)) * 0.1 for _ in range(9)]
        big = mx.random.normal((9 * c, c)); bias = mx.random.normal((c,)); mask = mx.ones((n, 1))
        mx.eval(x, ws, big, bias, mask)
        def nine():
            out = None
            for k, w in enumerate(ws):
                i, j = divmod(k, 3); s = reach + (i - 1) * (hw + 2) + (j - 1); p = x[s:s + n]
                out = p @ w if out is None else mx.addmm(out, p, w)
            return out
        def nine_sum():
            parts = []
            for k, w in enumerate(ws):
                i, j = divmod(k, 3); s = reach + (i - 1) * (hw + 2) + (j - 1); parts.append(x[s:s + n] @ w)
            return sum(parts[1:], parts[0])
        def one_gemm():  # the 9 taps side by side: one GEMM, N = 9c
            return x @ mx.concatenate(ws, axis=1)
        def im2col():
            cols = mx.concatenate([x[reach + (k // 3 - 1) * (hw + 2) + (k % 3 - 1):][:n] for k in range(9)], axis=1)
            return cols @ big
        def single(): return x[:n] @ ws[0]
        y = nine(); mx.eval(y)
        def ew(): return mx.maximum((y + bias) * mask, 0)
        def ew3(): return mx.maximum((y + bias) * mask + x[reach:reach + n], 0)
        flops = 2 * n * c * c * 9
        r = {"nine addmm": t(nine), "nine + sum": t(nine_sum), "one gemm N=9c": t(one_gemm), "im2col K=9c": t(im2col),
             "one tap gemm": t(single), "bias*mask relu": t(ew), "+residual": t(ew3)}
        print(f"stage hw={hw} c={c} rows={rows} gemm GFLOP/s(nine)={flops / r['nine addmm'] / 1e6:.1f}")
        for k, v in r.items(): print(f"   {k:16s} {v:8.2f} ms")
    # stride-2 conv via conv2d, 16->32 on 34x34 padded images, and 32->64 on 18x18
    for hw, ci, co in ((32, 16, 32), (16, 32, 64)):
        im = mx.random.normal((B, hw + 2, hw + 2, ci)); w = mx.random.normal((co, 3, 3, ci)); mx.eval(im, w)
        print(f"stride-2 conv {ci}->{co} hw={hw}: {t(lambda: mx.conv2d(im, w, stride=2)):.2f} ms")
        im1 = mx.random.normal((B, hw, hw, ci)); mx.eval(im1)
        print(f"stride-1 conv2d {ci}->{ci} hw={hw} (plain path): {t(lambda: mx.conv2d(im1, w[:ci], padding=1)):.2f} ms")
        print(f"pad to rows {ci} hw={hw}: {t(lambda: mx.pad(im1, [(1,1),(1,1),(1,1),(0,0)]).reshape(-1, ci)):.2f} ms")
