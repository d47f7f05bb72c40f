"""Command lines that start `python -m core ...` on several ranks through `mlx.launch`: a number of local ranks
(`-n 2`, loopback) or the hosts of a hostfile (MLX's JSON format: `mlx.distributed_config` writes one).

mlx.launch exits 0 even when a rank fails, so callers judge a run by what rank 0 printed or wrote."""
from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

from core.errors import LabError
from core.settings import REPO_ROOT


def launcher() -> list[str]:
    """mlx.launch beside this interpreter (the venv's), else on PATH, else MLX's module run by this interpreter."""
    beside = Path(sys.executable).parent / "mlx.launch"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("mlx.launch")
    return [found] if found else [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hostfile_hosts(path: Path) -> list[str]:
    """The ssh names of a hostfile's hosts; a missing or malformed file is a LabError that says what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError:
        raise LabError(f"Hostfile {path} cannot be read.") from None
    except ValueError:
        raise LabError(f"Hostfile {path} is not JSON: write one with mlx.distributed_config or see the README "
                       "(a list of {\"ssh\": NAME, \"ips\": [IP]}).") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) and h.get("ssh") for h in hosts):
        raise LabError(f"Hostfile {path} lists no hosts: it needs a list of {{\"ssh\": NAME, \"ips\": [IP]}}.")
    if any(not h.get("ips") for h in hosts):
        raise LabError(f"Hostfile {path}: the ring backend needs each host's IP addresses (\"ips\").")
    return [h["ssh"] for h in hosts]


def command(core_args: list[str], ranks: int = 2, hostfile: Path | None = None, port: int | None = None,
            cwd: Path = REPO_ROOT, python: str | None = None) -> list[str]:
    """`mlx.launch ... -- python -m core ARGS` over the ring backend: `ranks` local ranks, or one rank per host
    of `hostfile` (checked first). Every host runs the lab from `cwd` with `python` (this interpreter's path by
    default: clone and set up the lab at the same path on each machine)."""
    where = ["--hostfile", str(hostfile)] if hostfile else ["-n", str(ranks)]
    if hostfile:
        hostfile_hosts(hostfile)
    return [*launcher(), *where, "--backend", "ring", "--starting-port", str(port or free_port()), "--cwd",
            str(cwd), "--", python or sys.executable, "-m", "core", *core_args]
