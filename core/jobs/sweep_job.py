"""The sweep job: every combination of models x methods x bit widths x group sizes (core.eval.sweep_config), run by
the local worker in its own process, or sent to the hosts of a hostfile through `mlx.launch` (core.dist.launch),
whose ranks' progress lines the job follows. Its spec is the SweepConfig's fields and "use_cache"."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path

from core.errors import LabError
from core.options import flag_name
from core.settings import REPO_ROOT

_FINISHED = re.compile(r"rank (\d+) finished (\d+) of (\d+)")
_STOPPED = re.compile(r"^.*(?:lost|stopped|error:|not in this machine's cache).*$", re.M)


def describe(spec: dict) -> str:
    where = f" on the hosts of {Path(str(spec['hostfile'])).name}" if spec.get("hostfile") else ""
    bits = ",".join(map(str, _listed(spec.get("bits"))))
    return f"sweep {', '.join(map(str, _listed(spec.get('models')) or ['?']))} at {bits} bits{where}"


def _listed(value) -> list:
    return value if isinstance(value, list) else []


def run(config, progress, use_cache: bool = True) -> dict:
    """The validated SweepConfig `config` here (the CSV written, the rows returned), or on its hostfile's hosts."""
    configs = config.configs()  # fail before any work
    if config.hostfile:
        return _run_on_hosts(config, configs, progress, use_cache)
    from core.eval.config import EvalResult
    from core.eval.sweep import default_csv, run_configs
    from core.report.results import write_csv

    outcome = run_configs(configs, use_cache=use_cache, progress=progress, say=lambda text: None)
    path = write_csv(outcome.rows, Path(config.out or default_csv(list(config.models))), EvalResult.public_fields())
    return {"rows": outcome.rows, "csv": str(path), "computed": len(outcome.computed), "cached": len(outcome.cached),
            "ranks": 1}


def cli_args(config, summary: Path, use_cache: bool = True) -> list[str]:
    """`python -m core sweep` flags for the SweepConfig `config`: the lists, then each shared setting as given."""
    from core.eval.config import EvalConfig
    from core.eval.sweep import VARYING, default_csv

    settings = config.settings or {}
    args = ["sweep", "--model", ",".join(config.models), "--method", ",".join(config.methods or ["rtn"]),
            "--q-bits", ",".join(map(str, config.bits)),
            "--q-group-size", ",".join("default" if g is None else str(g) for g in config.group_sizes or [None]),
            "--out", str(config.out or default_csv(list(config.models))), "--summary", str(summary)]
    for f in fields(EvalConfig):
        value = settings.get(f.name)
        if f.name in VARYING or value is None:
            continue
        if isinstance(f.default, bool):
            args += [flag_name(f)] if value != f.default else []
        else:
            args += [flag_name(f), str(value)]
    return args + ([] if use_cache else ["--no-cache"])


def _run_on_hosts(config, configs, progress, use_cache: bool) -> dict:
    """mlx.launch over the hostfile. Ranks started over ssh have a terminal, so their standard error arrives on
    standard output: progress comes from 'rank K finished I of N' lines anywhere, and the outcome from the summary
    file rank 0 (this machine) writes. A cancel stops the launcher's process group (local ranks; remote ones lose
    their ssh session); the launcher also dies with the worker (core.dist.launch)."""
    from core.dist.launch import command, start

    with tempfile.TemporaryDirectory() as folder:
        summary = Path(folder) / "summary.json"
        proc = start(command(cli_args(config, summary, use_cache), hostfile=Path(config.hostfile)), cwd=REPO_ROOT)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            while proc.poll() is None or reader.is_alive():
                done = {rank: int(i) for rank, i, _ in _FINISHED.findall("".join(output))}
                progress(min(sum(done.values()) / len(configs), 0.99), f"{sum(done.values())} of {len(configs)} "
                         f"configurations finished on {len(done)} rank(s)")
                time.sleep(0.5)
        except BaseException:
            _stop(proc)
            raise
        finally:
            proc.stdout.close()
        return _outcome(summary, "".join(output).replace("\r", ""))


def _stop(proc: subprocess.Popen) -> None:
    """The launcher's whole process group: politely, then not."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _outcome(summary: Path, output: str) -> dict:
    """Rank 0's summary; without it the run failed, and the ranks' own lines say what was lost."""
    if not summary.is_file():
        said = _STOPPED.findall(output)
        raise LabError("The sweep on the hosts did not finish" + (": " + " ".join(said[-4:]) if said else
                       " (no rank reported; see the worker's log)") + ". Submitting it again computes only the "
                       "configurations not yet cached on each host.")
    return json.loads(summary.read_text())
