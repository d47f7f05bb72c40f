"""The blas-eval bench section: every BLAS candidate of this machine gets a plain pass and the whole eval command,
each in a child process preloading that library."""
import os

import pytest

from conftest import needs_mirror
from core.bench.blas_eval import blas_eval_speed
from core.blas import choice, probe


@needs_mirror
@pytest.mark.skipif(not os.path.exists(probe.OPENBLAS), reason="Debian's OpenBLAS is not installed (./lab does)")
def test_every_candidate_gets_a_plain_pass_and_the_eval_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_CACHE", str(tmp_path))
    made = choice.choice()
    rows = blas_eval_speed(limit=200)
    assert len(rows) == 2 * len(made.entries)
    for entry, (plain, command) in zip(made.entries, zip(rows[::2], rows[1::2])):
        assert plain.subject == command.subject and plain.subject.startswith(entry.label)
        assert 0 < plain.value < 120 and 0 < command.value < 120 and plain.unit == command.unit == "s"
        assert f"{plain.value / command.value:.2f}x" in command.note
    assert sum("the lab's choice" in r.note for r in rows) == 1
