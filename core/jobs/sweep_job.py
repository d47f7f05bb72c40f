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
import threading
import time
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from core.errors import LabError
from core.options import flag_name
from core.settings import REPO_ROOT, cache_root

KEYS = ("models", "methods", "bits", "group_sizes", "settings", "hostfile", "out", "use_cache")
_FINISHED = re.compile(r"rank (\d+) finished (\d+) of (\d+)")
_WROTE = re.compile(r"^wrote (.+\.csv)$", re.M)


def describe(spec: dict) -> str:
    where = f" on the hosts of {Path(spec['hostfile']).name}" if spec.get("hostfile") else ""
    bits = ",".join(map(str, spec.get("bits") or []))
    return f"sweep {', '.join(spec.get('models') or ['?'])} at {bits} bits{where}"


def configs_of(spec: dict):
    """The sweep's configurations, validated; a mistake in the spec is a LabError in words."""
    from core.eval.config import EvalConfig
    from core.eval.sweep import expand

    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise LabError(f"A sweep job has no setting {', '.join(map(repr, unknown))}; it takes {', '.join(KEYS)}.")
    models, bits = spec.get("models"), spec.get("bits")
    if not models or not bits:
        raise LabError("A sweep job needs at least one model and one bit width.")
    settings = dict(spec.get("settings") or {})
    names = {f.name for f in fields(EvalConfig)} - {"model", "method", "bits", "group_size"}
    if set(settings) - names:
        raise LabError(f"A sweep's shared settings take {', '.join(sorted(names))}.")
    base = EvalConfig(models[0], **settings)
    return expand(base, models, spec.get("methods") or ["rtn"], bits, spec.get("group_sizes") or [None])


def spec_for(configs, hostfile: str | None = None, out: str | None = None) -> dict:
    """A sweep spec covering `configs` (validated EvalConfigs sharing every setting but model, method, bits and
    group size) and their full-precision baseline; with `hostfile`, checked here, so a bad one is refused at once."""
    from core.dist.launch import hostfile_hosts
    from core.eval.config import EvalConfig

    if hostfile is not None:
        if not hostfile:
            raise LabError("Give the hostfile's path (a JSON list of hosts, as mlx.distributed_config writes it).")
        hostfile_hosts(Path(hostfile))
    unique = lambda values: list(dict.fromkeys(values))  # noqa: E731  (order kept)
    varying = ("model", "method", "bits", "group_size")
    return {"models": unique(c.model for c in configs), "methods": unique(c.method for c in configs),
            "bits": unique([16, *(c.bits for c in configs)]), "group_sizes": unique(c.group_size for c in configs),
            "settings": {f.name: getattr(configs[0], f.name) for f in fields(EvalConfig) if f.name not in varying},
            "hostfile": hostfile, "out": out}


def _csv_path(spec: dict) -> Path:
    name = "-".join(m.replace("/", "_") for m in spec["models"])[:80]
    return Path(spec.get("out") or cache_root() / "sweeps" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.csv")


def run(spec: dict, progress) -> dict:
    configs = configs_of(spec)  # fail before any work
    if spec.get("hostfile"):
        return _run_on_hosts(spec, configs, progress)
    from core.eval.config import EvalResult
    from core.eval.sweep import run_sweep
    from core.report.results import write_csv

    outcome = run_sweep(configs, use_cache=bool(spec.get("use_cache", True)), progress=progress,
                        say=lambda text: None)
    path = write_csv(outcome.rows, _csv_path(spec), [f.name for f in fields(EvalResult) if f.name != "predictions"])
    return {"rows": outcome.rows, "csv": str(path), "computed": len(outcome.computed), "cached": len(outcome.cached),
            "ranks": 1}


def cli_args(spec: dict, configs) -> list[str]:
    """`python -m core sweep` flags for the spec (the settings as the first configuration has them)."""
    from core.eval.config import EvalConfig

    first = configs[0]
    args = ["sweep", "--model", ",".join(spec["models"]), "--method", ",".join(spec.get("methods") or ["rtn"]),
            "--q-bits", ",".join(map(str, spec["bits"])),
            "--q-group-size", ",".join("default" if g is None else str(g) for g in spec.get("group_sizes") or [None]),
            "--out", str(_csv_path(spec))]
    for f in fields(EvalConfig):
        value = getattr(first, f.name)
        if f.name in ("model", "method", "bits", "group_size") or f.name not in (spec.get("settings") or {}):
            continue
        if isinstance(f.default, bool):
            args += [flag_name(f)] if value != f.default else []
        elif value is not None:
            args += [flag_name(f), str(value)]
    return args + ([] if spec.get("use_cache", True) else ["--no-cache"])


def _run_on_hosts(spec: dict, configs, progress) -> dict:
    """mlx.launch over the hostfile; progress from the ranks' 'rank K finished I of N' lines (standard error),
    rank 0's rows as JSON lines (standard output); a cancel stops the launcher's whole process group (local
    ranks; remote ones lose their ssh session)."""
    from core.dist.launch import command

    argv = command([*cli_args(spec, configs), "--json"], hostfile=Path(spec["hostfile"]))
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, o=o: o.extend(s), daemon=True)
               for s, o in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        while proc.poll() is None or any(r.is_alive() for r in readers):
            done = {rank: int(i) for rank, i, _ in _FINISHED.findall("".join(err))}
            progress(min(sum(done.values()) / len(configs), 0.99), f"{sum(done.values())} of {len(configs)} "
                     f"configurations finished on {len(done)} rank(s)")
            time.sleep(0.5)
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        raise
    return _outcome("".join(out), "".join(err), configs)


def _outcome(out: str, err: str, configs) -> dict:
    """Rank 0's rows; without them the run failed, and the ranks' own lines say what was lost. Rank 0 (the
    hostfile's first host: this machine, so that its cache and the Trade-offs page get every row) wrote the CSV."""
    wrote = _WROTE.search(err)
    if not wrote:
        said = [line for line in err.splitlines() if "lost" in line or "error:" in line or "stopped" in line]
        raise LabError("The sweep on the hosts did not finish" + (": " + " ".join(said[-4:]) if said else
                       " (no rank reported; see the worker's log)") + ". Submitting it again computes only the "
                       "configurations not yet cached on each host.")
    counts = re.search(r"computed (\d+), from the cache (\d+)", err)
    return {"rows": [json.loads(line) for line in out.splitlines() if line.startswith("{")], "csv": wrote.group(1),
            "ranks": len({rank for rank, _, _ in _FINISHED.findall(err)}),
            "computed": int(counts.group(1)) if counts else None, "cached": int(counts.group(2)) if counts else None}
