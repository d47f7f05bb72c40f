"""The distributed group `mlx.launch` made for this process, if any.

Nothing here starts a group on its own: a process launched without `mlx.launch` (no MLX_RANK in its environment)
is a group of one, and every caller then takes the single-process path unchanged."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from core import runtime

_LAUNCHED = ("MLX_RANK", "OMPI_COMM_WORLD_RANK")  # ring, JACCL and NCCL set the first; MPI the second
_world: list = []


@dataclass(frozen=True)
class Ranks:
    """This process's place in a group: `group` is the `mx.distributed.Group` (None for a group of one)."""
    group: object | None
    rank: int = 0
    size: int = 1

    @property
    def root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = Ranks(None)


def world() -> Ranks:
    """The launcher's group (initialized once per process), or SINGLE when not launched by one."""
    if not _world:
        _world.append(_init())
    return _world[0]


def _init() -> Ranks:
    if not any(v in os.environ for v in _LAUNCHED) or not mx.distributed.is_available():
        return SINGLE
    group = mx.distributed.init()
    if group.size() == 1:
        return SINGLE
    ranks = Ranks(group, group.rank(), group.size())
    share_host_cores(ranks)
    return ranks


def ring_hosts() -> list[str]:
    """The host (IP) of every rank, from the ring backend's hostfile (empty for other backends)."""
    text = os.environ.get("MLX_HOSTFILE", "")
    if not text:
        return []
    try:
        nodes = json.loads(Path(text).read_text() if os.path.isfile(text) else text)
        return [node[0].rsplit(":", 1)[0] for node in nodes]
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        return []


def share_host_cores(ranks: Ranks) -> list[int] | None:
    """Several ranks on one machine (`mlx.launch -n 2`): each takes its own share of the cores, so their CPU streams
    and BLAS threads do not fight over the same ones. Returns the cores kept, or None when nothing changed."""
    hosts = ring_hosts()
    if len(hosts) != ranks.size or not hasattr(os, "sched_setaffinity"):
        return None
    mine = [r for r, h in enumerate(hosts) if h == hosts[ranks.rank]]
    cores = sorted(os.sched_getaffinity(0))
    if len(mine) < 2 or len(cores) < len(mine):
        return None
    i, per = mine.index(ranks.rank), len(cores) // len(mine)
    kept = cores[i * per:(i + 1) * per]
    os.sched_setaffinity(0, kept)
    runtime.set_blas_threads(len(kept))
    return kept
