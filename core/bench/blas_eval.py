"""The `blas-eval` bench section: the whole `eval` command and one plain pass under every BLAS candidate this
machine has (core.blas), each in child processes preloading that library, so the report shows what each library
and kernel gives the plain path and the lab's path on the same processor, in the same run."""
from __future__ import annotations

import subprocess
import sys
import time

from core import runtime
from core.bench.eval_speed import EVAL_COMMAND, plain_pass_in_child
from core.bench.rows import BenchRow
from core.blas import choice

def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def blas_eval_speed(limit: int | None = None) -> list[BenchRow]:
    made = choice.choice()
    if made is None or not made.entries:
        return []
    picked = made.best()
    extra = ["--limit", str(limit)] if limit else []
    rows = []
    for entry in made.entries:
        env = choice.preload_env(entry, runtime.usable_cpus())
        t_plain = plain_pass_in_child(env, limit)
        t_command = _timed([sys.executable, "-m", "core", *EVAL_COMMAND, *extra], env)
        who = "the lab's choice" if entry == picked else f"probe score {entry.score:.2f}"
        subject = f"{entry.label}" + (f" (OPENBLAS_CORETYPE={entry.coretype})" if entry.coretype else "")
        rows += [BenchRow("blas-eval", subject, "plain pass: the float32 model's forward, batches of 500", t_plain,
                          "s", f"{'all' if not limit else limit} test images, glibc default allocator; {who}"),
                 BenchRow("blas-eval", subject, "python -m core " + " ".join(EVAL_COMMAND + tuple(extra)), t_command,
                          "s", f"whole process; {t_plain / t_command:.2f}x this library's plain pass")]
    return rows
