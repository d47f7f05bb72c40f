"""Shared by the job tests: a private jobs folder and result cache, the `python -m core` command line, and the
clean-up that leaves no worker process behind."""
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, stop_worker

FAST_EVAL = ["--model", "resnet20-mlxq", "--limit", "100", "--no-bench"]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def jobs_dir(tmp_path, monkeypatch):
    """MLXQ_JOBS and MLXQ_RESULTS in this test's own folder; any worker left running is stopped afterwards."""
    folder = tmp_path / "jobs"
    monkeypatch.setenv("MLXQ_JOBS", str(folder))
    monkeypatch.setenv("MLXQ_RESULTS", str(tmp_path / "results"))
    yield folder
    stop_worker(folder)


def wait_for(condition, timeout: float = 60, every: float = 0.05):
    """Poll `condition()` until it returns something true; that value, or a test failure after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"gave up after {timeout} s waiting for {condition}")


def long_eval_spec(limit: int = 1000, widths=(8, 6, 5, 4, 3, 2)) -> dict:
    """An eval job that runs a few seconds here: one configuration per width, each cached as it finishes."""
    configs = [{"model": "resnet20-mlxq", "bits": b, "limit": limit, "bench": False} for b in widths]
    return {"configs": configs, "use_cache": True}
