"""The `blas-eval` bench section: the whole `eval` command and one plain pass under every BLAS candidate this
machine has (core.blas), each in child processes preloading that library, so the report shows what each library
and kernel gives the plain path and the lab's path on the same processor, in the same run."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from core import runtime
from core.blas import choice
from core.eval.bench_rows import BenchRow
from core.eval.eval_speed_bench import EVAL_COMMAND

_BLAS_ENV = ("LD_PRELOAD", "OPENBLAS_CORETYPE", "BLIS_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def candidate_env(entry: choice.Entry) -> dict[str, str]:
    """This process's environment with `entry`'s library preloaded as ./lab would (kernel, threads)."""
    env = {k: v for k, v in os.environ.items() if k not in _BLAS_ENV}
    env["LD_PRELOAD"] = entry.path
    if entry.coretype:
        env["OPENBLAS_CORETYPE"] = entry.coretype
    if entry.library == "BLIS":
        env["BLIS_NUM_THREADS"] = str(runtime.usable_cpus())
    return env


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, out.stdout


def blas_eval_speed(limit: int | None = None) -> list[BenchRow]:
    made = choice.choice()
    if made is None or not made.entries:
        return []
    picked = made.best()
    extra = ["--limit", str(limit)] if limit else []
    code = f"from core.eval.eval_speed_bench import plain_pass_seconds as p; print(p({limit!r}))"
    rows = []
    for entry in made.entries:
        env = candidate_env(entry)
        _, printed = _timed([sys.executable, "-c", code], env)
        t_plain = float(printed.strip().splitlines()[-1])
        t_command, _ = _timed([sys.executable, "-m", "core", *EVAL_COMMAND, *extra], env)
        who = "the lab's choice" if entry == picked else f"probe score {entry.score:.2f}"
        subject = f"{entry.label}" + (f" (OPENBLAS_CORETYPE={entry.coretype})" if entry.coretype else "")
        rows += [BenchRow("blas-eval", subject, "plain pass: the float32 model's forward, batches of 500", t_plain,
                          "s", f"{'all' if not limit else limit} test images, glibc default allocator; {who}"),
                 BenchRow("blas-eval", subject, "python -m core " + " ".join(EVAL_COMMAND + tuple(extra)), t_command,
                          "s", f"whole process; {t_plain / t_command:.2f}x this library's plain pass")]
    return rows
