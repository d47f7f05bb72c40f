"""Moving results between ranks. Every collective here is an `all_sum` in which each rank contributes only its own
part and zeros elsewhere, so the sum is each part exactly (x + 0 = x): a result assembled from the ranks' slices
equals the single-process one value for value, whatever the values' dtype.

Every rank must call the same collectives in the same order; a rank that skips one leaves the others waiting."""
from __future__ import annotations

import json
import os
import time

import mlx.core as mx
import numpy as np

from core.dist.group import Ranks


class _Clock:
    """Seconds and bytes spent in collectives since the last `take()`: the all-reduce overhead a row reports."""

    def __init__(self):
        self.seconds, self.bytes = 0.0, 0

    def take(self) -> tuple[float, int]:
        spent = (self.seconds, self.bytes)
        self.seconds, self.bytes = 0.0, 0
        return spent


CLOCK = _Clock()


def _stream():
    """NCCL reduces on the GPU; the ring, JACCL and MPI backends on the CPU (a Metal or CUDA process included)."""
    return mx.gpu if "NCCL_HOST_IP" in os.environ else mx.cpu


def all_sum(values: np.ndarray, ranks: Ranks) -> np.ndarray:
    """The element-wise sum of `values` over the ranks (the array itself for a group of one)."""
    if not ranks.distributed:
        return values
    started = time.perf_counter()
    total = mx.distributed.all_sum(mx.array(values), group=ranks.group, stream=_stream())
    out = np.array(total)
    CLOCK.seconds += time.perf_counter() - started
    CLOCK.bytes += values.nbytes
    return out


def part(n: int, ranks: Ranks) -> slice:
    """This rank's contiguous share of n items (sizes differ by at most one; the first ranks take the extra)."""
    return slice(ranks.rank * n // ranks.size, (ranks.rank + 1) * n // ranks.size)


def assemble(local: np.ndarray, share: slice, n: int, ranks: Ranks) -> np.ndarray:
    """The whole [n, ...] array on every rank, from each rank's rows `local` for its `share` of the n items."""
    if not ranks.distributed:
        return local
    full = np.zeros((n, *local.shape[1:]), dtype=local.dtype)
    full[share] = local
    return all_sum(full, ranks)


def barrier(ranks: Ranks) -> None:
    """Returns on every rank once all have reached it (a rank benchmarking alone is not disturbed by the others)."""
    all_sum(np.zeros(1, np.float32), ranks)


def gather_json(value, ranks: Ranks) -> list:
    """Every rank's JSON-able `value`, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    sizes = np.zeros(ranks.size, np.int32)
    sizes[ranks.rank] = data.size
    sizes = all_sum(sizes, ranks)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    buffer = np.zeros(int(starts[-1]), np.uint8)
    buffer[starts[ranks.rank]:starts[ranks.rank + 1]] = data
    buffer = all_sum(buffer, ranks)
    return [json.loads(buffer[starts[r]:starts[r + 1]].tobytes()) for r in range(ranks.size)]


def from_root(value, ranks: Ranks):
    """Rank 0's JSON-able `value` on every rank (what the others pass is ignored)."""
    if not ranks.distributed:
        return value
    return gather_json(value if ranks.root else None, ranks)[0]
