"""The BLAS this process computes with: what the preload put in the global symbol scope, its kernel, its threads.

MLX calls cblas_sgemm by name, so what counts is the library whose symbols the process resolves globally; NumPy's
bundled OpenBLAS is loaded privately under other names and never counts."""
from __future__ import annotations

import ctypes
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _scope():
    """The process's global symbol scope (fixed once the preload is in: it happens before Python starts)."""
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def identify(lib) -> tuple[str, str] | None:
    """(library, kernel) of a loaded ctypes library or scope: ('OpenBLAS', its kernel) or ('BLIS', its
    sub-configuration); None for anything else. core.blas.probe's child processes load this file to use it too."""
    if hasattr(lib, "openblas_get_corename"):
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return "OpenBLAS", lib.openblas_get_corename().decode()
    if hasattr(lib, "bli_arch_query_id"):
        lib.bli_arch_string.restype = ctypes.c_char_p
        return "BLIS", lib.bli_arch_string(lib.bli_arch_query_id()).decode()
    return None


def _here() -> tuple[str, str] | None:
    scope = _scope()
    return identify(scope) if scope is not None else None


def library() -> str | None:
    """'OpenBLAS' or 'BLIS' where MLX's products reach one; None for the wheel's reference BLAS or off Linux."""
    found = _here()
    return found[0] if found else None


def kernel() -> str | None:
    """OpenBLAS's kernel or BLIS's sub-configuration computing here (None without either)."""
    found = _here()
    return found[1] if found else None


def threads() -> int | None:
    scope, which = _scope(), library()
    if which == "OpenBLAS":
        return int(scope.openblas_get_num_threads())
    if which == "BLIS":
        scope.bli_thread_get_num_threads.restype = ctypes.c_int64
        return int(scope.bli_thread_get_num_threads())
    return None


def set_threads(n: int) -> None:
    """Threads per BLAS call from now on, for every thread of the process (no-op without a tuned BLAS)."""
    scope, which = _scope(), library()
    if which == "OpenBLAS":
        scope.openblas_set_num_threads(int(n))
    elif which == "BLIS":
        scope.bli_thread_set_num_threads(ctypes.c_int64(int(n)))
