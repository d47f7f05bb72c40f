"""The worker's memory, published from inside its process: MLX's own counters (active, peak, cache) can only be
read there, and the System page watches the worker, which runs the jobs, beside the dashboard's own process."""
from __future__ import annotations

import json
import threading

from core.cache import atomic_write_text
from core.jobs.store import JobStore
from core.report.status import WORKER_READINGS, process_readings

EVERY_S = 1.0


class ReadingsPublisher:
    """A daemon thread writing this process's readings (and the job it runs, `job`) beside the job records every
    EVERY_S seconds until stopped; the file goes with it."""

    def __init__(self, store: JobStore, pid: int):
        self.path, self.pid, self.job = store.directory / WORKER_READINGS, pid, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlxq-worker-readings", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                atomic_write_text(self.path, json.dumps({**process_readings(), "pid": self.pid, "job": self.job}))
            except OSError:  # a full or vanished folder: the readings are a convenience, never the job's failure
                pass
            self._stop.wait(EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * EVERY_S)
        self.path.unlink(missing_ok=True)
