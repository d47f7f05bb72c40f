"""The other kinds run in a worker as their commands do: a sensitivity table with its allocation, an export (both
submitted from the command line); a spec with a setting its config lacks is refused in words; and every kind of run
is one entry of the registry, whose config gives its command its flags and its job its spec."""
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
        KINDS["export"].run_job({"model": "resnet20", "bits": 4}, lambda f, m: None)
    assert KINDS["eval"].describe({"configs": [{"model": "resnet20", "bits": 4}, {"model": "resnet20", "bits": 3}],
                                   "use_cache": True}) == "evaluate resnet20 at 4, 3 bits (full test set)"
    assert {"eval", "sensitivity", "export", "train"} <= set(KINDS)


def test_every_run_kind_is_one_config_its_command_and_its_job_are_built_from(tmp_path):
    from dataclasses import fields

    from core.cli import build_parser
    from core.deploy.export_config import ExportConfig
    from core.eval.sweep_config import SweepConfig
    from core.models.train_config import TrainConfig
    from core.options import flag_name
    from core.quant.sensitivity_config import SensitivityConfig

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    submit = next(a for a in commands["jobs"]._actions if a.dest == "jobs_command").choices["submit"]
    assert set(next(a for a in submit._actions if a.dest == "kind").choices) == set(KINDS)
    for name in ("sensitivity", "export", "train"):
        flags = {s for action in commands[name]._actions for s in action.option_strings}
        assert {flag_name(f) for f in fields(KINDS[name].config) if f.metadata.get("cli", True)} <= flags, name
    configs = {"eval": [KINDS["eval"].config("resnet20-mlxq", bits=b, limit=100) for b in (8, 4)],
               "sensitivity": [SensitivityConfig("resnet20-mlxq", bits=(4, 8), calib=16, target_bpw=6)],
               "export": [ExportConfig("resnet20-mlxq", bits=None, mode="mxfp8", out=str(tmp_path / "x"))],
               "train": [TrainConfig(epochs=2, limit=64, out=str(tmp_path / "t"))],
               "sweep": [SweepConfig(models=("resnet20-mlxq",), bits=(16, 4), settings={"limit": 100})]}
    for name, given in configs.items():
        spec = json.loads(json.dumps(KINDS[name].spec_of(given, use_cache=False)))  # as a job record keeps it
        assert KINDS[name].configs_of(spec) == [c.validated() for c in given], name
        assert spec.get("use_cache", False) is False and KINDS[name].describe(spec)
    assert KINDS["export"].configs_of(KINDS["export"].spec_of(configs["export"]))[0].bits == 8  # mxfp8's own width
