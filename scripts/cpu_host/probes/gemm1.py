"""Ten 1024x1024 float32 products through MLX on THREADS BLAS threads (run two at once to spot SMT siblings)."""
import sys, time, mlx.core as mx
from core import runtime
threads = int(sys.argv[1])
a = mx.random.normal((1024, 1024)); b = mx.random.normal((1024, 1024)); mx.eval(a, b)
runtime.set_blas_threads(threads)
mx.eval(a @ b)
s = time.perf_counter()
for _ in range(10): mx.eval(a @ b)
print(f"10 x 1024^3 sgemm, {threads} thread(s): {time.perf_counter() - s:.3f} s")
