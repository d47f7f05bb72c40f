"""Speed and memory of a model as deployed (packed weights, MLX's quantized kernels): latency, throughput, memory."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import psutil

from core.quant.precision import activation_dtype


@dataclass
class SpeedReport:
    latency_ms_p50: float
    latency_ms_p90: float
    throughput: float
    throughput_unit: str
    peak_memory_bytes: int
    rss_bytes: int
    protocol: str
    extra: dict = field(default_factory=dict)


# progress(fraction done, message): how a benchmark of tens of seconds shows movement on a page or a CLI
Progress = Callable[[float, str], None]


def timed(fn, warmup: int, trials: int, on_trial: Callable[[int], None] | None = None) -> list[float]:
    """Wall times in ms of `fn()`, which must force its own evaluation (MLX is lazy); `on_trial(i)` after the
    i-th timed trial (1-based)."""
    for _ in range(warmup):
        fn()
    samples = []
    for i in range(trials):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
        if on_trial:
            on_trial(i + 1)
    return samples


def _counter(progress: Progress | None, total: int, what: str, done_before: int = 0) -> Callable[[int], None]:
    """An on_trial callback that reports 'what i/total' to `progress`, counting on from `done_before`."""
    def report(i: int) -> None:
        if progress:
            progress((done_before + i) / total, f"{what} {done_before + i}/{total}")
    return report


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 90))


def bench_classifier(model: nn.Module, sample: mx.array, batch: int = 250, trials: int = 10,
                     progress: Progress | None = None) -> SpeedReport:
    """Latency of one image (batch 1) and throughput in images/s at `batch`, inputs in the model's dtype;
    `progress` hears of every timed trial."""
    sample = sample.astype(activation_dtype(model))
    mx.reset_peak_memory()
    one = sample[:1]
    latency_trials, batch_trials = max(trials, 10), max(3, trials // 3)
    total = latency_trials + batch_trials
    latency = timed(lambda: mx.eval(model(one)), warmup=3, trials=latency_trials,
                    on_trial=_counter(progress, total, "trial"))
    many = mx.concatenate([sample] * -(-batch // sample.shape[0]))[:batch]
    batch_times = timed(lambda: mx.eval(model(many)), warmup=1, trials=batch_trials,
                        on_trial=_counter(progress, total, f"trial (batch {batch})", latency_trials))
    p50, p90 = _percentiles(latency)
    return SpeedReport(
        p50, p90, batch / (np.median(batch_times) / 1e3), "images/s", mx.get_peak_memory(),
        psutil.Process().memory_info().rss,
        f"latency: batch 1, {len(latency)} trials after 3 warm-up; throughput: batch {batch}, "
        f"median of {len(batch_times)} trials")


def bench_generation(model: nn.Module, prompt_tokens: np.ndarray, decode_tokens: int = 32,
                     progress: Progress | None = None) -> SpeedReport:
    """Prefill of the prompt, then greedy decode with a KV cache; latency is per decoded token; `progress`
    hears of every decode step."""
    from mlx_lm.models.cache import make_prompt_cache

    prompt = mx.array(prompt_tokens[None].astype(np.int32))

    def prefill():
        cache = make_prompt_cache(model)
        logits = model(prompt, cache=cache)
        mx.eval(logits)
        return cache, logits

    prefill(), mx.reset_peak_memory()  # warm-up (kernel set-up), then measure from a clean peak
    start = time.perf_counter()
    cache, logits = prefill()
    prefill_s = time.perf_counter() - start
    token = logits[:, -1].argmax(axis=-1, keepdims=True)
    mx.eval(token)
    per_token = []
    step = _counter(progress, decode_tokens, "decode step")
    for i in range(decode_tokens):
        start = time.perf_counter()
        token = model(token, cache=cache)[:, -1].argmax(axis=-1, keepdims=True)
        mx.eval(token)
        per_token.append((time.perf_counter() - start) * 1e3)
        step(i + 1)
    steady = per_token[2:] if len(per_token) > 4 else per_token  # first steps still warm up
    p50, p90 = _percentiles(steady)
    return SpeedReport(
        p50, p90, 1e3 * len(steady) / sum(steady), "decode tokens/s", mx.get_peak_memory(),
        psutil.Process().memory_info().rss,
        f"prefill {prompt.shape[1]} tokens, then {decode_tokens} greedy decode steps with a KV cache, batch 1; "
        f"latency per decoded token (first {len(per_token) - len(steady)} steps excluded)",
        {"prefill_tokens_per_s": prompt.shape[1] / prefill_s, "prefill_tokens": int(prompt.shape[1])})
