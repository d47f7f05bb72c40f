"""The sweep job: every combination of models x methods x bit widths x group sizes (core.eval.sweep), run by the
local worker in its own process, or sent to the hosts of a hostfile through `mlx.launch` (core.dist.launch), whose
ranks' progress lines the job follows.

Spec: {"models": [...], "methods": ["rtn"], "bits": [16, 4], "group_sizes": [null], "settings": {EvalConfig
fields shared by every configuration: limit, bench, ...}, "hostfile": null or a path, "out": null or a CSV path,
"use_cache": true}."""
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

KEYS = ("models", "methods", "bits", "group_sizes", "settings", "hostfile", "out", "use_cache")
_FINISHED = re.compile(r"rank (\d+) finished (\d+) of (\d+)")
_STOPPED = re.compile(r"^.*(?:lost|stopped|error:|not in this machine's cache).*$", re.M)


def describe(spec: dict) -> str:
    where = f" on the hosts of {Path(str(spec['hostfile'])).name}" if spec.get("hostfile") else ""
    bits = ",".join(map(str, _listed(spec.get("bits"))))
    return f"sweep {', '.join(map(str, _listed(spec.get('models')) or ['?']))} at {bits} bits{where}"


def _listed(value) -> list:
    return value if isinstance(value, list) else []


def configs_of(spec: dict):
    """The sweep's configurations, validated; a mistake in the spec is a LabError in words."""
    from core.eval.config import EvalConfig
    from core.eval.sweep import VARYING, expand

    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise LabError(f"A sweep job has no setting {', '.join(map(repr, unknown))}; it takes {', '.join(KEYS)}.")
    for key, kind in (("models", str), ("methods", str), ("bits", int), ("group_sizes", (int, type(None)))):
        if key in spec and not (isinstance(spec[key], list) and all(isinstance(v, kind) for v in spec[key])):
            raise LabError(f"A sweep job's {key!r} must be a list of {'names' if kind is str else 'numbers'}.")
    if not spec.get("models") or not spec.get("bits"):
        raise LabError("A sweep job needs at least one model and one bit width.")
    settings = spec.get("settings") or {}
    names = {f.name for f in fields(EvalConfig)} - set(VARYING)
    if not isinstance(settings, dict) or set(settings) - names:
        raise LabError(f"A sweep's shared settings are a dict taking {', '.join(sorted(names))}.")
    base = EvalConfig(spec["models"][0], **settings)
    return expand(base, spec["models"], spec.get("methods") or ["rtn"], spec["bits"], spec.get("group_sizes") or [None])


def spec_for(configs, hostfile: str | None = None, out: str | None = None) -> dict:
    """A sweep spec covering `configs` (validated EvalConfigs sharing every setting but model, method, bits and
    group size) and their full-precision baseline; a hostfile is checked here, so a bad one is refused at once."""
    from core.eval.config import EvalConfig
    from core.eval.sweep import VARYING

    unique = lambda values: list(dict.fromkeys(values))  # noqa: E731  (order kept)
    return {"models": unique(c.model for c in configs), "methods": unique(c.method for c in configs),
            "bits": unique([16, *(c.bits for c in configs)]), "group_sizes": unique(c.group_size for c in configs),
            "settings": {f.name: getattr(configs[0], f.name) for f in fields(EvalConfig) if f.name not in VARYING},
            "hostfile": checked_hostfile(hostfile), "out": str(Path(out).resolve()) if out else None}


def checked_hostfile(hostfile: str | None) -> str | None:
    """The hostfile's absolute path (the worker runs elsewhere), after checking it: JSON hosts, this machine first
    (rank 0 writes the CSV and gathers every row into its cache, which this machine's pages read)."""
    from core.dist.launch import first_host_is_here, hostfile_hosts

    if hostfile is None:
        return None
    if not hostfile.strip():
        raise LabError("Give the hostfile's path (a JSON list of hosts, as mlx.distributed_config writes it).")
    path = Path(hostfile.strip()).expanduser().resolve()
    hosts = hostfile_hosts(path)
    if not first_host_is_here(path):
        raise LabError(f"The first host of {path.name} ({hosts[0]}) is not this machine: put this machine first "
                       "(it is rank 0, which writes the CSV and gathers every row into this machine's results).")
    return str(path)


def run(spec: dict, progress) -> dict:
    configs = configs_of(spec)  # fail before any work
    if spec.get("hostfile"):
        return _run_on_hosts(spec, configs, progress)
    from core.eval.config import EvalResult
    from core.eval.sweep import default_csv, run_sweep
    from core.report.results import write_csv

    outcome = run_sweep(configs, use_cache=bool(spec.get("use_cache", True)), progress=progress,
                        say=lambda text: None)
    path = write_csv(outcome.rows, Path(spec.get("out") or default_csv(spec["models"])),
                     EvalResult.public_fields())
    return {"rows": outcome.rows, "csv": str(path), "computed": len(outcome.computed), "cached": len(outcome.cached),
            "ranks": 1}


def cli_args(spec: dict, summary: Path) -> list[str]:
    """`python -m core sweep` flags for the spec: the lists, then each shared setting as given."""
    from core.eval.config import EvalConfig
    from core.eval.sweep import VARYING, default_csv

    settings = spec.get("settings") or {}
    args = ["sweep", "--model", ",".join(spec["models"]), "--method", ",".join(spec.get("methods") or ["rtn"]),
            "--q-bits", ",".join(map(str, spec["bits"])),
            "--q-group-size", ",".join("default" if g is None else str(g) for g in spec.get("group_sizes") or [None]),
            "--out", str(spec.get("out") or default_csv(spec["models"])), "--summary", str(summary)]
    for f in fields(EvalConfig):
        value = settings.get(f.name)
        if f.name in VARYING or value is None:
            continue
        if isinstance(f.default, bool):
            args += [flag_name(f)] if value != f.default else []
        else:
            args += [flag_name(f), str(value)]
    return args + ([] if spec.get("use_cache", True) else ["--no-cache"])


def _run_on_hosts(spec: dict, configs, progress) -> dict:
    """mlx.launch over the hostfile. Ranks started over ssh have a terminal, so their standard error arrives on
    standard output: progress comes from 'rank K finished I of N' lines anywhere, and the outcome from the summary
    file rank 0 (this machine) writes. A cancel stops the launcher's process group (local ranks; remote ones lose
    their ssh session); the launcher also dies with the worker (core.dist.launch)."""
    from core.dist.launch import command, start

    with tempfile.TemporaryDirectory() as folder:
        summary = Path(folder) / "summary.json"
        proc = start(command(cli_args(spec, summary), hostfile=Path(spec["hostfile"])), cwd=REPO_ROOT)
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
