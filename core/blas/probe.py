"""Timing BLAS candidates on products shaped like the lab's work, each in a child process.

A candidate is a library and, for OpenBLAS, a kernel (OPENBLAS_CORETYPE). The child loads the library with ctypes,
times cblas_sgemm on SHAPES on one thread and checks each product against NumPy, so a kernel the processor cannot
run, or one that computes wrong, only costs its child. Scores are geometric means of the times relative to a
baseline candidate, so a few large products do not drown the thin ones and the single rows."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"  # Debian's libopenblas0-pthread
BLIS = "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4"  # Debian's libblis4-pthread
# OpenBLAS's x86-64 kernels worth timing, each with the instruction flags it needs (all of them, /proc/cpuinfo)
KERNELS = {"Haswell": {"avx2", "fma"}, "Zen": {"avx2", "fma"},
           "SkylakeX": {"avx512f", "avx512bw", "avx512dq", "avx512vl"},
           "Cooperlake": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}}
# (rows, inner, columns, beta): square; a language model's MLP over a prompt; one decoding row each way; the
# three channel widths of the ResNets' 3x3 taps, accumulated into the output as core/eval/flatconv.py does
SHAPES = ((1024, 1024, 1024, 0.0), (2048, 576, 1536, 0.0), (1, 576, 1536, 0.0), (1, 1536, 576, 0.0),
          (60000, 16, 16, 1.0), (16000, 32, 32, 1.0), (4000, 64, 64, 1.0))
MIN_SECONDS = 0.05  # each shape is repeated until this much time has passed (at least three times)
_LOADED = str(Path(__file__).with_name("loaded.py"))


@dataclass(frozen=True)
class Candidate:
    library: str  # "OpenBLAS" or "BLIS"
    path: str
    coretype: str = ""  # OPENBLAS_CORETYPE; '' is OpenBLAS's own pick

    @property
    def label(self) -> str:
        return f"{self.library} {self.coretype}" if self.coretype else self.library


def cpu_identity() -> tuple[str, set[str]]:
    """(model name, instruction flags) from /proc/cpuinfo; ('', set()) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def kernels_for(flags: set[str]) -> list[str]:
    """The OpenBLAS kernels the flags allow ('' is OpenBLAS's own pick, always timed)."""
    return ["", *(name for name, needs in KERNELS.items() if needs <= flags)]


def candidates(flags: set[str], openblas: str = OPENBLAS, blis: str = BLIS) -> list[Candidate]:
    """Every candidate installed here, OpenBLAS's own pick first (the baseline)."""
    found = [Candidate("OpenBLAS", openblas, k) for k in kernels_for(flags)] if os.path.exists(openblas) else []
    if os.path.exists(blis):
        found.append(Candidate("BLIS", blis))
    return found


# The child loads core/blas/loaded.py by its path, not `core` (whose import starts MLX on its bundled BLAS).
_CHILD = """
import ctypes, importlib.util, json, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("blas_loaded", sys.argv[4])
loaded = importlib.util.module_from_spec(spec); spec.loader.exec_module(loaded)
lib = ctypes.CDLL(sys.argv[1])
kernel = (loaded.identify(lib) or ("", "unknown"))[1]
rng, ok, seconds = np.random.default_rng(0), True, []
ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)
for m, k, n, beta in json.loads(sys.argv[2]):
    a = rng.standard_normal((m, k), dtype=np.float32); b = rng.standard_normal((k, n), dtype=np.float32)
    c0 = rng.standard_normal((m, n), dtype=np.float32); c = c0.copy()
    call = lambda: lib.cblas_sgemm(101, 111, 111, m, n, k, ctypes.c_float(1.0), ptr(a), k, ptr(b), n,
                                   ctypes.c_float(beta), ptr(c), n)
    call()
    ok &= bool(np.allclose(c, a @ b + beta * c0, rtol=1e-3, atol=1e-3 * np.sqrt(k)))
    times, spent = [], 0.0
    while len(times) < 3 or spent < float(sys.argv[3]):
        start = time.perf_counter(); call(); times.append(time.perf_counter() - start); spent += times[-1]
    seconds.append(min(times))
print(json.dumps({"kernel": kernel, "seconds": seconds, "ok": ok}))
"""


def time_candidate(candidate: Candidate, timeout_s: float = 120) -> tuple[str, list[float]] | None:
    """(the kernel that computed, best seconds per shape); None if the child crashed or computed wrong."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "LD_PRELOAD")}
    env.update(OPENBLAS_NUM_THREADS="1", BLIS_NUM_THREADS="1")  # the kernel's own speed, not threading's
    if candidate.coretype:
        env["OPENBLAS_CORETYPE"] = candidate.coretype
    shapes = json.dumps([list(s) for s in SHAPES])
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, candidate.path, shapes, str(MIN_SECONDS), _LOADED],
                             env=env, capture_output=True, text=True, timeout=timeout_s)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return (result["kernel"], result["seconds"]) if result["ok"] else None


def relative_score(seconds: list[float], baseline: list[float]) -> float:
    """Geometric mean of the per-shape time ratios (below 1: faster than the baseline)."""
    return math.exp(sum(math.log(s / b) for s, b in zip(seconds, baseline)) / len(seconds))
