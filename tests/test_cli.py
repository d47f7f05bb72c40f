"""`python -m core` as other tools call it: the JSON contract, the cache, sweeps, and one-line errors."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, needs_mirror

CONTRACT = ("model", "method", "bits", "group_size", "mode", "metric", "value", "stderr", "n", "size_bytes",
            "bits_per_weight", "latency_ms_p50", "throughput", "peak_memory_bytes", "backend")


def cli(*args, env=None, results=None):
    full_env = {**os.environ, **(env or {})}
    if results:
        full_env["MLXQ_RESULTS"] = str(results)
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=600)


def assert_one_error_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.mark.parametrize("args,fragments", [
    (["--model", "resnet99"], ["Unknown model 'resnet99'", "resnet20"]),
    (["--model", "resnet20", "--q-bits", "7"], ["--q-bits 7", "2, 3, 4, 5, 6, 8"]),
    (["--model", "resnet20", "--q-bits", "4", "--q-group-size", "48"], ["--q-group-size 48", "32, 64, 128"]),
    (["--model", "resnet20", "--q-bits", "8", "--q-mode", "mxfp4"], ["mxfp4 means 4 bits in groups of 32"]),
    (["--model", "resnet20", "--q-mode", "int4", "--q-bits", "4"], ["Unknown quantization mode"]),
    (["--model", "resnet20", "--limit", "0"], ["positive"]),
    (["--model", "resnet20", "--q-bits", "four"], ["invalid int value"]),
    (["--model", "resnet20", "--q-bits", "4", "--method", "awq"], ["AWQ is for language models"]),
    (["--model", "../../etc/passwd"], ["Unknown model"]),
])
def test_bad_input_gives_one_error_line_and_exit_code_2(args, fragments, tmp_path):
    assert_one_error_line(cli("eval", *args, "--json", results=tmp_path), *fragments)


def test_missing_data_names_both_fixes(tmp_path):
    offline = {"MLXQ_MIRROR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = cli("eval", "--model", "resnet20", "--json", env=offline, results=tmp_path)
    assert_one_error_line(proc, "MLXQ_MIRROR")


@needs_mirror
def test_missing_dataset_with_weights_present_names_both_fixes(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "models").mkdir(parents=True)
    (mirror / "models" / "resnet-cifar10").symlink_to(Path(os.environ["MLXQ_MIRROR"]) / "models" / "resnet-cifar10")
    offline = {"MLXQ_MIRROR": str(mirror), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = cli("eval", "--model", "resnet20", "--json", env=offline, results=tmp_path)
    assert_one_error_line(proc, "CIFAR-10 test is not available", "MLXQ_MIRROR", "Hugging Face hub")


@needs_mirror
def test_json_contract_cache_and_no_cache(tmp_path):
    args = ("eval", "--model", "resnet20", "--q-bits", "4", "--q-group-size", "32", "--limit", "200", "--json")
    first = cli(*args, results=tmp_path)
    assert first.returncode == 0, first.stderr
    row = json.loads(first.stdout)
    assert all(key in row for key in CONTRACT)
    assert (row["model"], row["method"], row["bits"], row["group_size"], row["mode"]) == ("resnet20", "rtn", 4, 32, "affine")
    assert row["metric"] == "top1_accuracy" and row["n"] == 200 and 80 < row["value"] < 97
    assert 4.5 < row["bits_per_weight"] < 6 and 100e3 < row["size_bytes"] < 250e3
    assert row["latency_ms_p50"] > 0 and row["throughput"] > 0 and row["peak_memory_bytes"] > 0
    assert row["backend"] in ("cpu", "metal", "cuda") and row["cached"] is False
    assert "predictions" not in row and "200 images" in row["protocol"]

    again = json.loads(cli(*args, results=tmp_path).stdout)
    assert again["cached"] is True and again["value"] == row["value"] and again["created"] == row["created"]
    fresh = json.loads(cli(*args, "--no-cache", results=tmp_path).stdout)
    assert fresh["cached"] is False and fresh["value"] == row["value"] and fresh["created"] >= row["created"]


@needs_mirror
def test_corrupt_cache_entry_is_detected_and_recomputed(tmp_path):
    args = ("eval", "--model", "resnet20", "--limit", "100", "--no-bench", "--json")
    row = json.loads(cli(*args, results=tmp_path).stdout)
    (entry,) = [p for p in tmp_path.glob("*.json")]
    entry.write_text(entry.read_text().replace(f'"value": {row["value"]}', '"value": 12.5'))
    proc = cli(*args, results=tmp_path)
    again = json.loads(proc.stdout)
    assert again["cached"] is False and again["value"] == row["value"]
    assert "corrupt" in proc.stderr
    entry.write_text("{ truncated")
    assert json.loads(cli(*args, results=tmp_path).stdout)["value"] == row["value"]


@needs_mirror
def test_full_precision_is_bits_16_or_no_bits(tmp_path):
    a = json.loads(cli("eval", "--model", "resnet20", "--limit", "100", "--no-bench", "--json", results=tmp_path).stdout)
    b = json.loads(cli("eval", "--model", "resnet20", "--q-bits", "16", "--limit", "100", "--no-bench", "--json",
                       results=tmp_path).stdout)
    assert a["bits"] == b["bits"] == 16 and a["method"] == "none" and b["cached"] is True


@needs_mirror
def test_sweep_writes_one_csv_row_per_bit_width(tmp_path):
    out = tmp_path / "sweep.csv"
    proc = cli("sweep", "--model", "resnet20", "--q-bits", "16,8,4", "--limit", "100", "--no-bench",
               "--out", str(out), results=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [int(r["bits"]) for r in rows] == [16, 8, 4]
    assert all(float(r["value"]) > 80 for r in rows)


def test_sweep_rejects_a_bad_width_before_any_work(tmp_path):
    assert_one_error_line(cli("sweep", "--model", "resnet20", "--q-bits", "16,7", results=tmp_path), "--q-bits 7")


def test_bench_writes_a_report_and_rejects_unknown_sections(tmp_path):
    proc = cli("bench", "--sections", "llama-cpp", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (report,) = tmp_path.glob("*.md")
    text = report.read_text()
    assert "python -m core bench --sections llama-cpp" in text and "| peer | llama.cpp |" in text
    assert "mlx 0.32" in text or "mlx " in text
    assert_one_error_line(cli("bench", "--sections", "gpu-magic", "--out", str(tmp_path)), "Unknown bench section")


def test_an_mlx_lm_folder_loads_by_path(smollm2_dir, tmp_path):
    proc = cli("eval", "--model", str(smollm2_dir), "--limit", "1", "--ctx", "64", "--no-bench", "--json",
               results=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["metric"] == "perplexity" and row["n"] == 31 and 1 < row["value"] < 200
    assert row["baseline"] == "the folder's weights in float32"


@needs_mirror
def test_sensitivity_prints_the_table_its_json_and_the_allocation(tmp_path):
    env = {"MLXQ_SENSITIVITY": str(tmp_path / "sensitivity")}
    proc = cli("sensitivity", "--model", "resnet20-mlxq", "--bits", "4,8", "--calib", "16", "--target-bpw", "6",
               "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["rows"]) == 40 and {r["bits"] for r in out["rows"]} == {4, 8}
    assert set(out["allocation"].values()) <= {4, 8} and out["predicted_bits_per_weight"] <= 6
    proc = cli("sensitivity", "--model", "resnet20-mlxq", "--bits", "4,8", "--calib", "16", env=env)  # cached
    assert proc.returncode == 0, proc.stderr
    assert "KL@4" in proc.stdout and "agree@8" in proc.stdout and "CIFAR-10 train, 16" in proc.stdout
    assert_one_error_line(cli("sensitivity", "--model", "resnet20-mlxq", "--bits", "7", env=env), "--bits 7")


def test_eval_sweep_and_export_flags_come_from_the_config_fields():
    from dataclasses import fields

    from core.cli import build_parser
    from core.eval.config import EvalConfig
    from core.options import flag_name
    from core.quant.config import QuantConfig

    def flags(command: str) -> set[str]:
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
        return {s for action in sub._actions for s in action.option_strings}

    quant = {flag_name(f) for f in fields(QuantConfig)}
    evaluation = {flag_name(f) for f in fields(EvalConfig)}
    assert {"--q-bits", "--q-group-size", "--method", "--no-bench", "--limit"} <= evaluation
    assert evaluation <= flags("eval") and evaluation <= flags("sweep")
    assert quant - {"--act-bits"} <= flags("export") and not (evaluation - quant) & flags("export")
    args = build_parser().parse_args(["export", "--model", "resnet20", "--q-bits", "4", "--keep-last", "--out", "x"])
    from core.cli.flags import config_from_args

    assert config_from_args(QuantConfig, args) == QuantConfig("resnet20", bits=4, keep_last=True)


@pytest.mark.parametrize("value,device,warned", [("cpu", "cpu", False), ("tpu", None, True)])
def test_mlxq_device_picks_the_device_or_says_why_not(value, device, warned):
    code = "from core import runtime; import mlx.core as mx; runtime.configure_process(); print(mx.default_device())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          env={**os.environ, "MLXQ_DEVICE": value}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("MLXQ_DEVICE='tpu' is not one of cpu, gpu" in proc.stderr) == warned
    if device:
        assert proc.stdout.strip() == f"Device({device}, 0)"


def test_importing_core_sets_up_nothing_until_a_command_asks():
    """Importing the lab (its CLI and evaluation included) leaves the process as it was; configure_process, which
    `python -m core`, the dashboard and the tests call, reads MLXQ_DEVICE and tunes the allocator (glibc)."""
    import platform

    code = ("import warnings; warnings.simplefilter('error'); import core.cli, core.eval.pipeline, core.runtime as r; "
            "print(r.allocator_tuned(), flush=True); r.configure_process(); "
            "print(r.describe()['large_buffers_on_heap'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "MLXQ_DEVICE": "tpu"},
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False"] and "MLXQ_DEVICE='tpu' is not one of" in proc.stderr  # read when asked
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert proc.stdout.split() == ["False", str(glibc)]
