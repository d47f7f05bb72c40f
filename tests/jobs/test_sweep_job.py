"""The sweep job's translation to `python -m core sweep` flags (what the ranks on other hosts run) keeps every
setting, a hostfile is checked before anything is queued, and the lab's settings travel to ranks started over
ssh. No evaluation runs here: configurations are only built and compared."""
import json

import pytest

from core.cli.parser import build_parser
from core.cli.flags import config_from_args
from core.dist.launch import command, forwarded_settings
from core.errors import LabError
from core.eval.config import EvalConfig
from core.eval.sweep_config import SweepConfig, checked_hostfile, expand
from core.jobs.kinds import KINDS
from core.jobs.sweep_job import cli_args


def configs_from_flags(args: list[str]) -> list[EvalConfig]:
    """What `cmd_sweep` builds from these flags on every rank."""
    parsed = build_parser().parse_args(args)
    base = config_from_args(EvalConfig, parsed, model=parsed.model[0], method=parsed.method[0],
                            bits=parsed.bits[0], group_size=parsed.group_size[0])
    return expand(base, parsed.model, parsed.method, parsed.bits, parsed.group_size)


@pytest.mark.parametrize("quantized", [
    EvalConfig("resnet20-mlxq", bits=4, mode="mxfp4", limit=200, bench=False),
    EvalConfig("resnet20-mlxq", bits=3, group_size=32, method="gptq", calib=64, keep_first=True, limit=100),
    EvalConfig("resnet20-mlxq", bits=4, quantizer="symmetric", keep_last=True, seed=3),
    EvalConfig("resnet20-mlxq", bits=4, method="mixed", target_bpw=5.5, calib=32, dtype="float32"),
])
def test_the_flags_a_hostfile_sweep_runs_give_back_the_same_configurations(quantized, tmp_path):
    spec = KINDS["sweep"].spec_of([SweepConfig.covering([quantized.validated()])])  # as the Quantize page queues it
    [sweep] = KINDS["sweep"].configs_of(spec)
    assert configs_from_flags(cli_args(sweep, tmp_path / "summary.json")) == sweep.configs()
    assert quantized.validated() in sweep.configs() and any(c.spec.full_precision for c in sweep.configs())


def test_a_hostfile_is_checked_and_this_machine_must_come_first(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("hosts: a, b")
    with pytest.raises(LabError, match="is not JSON"):
        checked_hostfile(str(bad))
    far = tmp_path / "far.json"
    far.write_text(json.dumps([{"ssh": "far-away.example", "ips": ["203.0.113.7"]},
                               {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    with pytest.raises(LabError, match="is not this machine: put this machine first"):
        checked_hostfile(str(far))
    no_ips = tmp_path / "no-ips.json"
    no_ips.write_text(json.dumps([{"ssh": "127.0.0.1"}]))
    with pytest.raises(LabError, match="needs each host's IP"):
        checked_hostfile(str(no_ips))
    with pytest.raises(LabError, match="Give the hostfile's path"):
        checked_hostfile("  ")
    here = tmp_path / "here.json"
    here.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    monkeypatch.chdir(tmp_path)
    assert checked_hostfile("here.json") == str(here)  # absolute: the worker runs from the repository


def test_a_spec_of_the_wrong_shape_is_refused_in_words():
    configs_of = KINDS["sweep"].configs_of
    with pytest.raises(LabError, match="'models' must be a list of names"):
        configs_of({"models": "resnet20", "bits": [4]})
    with pytest.raises(LabError, match="shared settings are a dict"):
        configs_of({"models": ["resnet20"], "bits": [4], "settings": {"colour": "red"}})
    with pytest.raises(LabError, match="Bit width 7 is not supported"):
        configs_of({"models": ["resnet20"], "bits": [7]})
    with pytest.raises(LabError, match="A sweep job has no setting 'colour'"):
        configs_of({"models": ["resnet20"], "bits": [4], "colour": "red"})


def test_the_labs_settings_travel_to_every_rank(monkeypatch, tmp_path):
    monkeypatch.setenv("MLXQ_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MLXQ_DTYPE", "float32")
    forwarded = forwarded_settings()
    assert "MLXQ_DTYPE=float32" in forwarded and f"MLXQ_RESULTS={tmp_path / 'results'}" in forwarded
    argv = command(["eval", "--model", "resnet20"], ranks=2)
    assert argv[argv.index("--") + 1:][-4:] == ["core", "eval", "--model", "resnet20"]
    assert "--env" in argv and argv[argv.index("-n") + 1] == "2"
