"""Which process is which: a pid alone can be reused by the system, so a process is named by its pid and its
creation time, and it counts as alive only while both still match."""
from __future__ import annotations

import os

import psutil

_SAME_START = 0.01  # seconds: create_time is exact for one process, but keep float rounding out of the comparison


def identity(pid: int | None = None) -> dict:
    """{pid, create_time} of this process (or of `pid`), as a job record or heartbeat stores it."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def alive(ident: dict | None) -> bool:
    """Whether the process `ident` names is still running (a zombie, dead but not yet reaped, is not)."""
    if not ident or not isinstance(ident.get("pid"), int):
        return False
    try:
        process = psutil.Process(ident["pid"])
        if abs(process.create_time() - float(ident.get("create_time", 0))) > _SAME_START:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False
