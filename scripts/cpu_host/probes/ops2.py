"""Nine shifted products against three products over three taps each (K = 3 channels), one thread."""
import time, os, mlx.core as mx
from core import runtime
B = int(os.environ.get("B", 200))
from _timing import best_ms as t
with runtime.blas_threads(1):
    for hw, c in ((32, 16), (16, 32), (8, 64)):
        p = hw + 2; rows = (B + 2) * p * p; reach = p + 1; n = rows - 2 * reach
        x = mx.random.normal((rows, c)); ws = [mx.random.normal((c, c)) * 0.1 for _ in range(9)]
        w3 = [mx.concatenate(ws[3 * i:3 * i + 3], axis=0) for i in range(3)]
        mx.eval(x, ws, w3)
        def nine():
            out = None
            for k, w in enumerate(ws):
                i, j = divmod(k, 3); s = reach + (i - 1) * p + (j - 1); q = x[s:s + n]
                out = q @ w if out is None else mx.addmm(out, q, w)
            return out
        def three():
            m = rows - 2
            x3 = mx.concatenate([x[0:m], x[1:m + 1], x[2:m + 2]], axis=1)  # row r: pixels r, r+1, r+2
            out = None
            for i in range(3):
                s = reach + (i - 1) * p - 1; q = x3[s:s + n]
                out = q @ w3[i] if out is None else mx.addmm(out, q, w3[i])
            return out
        def x3only():
            m = rows - 2
            return mx.concatenate([x[0:m], x[1:m + 1], x[2:m + 2]], axis=1)
        a, b = nine(), three(); mx.eval(a, b)
        print(hw, c, "nine", round(t(nine), 2), "three", round(t(three), 2), "concat3", round(t(x3only), 2),
              "maxdiff", float(mx.abs(a - b).max()))
