"""What MLX runs on here: backend, device, library versions, and whether Linux CPU BLAS is fast."""
from __future__ import annotations

import os
import platform
import sys
import warnings
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import mlx.core as mx

from core import settings
from core.blas import loaded as loaded_blas, probe as blas_probe
from core.errors import LabError


def backend() -> str:
    """'metal', 'cuda' or 'cpu': where MLX's default device computes."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "gpu"


DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
DEVICES = ("cpu", "gpu")


_configured = False


def configure_process() -> None:
    """What every command sets up for the whole process before it computes, once (later calls do nothing): large
    MLX buffers kept on the heap (tune_allocator), MLX's default device as MLXQ_DEVICE says (use_device_setting)
    and BLIS's thread count (default_blas_threads). Importing `core` does none of this: the CLI entry point
    (core/__main__.py, so also the server, the job worker and every rank), the dashboard (app.py) and the test
    session (tests/conftest.py) call it. The BLAS library itself is chosen before Python starts (./lab preloads
    it: core.blas)."""
    global _configured
    if _configured:
        return
    _configured = True
    tune_allocator()
    use_device_setting()
    default_blas_threads()


def use_device_setting() -> None:
    """MLX's default device as MLXQ_DEVICE says (part of configure_process); a value it does not know is
    reported and ignored."""
    chosen = settings.device()
    if chosen is None:
        return
    device = {"cpu": mx.cpu, "gpu": mx.gpu}.get(chosen)
    if device is None or not mx.is_available(device):
        why = f"is not one of {', '.join(DEVICES)}" if device is None else "names a device this MLX build does not have"
        warnings.warn(f"{settings.DEVICE}={chosen!r} {why}; using MLX's default device.", RuntimeWarning, stacklevel=2)
        return
    mx.set_default_device(device)


def resolve_dtype(dtype: str | None, flag: str = "--dtype") -> str:
    """`dtype` checked (a LabError naming `flag` if it is not one of DTYPES), or the default when None."""
    if dtype is None:
        return default_dtype()
    if dtype not in DTYPES:
        raise LabError(f"{flag} must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    return dtype


def default_dtype() -> str:
    """The compute dtype deployed models run in here, chosen once: MLXQ_DTYPE if set, else float32 on a CPU
    (half precision there is converted on every op, and slower) and bfloat16 on Metal and CUDA (what people
    deploy there; mlx-lm keeps a checkpoint's half precision)."""
    chosen = settings.dtype()
    if chosen is None:
        return "float32" if backend() == "cpu" else "bfloat16"
    return resolve_dtype(chosen, settings.DTYPE)


def fast_blas_active() -> bool | None:
    """On Linux, whether MLX's BLAS calls reach a tuned library (OpenBLAS or BLIS, preloaded; core.blas.loaded).
    None elsewhere."""
    if sys.platform != "linux":
        return None
    return loaded_blas.library() is not None


def cpu_blas_warning() -> str | None:
    """A loud message when MLX computes on the Linux CPU with the wheel's slow reference BLAS."""
    if backend() == "cpu" and fast_blas_active() is False:
        return (
            "MLX is running on the Linux CPU with its bundled reference BLAS: matrix products are about 20x slower. "
            "Install Debian's libopenblas0-pthread (or libblis4-pthread) and preload it, e.g. "
            f"LD_PRELOAD={blas_probe.OPENBLAS} (the ./lab launcher does both, with the library measured fastest "
            "here)."
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
        # where the CPU computes, the processor (a CUDA build's device_info names its GPU even then)
        "device": (backend() == "cpu" and blas_probe.cpu_identity()[0]) or str(info.get("device_name") or mx.default_device()),
        "fast_blas": fast_blas_active() if backend() == "cpu" else None,  # only matters where the CPU computes
        "mlx": mx.__version__,
        "mlx_lm": _version("mlx-lm"),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": usable_cpus(),
        "cpu": blas_probe.cpu_identity()[0] or platform.processor() or None,
        "threads_per_core": threads_per_core(),
        "blas_kernel": blas_kernel() if backend() == "cpu" else None,
        "large_buffers_on_heap": allocator_tuned(),
    }


def blas_kernel() -> str | None:
    """The BLAS library and kernel computing here, and who picked the kernel: 'OpenBLAS Zen (own pick)',
    'OpenBLAS SkylakeX (OPENBLAS_CORETYPE)', 'BLIS skx (its own pick)'; None for the reference BLAS."""
    which, kernel = loaded_blas.library(), loaded_blas.kernel()
    if which is None:
        return None
    if which == "OpenBLAS":
        return f"OpenBLAS {kernel} ({'OPENBLAS_CORETYPE' if os.environ.get('OPENBLAS_CORETYPE') else 'own pick'})"
    return f"{which} {kernel} (its own pick)"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one (a container or `taskset` may
    allow fewer than the machine has), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity masks
        return os.cpu_count() or 1


def threads_per_core() -> int | None:
    """Hardware threads sharing one core (2 where the 'cores' are hyper-threads of fewer physical ones)."""
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
    except OSError:
        return None
    count = 0
    for part in siblings.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# glibc serves allocations above its mmap threshold (at most 32 MiB by default) with fresh mmap'd pages and
# gives them back on free, so every large MLX buffer on the CPU is page-faulted in anew on every op (MLX's own
# im2col buffers included; docs/performance.md has the measured cost). Keeping large blocks on the heap (and not trimming it) removes that cost; RSS then stays at its high-water mark.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TUNED_THRESHOLD = 1 << 30
GLIBC_DEFAULT_MMAP_MAX, GLIBC_DEFAULT_TRIM = 32 << 20, 64 << 20  # the dynamic default's steady state


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    if sys.platform != "linux":
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


_tuned = False


def tune_allocator() -> bool:
    """Keep large buffers on the heap (Linux glibc only); True when applied. Part of configure_process."""
    global _tuned
    _tuned = _mallopt(TUNED_THRESHOLD, TUNED_THRESHOLD)
    return _tuned


_M_ARENA_MAX = -8


def bound_heap_arenas(count: int) -> bool:
    """At most `count` glibc heap arenas from now on (Linux glibc only; call before threads start); True when
    applied. By default each new thread that allocates may get an arena of its own (up to eight per core), and a
    server's threads (event loop, engines, the pool that decodes images) then each keep their arena at its own
    high-water mark, so RSS creeps up for thousands of requests before it settles."""
    if sys.platform != "linux":
        return False
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, count))
    except (OSError, AttributeError):  # not glibc: nothing to bound
        return False


def release_free_memory() -> None:
    """Give freed memory back to the system: MLX's buffer cache, then the free pages of glibc's heap, which the
    tuned allocator otherwise keeps at its high-water mark (for a server that has gone idle after a burst)."""
    mx.clear_cache()
    if sys.platform == "linux":
        try:
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass


def allocator_tuned() -> bool:
    return _tuned


class glibc_default_allocator:
    """Context manager: glibc's default large-block behaviour, for the 'plain' side of a benchmark."""

    def __enter__(self):
        _mallopt(GLIBC_DEFAULT_MMAP_MAX, GLIBC_DEFAULT_TRIM)
        return self

    def __exit__(self, *exc):
        tune_allocator()
        return False


def set_blas_threads(n: int) -> None:
    """The BLAS thread count from now on (no-op without a tuned BLAS): a process given fewer cores than the
    machine has keeps BLAS to those."""
    loaded_blas.set_threads(n)


def default_blas_threads() -> None:
    """BLIS runs one thread unless told otherwise: give it the usable cores, unless the environment chose
    (BLIS_NUM_THREADS or OMP_NUM_THREADS). OpenBLAS already starts with every core. Part of configure_process."""
    if loaded_blas.library() == "BLIS" and not (os.environ.get("BLIS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
        loaded_blas.set_threads(usable_cpus())


class blas_threads:
    """Context manager: the BLAS thread count for the block (no-op without a tuned BLAS). One thread per call is
    right when several MLX CPU streams call BLAS at once, each on its own core."""

    def __init__(self, n: int):
        self.n, self.before = n, None

    def __enter__(self):
        self.before = loaded_blas.threads()
        if self.before is not None:
            loaded_blas.set_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            loaded_blas.set_threads(max(1, self.before))
        return False


def apply_memory_limit() -> float | None:
    """Hold MLX to the user's memory limit (settings.memory_limit_gb), if any; returns it in GB. MLX then frees
    its buffer cache and waits for pending work before it allocates beyond the limit."""
    limit = settings.memory_limit_gb()
    if limit:
        mx.set_memory_limit(int(limit * 1e9))
    return limit
