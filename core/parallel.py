"""Independent batches spread over one MLX CPU stream per core.

On the Linux CPU, MLX runs each stream's element-wise ops on one thread while BLAS uses all cores for the
matrix products only, so one stream leaves a core idle for much of the time (softmax, SiLU, masks, copies).
With one stream per core and single-threaded BLAS, both cores stay busy (the bench's resnet and ppl sections
measure the gain). Elsewhere (Metal, CUDA) batches run one by one on the default stream."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable, Iterator, Sequence

import mlx.core as mx

from core import runtime

_streams: list = []


def cpu_streams() -> list:
    """One MLX CPU stream per usable core (at most 8). Thread-local streams: MLX streams belong to the thread that made
    them, and Streamlit and the API server evaluate in threads of their own."""
    if not _streams:
        _streams.extend(mx.new_thread_local_stream(mx.cpu) for _ in range(max(1, min(runtime.usable_cpus(), 8))))
    return _streams


def parallel_steps() -> int:
    """How many batches `map_batches` computes at once here."""
    return len(cpu_streams()) if runtime.backend() == "cpu" else 1


def map_batches(fn: Callable[[object], Sequence[mx.array] | mx.array], batches: Iterable,
                progress: Callable[[float, str], None] | None = None, message: str = "computing") -> Iterator:
    """fn(batch) for every batch, evaluated, in input order; on the CPU, len(cpu_streams()) batches at a time."""
    batches = list(batches)
    on_cpu = runtime.backend() == "cpu"
    streams = cpu_streams() if on_cpu else [None]
    with runtime.blas_threads(1) if on_cpu and len(streams) > 1 else nullcontext():
        for start in range(0, len(batches), len(streams)):
            results = []
            for stream, batch in zip(streams, batches[start:start + len(streams)]):
                if stream is None:
                    results.append(fn(batch))
                else:
                    with mx.stream(stream):
                        results.append(fn(batch))
            mx.eval(results)
            yield from results
            if progress:
                progress(min(1.0, (start + len(streams)) / len(batches)), message)
