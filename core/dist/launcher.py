"""`python -m core.dist.launcher ARGS`: mlx.launch itself (the same code, flags and behaviour) with its I/O loop
made to wait for output instead of polling.

mlx.launch (mlx 0.32) forwards each local rank's output in a loop that asks `select` whether the rank's stdin can
be written, which a pipe always can: the loop never sleeps and keeps a core busy for the whole run, a core the
ranks need on a small machine (the scale-out bench measures it). Here `select` only waits on what can be read, and
reports the stdin pipes writable as before; mlx.launch writes to them only when it has input to pass on.
Standard input at end-of-file (/dev/null), which its main loop would also poll, is swapped for an empty pipe.

Run as a script (`python core/dist/launcher.py`): it imports nothing of the lab, so it starts from any folder."""
from __future__ import annotations

import os
import select
import stat
import sys


def _waiting_select(readable, writable, errors, timeout=None):
    ready, _, failed = select.select(readable, [], errors, timeout)
    return ready, list(writable), failed


def _stdin_that_waits() -> None:
    """Standard input at end-of-file for good (/dev/null) is always readable, and the main loop would poll it
    without pause; it gets an empty pipe instead, which nothing writes to."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:  # closed
        mode = None
    if mode is None or (stat.S_ISCHR(mode) and not os.isatty(0)):
        read_end, write_end = os.pipe()
        os.dup2(read_end, 0)
        _kept.append(write_end)  # held open for the launcher's life: the pipe never reaches end-of-file


_kept: list[int] = []


def main() -> int | None:
    from mlx._distributed_utils import launch

    _stdin_that_waits()
    launch.select = _waiting_select
    sys.argv[0] = "mlx.launch"
    return launch.main()


if __name__ == "__main__":
    sys.exit(main())
