"""One 3x3 convolution of the flat path, whole against split into row chunks (cache reuse), one thread."""
import time, os, mlx.core as mx
from core import runtime
B = 200
from _timing import best_ms as t
with runtime.blas_threads(1):
    for hw, c in ((32, 16), (16, 32), (8, 64)):
        p = hw + 1; rows = (B + 2) * (hw + 1) ** 2; reach = p + 1; n = rows - 2 * reach
        x = mx.random.normal((rows, c)); ws = [mx.random.normal((c, c)) * 0.1 for _ in range(9)]
        bias = mx.random.normal((c,)); mask = mx.ones((n, 1)); mx.eval(x, ws, bias, mask)
        def conv(lo, hi):
            out = None
            for k, w in enumerate(ws):
                i, j = divmod(k, 3); s = reach + (i - 1) * p + (j - 1) + lo; q = x[s:s + hi - lo]
                out = q @ w if out is None else mx.addmm(out, q, w)
            return mx.maximum((out + bias) * mask[lo:hi], 0)
        res = {}
        res["whole"] = t(lambda: conv(0, n))
        for chunk in (4096, 8192, 16384, 32768):
            if chunk >= n: continue
            def chunked():
                return mx.concatenate([conv(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)])
            res[chunk] = t(chunked)
        print(hw, c, n, {k: round(v, 2) for k, v in res.items()})
