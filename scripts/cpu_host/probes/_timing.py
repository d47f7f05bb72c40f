"""The probes' timer: the best of n evaluations of an MLX graph, in milliseconds, after one warm-up."""
import time

import mlx.core as mx


def best_ms(fn, n: int = 5) -> float:
    mx.eval(fn())
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - start)
    return best * 1000
