"""What MLX runs on here: backend, device, library versions, and whether Linux CPU BLAS is fast."""
from __future__ import annotations

import os
import platform
import sys
import warnings
from functools import lru_cache
from importlib import metadata

import mlx.core as mx

OPENBLAS_PRELOAD = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def backend() -> str:
    """'metal', 'cuda' or 'cpu': where MLX's default device computes."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "gpu"


def openblas_active() -> bool | None:
    """On Linux, whether OpenBLAS is mapped into this process (the preload worked). None elsewhere."""
    if sys.platform != "linux":
        return None
    try:
        with open("/proc/self/maps") as f:
            return "openblas" in f.read()
    except OSError:
        return None


def cpu_blas_warning() -> str | None:
    """A loud message when MLX computes on the Linux CPU with the wheel's slow reference BLAS."""
    if backend() == "cpu" and openblas_active() is False:
        return (
            "MLX is running on the Linux CPU without OpenBLAS: matrix products are about 20x slower. "
            f"Install Debian's libopenblas0-pthread and start with LD_PRELOAD={OPENBLAS_PRELOAD} "
            "(the ./lab launcher does both)."
        )
    return None


def warn_if_slow_blas() -> None:
    message = cpu_blas_warning()
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def describe() -> dict:
    """Everything a result row needs to say where it was measured."""
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    return {
        "backend": backend(),
        "device": str(info.get("device_name") or mx.default_device()),
        "openblas": openblas_active() if backend() == "cpu" else None,  # only matters where the CPU computes
        "mlx": mx.__version__,
        "mlx_lm": _version("mlx-lm"),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
    }
