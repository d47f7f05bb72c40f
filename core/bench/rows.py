"""One benchmark figure, and the timing helper every bench section shares."""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class BenchRow:
    section: str
    subject: str
    variant: str
    value: float
    unit: str
    note: str = ""


def best_of(fn, trials: int, warmup=None):
    """(fastest wall time of `fn()` in seconds, its last result) after a warm-up call of `warmup` (default fn);
    fn forces its own evaluation."""
    (warmup or fn)()
    times, result = [], None
    for _ in range(trials):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result
