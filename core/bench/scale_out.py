"""The `scale-out` bench section: a sweep and single evaluations on one rank and on two (`mlx.launch -n 2`, ring
over loopback, each rank on its own share of this machine's cores), each in a fresh result cache so everything
is computed; wall times side by side (the sweep also under the stock mlx.launch script), and the time the
collectives took inside each two-rank evaluation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from core import runtime
from core.bench.rows import BenchRow
from core.dist.launch import command
from core.settings import REPO_ROOT

SWEEP_BITS, SWEEP_GROUPS = "8,6,5,4,3,2", "32,64"  # 12 quantized configurations of one ResNet


def _timed(args: list[str], ranks: int, stock: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds of `python -m core ARGS` on `ranks` ranks (process start and model loading included); `stock`:
    started by the mlx.launch script itself rather than the lab's launcher (core/dist/launcher.py)."""
    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "MLXQ_RESULTS": results}
        argv = [sys.executable, "-m", "core", *args] if ranks == 1 else command(args, ranks, stock=stock, env=env)
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
    if proc.returncode != 0 or "error:" in proc.stderr:
        raise RuntimeError(f"{' '.join(args)} on {ranks} rank(s) failed: {proc.stderr[-2000:]}")
    return seconds, proc


def _sweep_rows(model: str, limit: int | None) -> list[BenchRow]:
    subset = f"--limit {limit}" if limit else "all 10,000 test images"
    args = ["sweep", "--model", model, "--q-bits", SWEEP_BITS, "--q-group-size", SWEEP_GROUPS, "--no-bench",
            "--out", os.devnull, *(["--limit", str(limit)] if limit else [])]
    one, _ = _timed(args, 1)
    two, _ = _timed(args, 2)
    stock, _ = _timed(args, 2, stock=True)
    subject = f"sweep: {model}, 12 configurations ({SWEEP_BITS} bits x groups {SWEEP_GROUPS}), {subset}, no speed bench"
    cores = runtime.usable_cpus()
    return [BenchRow("scale-out", subject, f"1 rank ({cores} cores)", one, "s", "wall time of the whole command"),
            BenchRow("scale-out", subject, f"2 ranks (the lab's launcher -n 2, ring, {cores // 2} core(s) each)", two,
                     "s", f"{one / two:.2f}x the speed of 1 rank"),
            BenchRow("scale-out", subject, "2 ranks (stock mlx.launch -n 2: its I/O loop keeps a core busy)", stock,
                     "s", f"{one / stock:.2f}x the speed of 1 rank")]


def _eval_rows(model: str, bits: int, limit: int | None, unit: str) -> list[BenchRow]:
    args = ["eval", "--model", model, "--q-bits", str(bits), "--no-bench", "--json",
            *(["--limit", str(limit)] if limit else [])]
    subject = f"eval: {model} q{bits}g64, {limit or 'all'} {unit}, no speed bench"
    rows = []
    for ranks in (1, 2):
        wall, proc = _timed(args, ranks)
        row = json.loads(proc.stdout)
        rows.append(BenchRow("scale-out", subject, f"{ranks} rank(s)", wall, "s",
                             f"run_eval {row['eval_seconds']:.2f} s on rank 0; value {row['value']:.6g}"))
        if ranks == 2:
            rows.append(BenchRow("scale-out", subject, "all_sum joining the 2 ranks' shares",
                                 row["allreduce_seconds"], "s", "after a barrier: communication only, not waiting"))
    return rows


def scale_out(quick: bool = False) -> list[BenchRow]:
    rows = _sweep_rows("resnet20", 1000 if quick else None)
    rows += _eval_rows("resnet20", 4, 1000 if quick else None, "images")
    return rows + scale_out_lm(quick)


def scale_out_lm(quick: bool = False) -> list[BenchRow]:
    """The language-model evaluation alone (section scale-out-lm), to measure it again after a change there."""
    return _eval_rows("smollm2-135m-instruct", 4, 4 if quick else 64, "WikiText-2 chunks of 512 tokens")
