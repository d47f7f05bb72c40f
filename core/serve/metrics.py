"""Prometheus text-format metrics for the server: requests, errors, latency histogram, tokens, memory."""
from __future__ import annotations

import threading
from collections import defaultdict

import mlx.core as mx
import psutil

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = defaultdict(int)  # (endpoint, status) -> count
        self.errors = defaultdict(int)  # endpoint -> count of 4xx and 5xx
        self.latency_counts = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.latency_sum = defaultdict(float)
        self.latency_n = defaultdict(int)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if status >= 400:
                self.errors[endpoint] += 1
            counts = self.latency_counts[endpoint]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_n[endpoint] += 1

    def render(self, engines) -> str:
        stats = engines.text.stats
        out = []

        def block(name, kind, help_text, samples):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        with self._lock:
            block("mlxq_requests_total", "counter", "HTTP requests by endpoint and status.",
                  [f'mlxq_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())])
            block("mlxq_request_errors_total", "counter", "Requests answered with a 4xx or 5xx status.",
                  [f'mlxq_request_errors_total{{endpoint="{e}"}} {n}' for e, n in sorted(self.errors.items())])
            samples = []
            for endpoint in sorted(self.latency_n):
                for bound, count in zip(LATENCY_BUCKETS, self.latency_counts[endpoint]):
                    samples.append(f'mlxq_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {count}')
                samples.append(f'mlxq_request_duration_seconds_bucket{{endpoint="{endpoint}",le="+Inf"}} '
                               f'{self.latency_n[endpoint]}')
                samples.append(f'mlxq_request_duration_seconds_sum{{endpoint="{endpoint}"}} {self.latency_sum[endpoint]:.6f}')
                samples.append(f'mlxq_request_duration_seconds_count{{endpoint="{endpoint}"}} {self.latency_n[endpoint]}')
            block("mlxq_request_duration_seconds", "histogram", "Request latency in seconds.", samples)
        counters = [("mlxq_tokens_generated_total", "Completion tokens generated.", stats.generated_tokens),
                    ("mlxq_prompt_tokens_total", "Prompt tokens admitted.", stats.prompt_tokens),
                    ("mlxq_prompt_tokens_cached_total", "Prompt tokens taken from the prompt cache, not computed.",
                     stats.cached_prompt_tokens),
                    ("mlxq_generations_cancelled_total", "Generations stopped because the client left.",
                     stats.cancelled),
                    ("mlxq_generations_deadline_total", "Generations stopped at their deadline.",
                     stats.deadline_exceeded),
                    ("mlxq_batch_steps_total", "Batched decode steps of the text engine.", stats.steps),
                    ("mlxq_vision_batches_total", "Batched forward passes of the vision lane.",
                     engines.vision.batches),
                    ("mlxq_vision_images_total", "Images classified.", engines.vision.images)]
        for name, help_text, value in counters:
            block(name, "counter", help_text, [f"{name} {value}"])
        block("mlxq_process_resident_memory_bytes", "gauge", "Resident set size of the server process.",
              [f"mlxq_process_resident_memory_bytes {psutil.Process().memory_info().rss}"])
        block("mlxq_mlx_active_memory_bytes", "gauge", "Memory held by MLX arrays.",
              [f"mlxq_mlx_active_memory_bytes {mx.get_active_memory()}"])
        block("mlxq_mlx_cache_memory_bytes", "gauge", "Freed MLX buffers kept for reuse.",
              [f"mlxq_mlx_cache_memory_bytes {mx.get_cache_memory()}"])
        block("mlxq_mlx_peak_memory_bytes", "gauge", "Peak MLX memory since start.",
              [f"mlxq_mlx_peak_memory_bytes {mx.get_peak_memory()}"])
        gauges = [("mlxq_models_loaded", "Models resident in the pool.", len(engines.pool.loaded())),
                  ("mlxq_text_running", "Sequences in the text engine's running batches.", stats.running),
                  ("mlxq_text_waiting", "Text requests waiting to join a batch.", stats.waiting),
                  ("mlxq_prompt_cache_bytes", "KV caches kept for prompt-prefix reuse (bounded).",
                   engines.text.prompt_cache.nbytes),
                  ("mlxq_vision_waiting", "Images waiting for the vision lane.", engines.vision.waiting)]
        for name, help_text, value in gauges:
            block(name, "gauge", help_text, [f"{name} {value}"])
        return "\n".join(out) + "\n"
