"""What the machine and the lab hold now: the runtime, the models and data found, and memory over time."""
from __future__ import annotations

import threading
import time
from collections import deque

import mlx.core as mx
import psutil

from core import data, runtime, settings
from core.errors import LabError
from core.models import registry


def _model_status(info: registry.ModelInfo) -> str:
    try:
        if info.name == registry.OWN_RESNET:
            return "ready (in the repository)"
        if info.kind == "vision":
            registry.resnet_weights_path(info.name)
            return "ready (data mirror)"
        from core.models.gguf import converted_model_ready  # tokenizers: only when a language model is listed

        return "ready (converted)" if converted_model_ready(settings.cache_root()) else "not prepared: run ./lab setup"
    except LabError as error:
        return f"missing: {error}"


def system_status() -> dict:
    datasets = [
        {"dataset": "CIFAR-10 test", "source": "mirror" if data.mirror_file("data/cifar10/cifar10_test.npz")
         else "Hugging Face hub (uoft-cs/cifar10) on first use"},
        {"dataset": "WikiText-2 raw test", "source": "mirror" if data.mirror_file("data/wikitext-2-raw/wiki.test.raw")
         else "Hugging Face hub (Salesforce/wikitext) on first use"},
    ]
    return {
        "environment": runtime.describe(),
        "blas_warning": runtime.cpu_blas_warning(),
        "models": [{"model": i.name, "kind": i.kind, "description": i.title, "full precision means": i.baseline,
                    "status": _model_status(i)} for i in registry.REGISTRY.values()],
        "datasets": datasets,
    }


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
