"""Which OpenBLAS kernel the Linux CPU runs, chosen by measurement on this machine.

OpenBLAS (Debian's build has every x86-64 kernel in one library) picks its kernel from the processor's
family and model numbers. Inside virtual machines that report a generic or unknown model, it can fall back to a
kernel several times slower than the instructions the processor has, and nothing says so. Here each kernel that
the processor's instruction flags allow is timed on a few matrix products on one thread in a child process (a
kernel that should not run here can only crash the child) and checked against NumPy; the fastest is kept when it
beats OpenBLAS's own pick clearly. The choice is cached per processor and library; `./lab` exports it as
OPENBLAS_CORETYPE before MLX starts, because OpenBLAS reads it once, when it loads."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import settings

LIBRARY = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"  # Debian's libopenblas0-pthread
CLEAR_WIN = 0.9  # a kernel replaces OpenBLAS's own pick only when at least 10 % faster
# x86-64 kernels worth timing, each with the instruction flags it needs (all of them, from /proc/cpuinfo)
KERNELS = {"Haswell": {"avx2", "fma"}, "Zen": {"avx2", "fma"},
           "SkylakeX": {"avx512f", "avx512bw", "avx512dq", "avx512vl"},
           "Cooperlake": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}}
SHAPES = ((1024, 1024, 1024), (8192, 64, 64), (2048, 576, 1536))  # square; thin (small convolutions); an MLP


@dataclass
class Choice:
    library: str
    detected: str  # OpenBLAS's own pick
    chosen: str  # what to export as OPENBLAS_CORETYPE ('' keeps OpenBLAS's own)
    seconds: dict[str, float] = field(default_factory=dict)  # kernel -> time of the probe's products
    cpu: str = ""

    def summary(self) -> str:
        timing = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        pick = self.chosen or self.detected
        return f"OpenBLAS kernel {pick} ({'measured faster than its own pick, ' + self.detected if self.chosen else 'its own pick'}; {timing})"


def cpu_identity() -> tuple[str, set[str]]:
    """(model name, instruction flags) from /proc/cpuinfo; ('', set()) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def candidates(flags: set[str]) -> list[str]:
    """The kernels the flags allow ('' is OpenBLAS's own pick, always timed)."""
    return ["", *(name for name, needs in KERNELS.items() if needs <= flags)]


def _probe_script(library: str) -> str:
    """Python source that times SHAPES through cblas_sgemm, checks them against NumPy and prints JSON."""
    return f"""
import ctypes, json, time
import numpy as np
lib = ctypes.CDLL({library!r})
lib.openblas_get_corename.restype = ctypes.c_char_p
best, ok = 0.0, True
rng = np.random.default_rng(0)
for m, k, n in {SHAPES!r}:
    a = rng.standard_normal((m, k), dtype=np.float32); b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.zeros((m, n), np.float32)
    ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)
    call = lambda: lib.cblas_sgemm(101, 111, 111, m, n, k, ctypes.c_float(1.0), ptr(a), k, ptr(b), n,
                                   ctypes.c_float(0.0), ptr(c), n)
    call()
    ok &= bool(np.allclose(c, a @ b, rtol=1e-3, atol=1e-3 * np.sqrt(k)))
    times = []
    for _ in range(3):
        start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
    best += min(times)
print(json.dumps({{"kernel": lib.openblas_get_corename().decode(), "seconds": best, "ok": ok}}))
"""


def time_kernel(library: str, coretype: str, timeout_s: float = 60) -> tuple[str, float] | None:
    """(the kernel OpenBLAS used, seconds) for OPENBLAS_CORETYPE=coretype; None if it crashed or computed wrong."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "LD_PRELOAD")}
    env["OPENBLAS_NUM_THREADS"] = "1"  # the kernel's own speed: on many cores, threading costs hide it
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    try:
        out = subprocess.run([sys.executable, "-c", _probe_script(library)], env=env, capture_output=True,
                             text=True, timeout=timeout_s)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return (result["kernel"], result["seconds"]) if result["ok"] else None


def measure(library: str = LIBRARY) -> Choice:
    model, flags = cpu_identity()
    timed: dict[str, float] = {}
    detected = ""
    for coretype in candidates(flags):
        result = time_kernel(library, coretype)
        if result is None:
            continue
        kernel, seconds = result
        if not coretype:
            detected = kernel
        timed[kernel] = min(seconds, timed.get(kernel, seconds))  # an unknown name falls back to the pick
    fastest = min(timed, key=timed.get, default="")
    wins = detected in timed and fastest != detected and timed[fastest] < CLEAR_WIN * timed[detected]
    return Choice(library, detected, fastest if wins else "", timed, model)


def _cache_file(library: str) -> Path:
    model, flags = cpu_identity()
    stat = os.stat(library)
    key = json.dumps([model, sorted(flags), os.cpu_count(), library, stat.st_size, int(stat.st_mtime)])
    return settings.cache_root() / "blas" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def choice(library: str = LIBRARY, fresh: bool = False) -> Choice | None:
    """The measured choice for this machine (cached); None where there is no OpenBLAS library to choose in."""
    if sys.platform != "linux" or not os.path.exists(library):
        return None
    path = _cache_file(library)
    if not fresh and path.exists():
        try:
            return Choice(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # written by another version: measure again
    made = measure(library)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(made), indent=2))
    tmp.replace(path)
    return made


def loaded_kernel() -> str | None:
    """The kernel of the OpenBLAS loaded into this process (None without OpenBLAS)."""
    try:
        import ctypes
        lib = ctypes.CDLL(None)
        if not hasattr(lib, "openblas_get_corename"):
            return None
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return None
