"""Command lines that start `python -m core ...` on several ranks through mlx.launch (core/dist/launcher.py): a
number of local ranks (`-n 2`, loopback) or the hosts of a hostfile (MLX's JSON format: `mlx.distributed_config`
writes one).

mlx.launch exits 0 even when a rank fails, so callers judge a run by what rank 0 printed or wrote."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from core.errors import LabError
from core.settings import REPO_ROOT


def launcher(stock: bool = False) -> list[str]:
    """mlx.launch's own code, run by this interpreter through core/dist/launcher.py (the same flags and behaviour,
    without the busy loop that keeps a core of the launching machine occupied); `stock`: the mlx.launch script
    itself, beside this interpreter (for comparison)."""
    if stock:
        return [str(Path(sys.executable).parent / "mlx.launch")]
    return [sys.executable, str(Path(__file__).with_name("launcher.py"))]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (the ring backend listens on one per rank and IP)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            held = []
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise LabError("No run of free ports for the ranks on this machine; close other distributed runs.")


def _load(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except OSError:
        raise LabError(f"Hostfile {path} cannot be read.") from None
    except ValueError:
        raise LabError(f"Hostfile {path} is not JSON: write one with mlx.distributed_config or see docs/scale.md "
                       "(a list of {\"ssh\": NAME, \"ips\": [IP]}).") from None


def hostfile_hosts(path: Path) -> list[str]:
    """The ssh names of a hostfile's hosts; a missing or malformed file is a LabError that says what is wrong."""
    data = _load(path)
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) and h.get("ssh") for h in hosts):
        raise LabError(f"Hostfile {path} lists no hosts: it needs a list of {{\"ssh\": NAME, \"ips\": [IP]}}.")
    backend = data.get("backend", "") if isinstance(data, dict) else ""
    if backend in ("", "ring") and any(not h.get("ips") for h in hosts):
        raise LabError(f"Hostfile {path}: the ring backend needs each host's IP addresses (\"ips\").")
    return [h["ssh"] for h in hosts]


def first_host_is_here(path: Path) -> bool:
    """Whether the hostfile's first host (rank 0) is this machine: its ssh name or one of its IPs is local."""
    import psutil

    data = _load(path)
    first = (data.get("hosts") if isinstance(data, dict) else data)[0]
    local = {"127.0.0.1", "::1", "localhost", socket.gethostname(), socket.getfqdn()}
    local |= {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    names = {first.get("ssh"), *first.get("ips", [])}
    return bool(names & local) or any(str(n).split(".")[0] == socket.gethostname().split(".")[0] for n in names if n)


def forwarded_settings(env: dict | None = None) -> list[str]:
    """`--env K=V` for every MLXQ_* setting of this process (paths made absolute): ranks started over ssh get a
    fresh login environment, and would otherwise write to another cache or miss the mirror."""
    out = []
    for key, value in sorted((os.environ if env is None else env).items()):
        if key.startswith("MLXQ_") and value:
            path = Path(value).expanduser()
            out += ["--env", f"{key}={path.resolve() if path.exists() else value}"]
    return out


def command(core_args: list[str], ranks: int = 2, hostfile: Path | None = None, port: int | None = None,
            cwd: Path = REPO_ROOT, python: str | None = None, stock: bool = False, env: dict | None = None
            ) -> list[str]:
    """`mlx.launch ... -- python -m core ARGS`: `ranks` local ranks, or one rank per host of `hostfile` (checked
    first). Every host runs the lab from `cwd` with `python` (this interpreter's path by default: clone and set up
    the lab at the same path on each machine), with the MLXQ_* settings of `env` (default: this process's), which
    must be the environment the launcher itself gets."""
    count = len(hostfile_hosts(hostfile)) if hostfile else ranks
    # Local ranks talk over loopback TCP (ring); a hostfile names its own backend (ring over Ethernet or
    # Thunderbolt, JACCL over Thunderbolt RDMA), else mlx.launch picks the platform's default.
    where = ["--hostfile", str(hostfile)] if hostfile else ["-n", str(ranks), "--backend", "ring"]
    return [*launcher(stock), *where, *forwarded_settings(env), "--starting-port", str(port or free_ports(count)),
            "--cwd", str(cwd), "--", python or sys.executable, "-m", "core", *core_args]


def start(argv: list[str], cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """The launcher in a process group of its own (so a cancel stops it with its local ranks), output merged into
    one text pipe; on Linux it is also told to stop when the process that started it dies (a killed worker leaves
    no sweep running on)."""
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy(),
                            preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None)


def _stop_with_parent() -> None:
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
