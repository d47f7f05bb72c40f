"""Process and MLX memory over time, sampled by a background thread, for the dashboard's System page."""
from __future__ import annotations

import threading
import time
from collections import deque

import mlx.core as mx
import psutil


def snapshot() -> dict:
    process = psutil.Process()
    vm = psutil.virtual_memory()
    return {
        "time": time.time(),
        "rss_bytes": process.memory_info().rss,
        "system_used_bytes": vm.total - vm.available,
        "system_total_bytes": vm.total,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "process_cpu_percent": process.cpu_percent(interval=None),
        "mlx_active_bytes": mx.get_active_memory(),
        "mlx_peak_bytes": mx.get_peak_memory(),
        "mlx_cache_bytes": mx.get_cache_memory(),
    }


class MemoryMonitor:
    """Keeps the last `keep` snapshots, one every `interval` seconds, in a daemon thread."""

    def __init__(self, interval: float = 0.5, keep: int = 1200):
        self.interval = interval
        self.samples: deque[dict] = deque(maxlen=keep)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlxq-memory-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(snapshot())
            self._stop.wait(self.interval)

    def history(self) -> list[dict]:
        return list(self.samples)

    def stop(self) -> None:
        self._stop.set()
