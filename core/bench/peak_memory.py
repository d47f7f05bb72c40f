"""Run a module as `python -m` would, then report the whole process's peak memory on its last stderr line:
`python -m core.bench.peak_memory MODULE ARGS...` (e.g. `core eval --model ...`, `mlx_lm.convert ...`).

The peak resident set comes from the kernel (every allocation the process made, MLX's and Python's alike), MLX's
peak from MLX itself (on a GPU: the device memory it held). The bench's `scale` section reads the line."""
from __future__ import annotations

import atexit
import json
import resource
import runpy
import sys

import mlx.core as mx

from core import runtime

MARK = "MLXQ_PEAK "


def peak_rss() -> int:
    """This process's own high-water resident set. On Linux from /proc (VmHWM, of this program's memory alone):
    getrusage's maximum survives exec, so a child started by a large parent would report the parent's."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def peak() -> dict:
    return {"rss_bytes": peak_rss(), "mlx_bytes": mx.get_peak_memory()}


def parse(stderr: str) -> dict | None:
    """The peak a measured child reported, or None when it printed none (it died before exiting)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return None


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m core.bench.peak_memory MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    atexit.register(lambda: print(MARK + json.dumps(peak()), file=sys.stderr, flush=True))
    runtime.configure_process()  # as `python -m core` does: the peers' runs too (importing core once did it)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
