"""Evaluations and sweeps on two ranks of `mlx.launch -n 2 --backend ring` over loopback: the same numbers as one
process, and a sweep that survives a killed rank."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, needs_mirror
from core.dist.launch import command as launch_command

VARYING = {"eval_seconds", "environment", "created", "cached"}  # when and where, not what was measured
SWEEP = ["sweep", "--model", "resnet20-mlxq", "--q-bits", "16,8,4,3", "--q-group-size", "32,64", "--no-bench"]


def env_with(results: Path) -> dict:
    return {**os.environ, "MLXQ_RESULTS": str(results)}


def launch(args, results: Path, ranks=2, stock=False) -> subprocess.CompletedProcess:
    """ARGS on `ranks` loopback ranks: through the lab's launcher (mlx.launch's code, core/dist/launcher.py), or
    with `stock` the mlx.launch script itself."""
    env = env_with(results)
    return subprocess.run(launch_command(args, ranks, stock=stock, env=env), env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def one_process(args, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=env_with(results),
                          capture_output=True, text=True, timeout=600)


def csv_rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VARYING} for row in csv.DictReader(path.open())]


@needs_mirror
def test_resnet_evaluation_on_two_ranks_equals_one_process(tmp_path):
    args = ["eval", "--model", "resnet20-mlxq", "--q-bits", "4", "--limit", "300", "--no-bench", "--json"]
    alone = json.loads(one_process(args, tmp_path / "one").stdout)
    proc = launch(args, tmp_path / "two", stock=True)  # `mlx.launch -n 2 --backend ring` as MLX ships it
    two = json.loads(proc.stdout)  # rank 0 alone prints
    assert two["ranks"] == 2 and alone["ranks"] == 1 and "split over 2 ranks" in two["protocol"]
    for key in ("value", "top5", "agreement", "n", "reference_value", "size_bytes"):
        assert two[key] == alone[key], key  # accuracy exactly
    stored = [json.loads(p.read_text())["body"] for p in sorted((tmp_path / "two").glob("*.json"))]
    assert len(stored) == 2  # rank 0 wrote the row and its full-precision reference, once each
    assert 0 <= two["allreduce_seconds"] < 5


@needs_mirror
def test_smollm2_perplexity_and_kl_on_two_ranks_equal_one_process(tmp_path):
    args = ["eval", "--model", "smollm2-135m-instruct", "--q-bits", "4", "--limit", "2", "--ctx", "128",
            "--no-bench", "--json"]
    alone = json.loads(one_process(args, tmp_path / "one").stdout)
    two = json.loads(launch(args, tmp_path / "two").stdout)
    assert two["n"] == alone["n"] == 2 * 63
    for key in ("value", "stderr", "kl_mean", "kl_stderr", "reference_value"):
        assert two[key] == pytest.approx(alone[key], rel=1e-6), key


@needs_mirror
def test_a_sweep_on_two_ranks_equals_one_rank_row_for_row(tmp_path):
    args = [*SWEEP, "--limit", "300"]
    one = one_process([*args, "--out", str(tmp_path / "one.csv")], tmp_path / "one")
    assert one.returncode == 0, one.stderr
    proc = launch([*args, "--out", str(tmp_path / "two.csv")], tmp_path / "two")
    assert "7 configurations over 2 rank(s): computed 7" in proc.stderr, proc.stderr
    assert {"rank 0 finished", "rank 1 finished"} <= {line[:15] for line in proc.stderr.splitlines()}
    assert csv_rows(tmp_path / "two.csv") == csv_rows(tmp_path / "one.csv")


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("MLX_RANK") == str(rank) and "sweep" in child.cmdline():
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"rank {rank} is not running")


@needs_mirror
def test_a_killed_rank_reports_its_lost_configurations_and_the_rerun_computes_only_those(tmp_path):
    args, log = [*SWEEP, "--limit", "1000", "--out", str(tmp_path / "swept.csv")], tmp_path / "first.log"
    with log.open("w") as out:
        env = env_with(tmp_path / "r")
        launcher = subprocess.Popen(launch_command(args, env=env), env=env, stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL)
        deadline = time.time() + 300
        while "rank 1 finished 1 of" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        _rank_process(launcher, 1).send_signal(signal.SIGKILL)
        launcher.wait(timeout=120)
    first = log.read_text()
    assert not (tmp_path / "swept.csv").exists()  # no CSV from an incomplete sweep
    lost = [line for line in first.splitlines()
            if ("lost" in line and " configurations: " in line) or "not in this machine's cache: " in line]
    assert lost, first
    lost_labels = {label.strip().rstrip(".") for line in lost for label in line.split(": ", 1)[1].split(". ")[0].split(",")}
    proc = launch(args, tmp_path / "r")
    computed = {line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in proc.stderr.splitlines()
                if line.endswith("(computed)")}
    assert computed == lost_labels, (first, proc.stderr)
    assert len(csv_rows(tmp_path / "swept.csv")) == 7
