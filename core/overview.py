"""What the dashboard's overview shows: the runtime, the models and data found, and the result rows."""
from __future__ import annotations

from core import data, models, runtime
from core.errors import LabError
from core.pipeline import result_cache
from core.results import LEAD_COLUMNS, load_rows


def _model_status(info: models.ModelInfo) -> str:
    try:
        if info.name == models.OWN_RESNET:
            return "ready (in the repository)"
        if info.kind == "vision":
            models.resnet_weights_path(info.name)
            return "ready (data mirror)"
        from core.gguf import converted_model_ready

        return "ready (converted)" if converted_model_ready(models.cache_root()) else "not prepared: run ./lab setup"
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
                    "status": _model_status(i)} for i in models.REGISTRY.values()],
        "datasets": datasets,
    }


def all_result_rows() -> list[dict]:
    return load_rows(result_cache().directory)


def results_signature() -> tuple:
    """Changes whenever a result row is written or removed: a cheap cache key for the rows."""
    directory = result_cache().directory
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    return str(directory), len(files), max((f.stat().st_mtime_ns for f in files), default=0)


def result_rows(rows: list[dict] | None = None) -> list[dict]:
    """Result rows with the columns a person reads first."""
    rows = all_result_rows() if rows is None else rows
    return [{k: r.get(k) for k in LEAD_COLUMNS + ("device", "created")} for r in rows]
