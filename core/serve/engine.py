"""The serving engine: one worker thread owns all MLX work, models load on first use and are evicted
least-recently-used beyond a memory budget. One thread means requests never interleave inside MLX, so
concurrent requests cannot mix outputs; each job checks its cancel flag between tokens."""
from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

import mlx.core as mx

from core.deploy.ids import Deployed, load_deployed, parse_model_id
from core.errors import LabError


class Cancelled(Exception):
    """The client went away; the job stopped early."""


class ModelPool:
    """Deployed models by id, loaded on demand, least recently used evicted beyond `budget_bytes`."""

    def __init__(self, allowed: list[str], budget_bytes: int, dtype: str | None = None):
        self.allowed = list(dict.fromkeys(allowed))
        self.budget_bytes, self.dtype = budget_bytes, dtype
        self._models: OrderedDict[str, Deployed] = OrderedDict()

    def check(self, model_id: str) -> str:
        """The canonical id for a request's model name, or a LabError (never touches the file system)."""
        if not isinstance(model_id, str) or model_id not in self.allowed:
            raise UnknownModel(f"The model {model_id!r} does not exist here; available: {', '.join(self.allowed)}.")
        return model_id

    def get(self, model_id: str) -> Deployed:
        if model_id in self._models:
            self._models.move_to_end(model_id)
            return self._models[model_id]
        info, spec = parse_model_id(model_id)
        loaded = load_deployed(info, spec, self.dtype)
        self._models[model_id] = loaded
        while len(self._models) > 1 and self.resident_bytes() > self.budget_bytes:
            self._models.popitem(last=False)  # least recently used
        mx.clear_cache()
        return loaded

    def resident_bytes(self) -> int:
        return sum(m.size_bytes for m in self._models.values())

    def loaded(self) -> list[str]:
        return list(self._models)


class UnknownModel(LabError):
    pass


class Worker:
    """Runs submitted jobs one at a time on a dedicated thread; results come back as futures."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlxq-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> Future:
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if job is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as error:  # delivered to the waiting request, never kills the thread
                future.set_exception(error)

    def pending(self) -> int:
        return self._jobs.qsize()

    def stop(self) -> None:
        self._jobs.put((None, None))
