"""The other kinds run in a worker as their commands do: a sensitivity table with its allocation, an export (both
submitted from the command line); and a spec with a setting its config lacks is refused in words."""
import json

import pytest

from core.errors import LabError
from core.jobs.kinds import KINDS, from_spec
from core.jobs.store import JobStore
from core.quant.config import QuantConfig
from jobsupport import cli, jobs_dir  # noqa: F401  (fixture)


def test_sensitivity_and_export_jobs_run_in_a_worker(jobs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_SENSITIVITY", str(tmp_path / "sensitivity"))
    submitted = cli("jobs", "submit", "sensitivity", "--model", "resnet20-mlxq", "--bits", "4,8", "--calib", "16",
                    "--target-bpw", "6", "--no-worker")
    assert submitted.returncode == 0, submitted.stderr
    store = JobStore()
    exported = cli("jobs", "submit", "export", "--model", "resnet20-mlxq", "--q-bits", "4", "--keep-first",
                   "--out", str(tmp_path / "export"), "--no-worker")
    assert exported.returncode == 0, exported.stderr
    export = store.get(exported.stdout.strip())
    worker = cli("jobs", "worker", "--idle-exit", "1")
    assert worker.returncode == 0, worker.stderr
    table = store.get(submitted.stdout.strip())
    assert table.state == "done", table.error
    assert {r["bits"] for r in table.result["rows"]} == {4, 8} and set(table.result["allocation"].values()) <= {4, 8}
    assert 4 < table.result["predicted_bits_per_weight"] <= 6
    written = store.get(export.id)
    assert written.state == "done", written.error
    assert written.result["path"] == str(tmp_path / "export") and written.result["tag"].startswith("q4")
    assert json.loads((tmp_path / "export" / "quantization.json").read_text())
    assert "sensitivity of resnet20-mlxq at 4,8 bits" in cli("jobs").stdout


def test_a_spec_is_checked_in_words():
    with pytest.raises(LabError, match="An export has no setting 'colour'.*keep_first"):
        from_spec(QuantConfig, {"model": "resnet20", "colour": "red"}, "an export")
    with pytest.raises(LabError, match="needs 'model'"):
        from_spec(QuantConfig, {"bits": 4}, "an export")
    assert from_spec(QuantConfig, {"model": "resnet20", "bits": 4}, "an export").bits == 4
    with pytest.raises(LabError, match="needs 'out'"):
        KINDS["export"].run({"model": "resnet20", "bits": 4}, lambda f, m: None)
    assert KINDS["eval"].describe({"configs": [{"model": "resnet20", "bits": 4}, {"model": "resnet20", "bits": 3}],
                                   "use_cache": True}) == "evaluate resnet20 at 4, 3 bits (full test set)"
    assert {"eval", "sensitivity", "export", "train"} <= set(KINDS)
