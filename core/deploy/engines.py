"""Everything that runs models for the server and the playground: the model pool (models load on first use and
are evicted least-recently-used beyond a memory budget; safe to use from any thread), and `Engines`, which starts
the continuous-batching text engine and the vision lane over one pool. The pool serves registry ids and
NAME=PATH folders alike (core.deploy.ids): every entry is checked when the pool is made, and a request's model name
is only ever looked up in that table."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx

from core.deploy.batching import TextEngine
from core.deploy.ids import Deployed, Served, served_models
from core.deploy.vision_lane import VisionLane
from core.errors import LabError


class ModelPool:
    """Deployed models by served name, loaded on demand, least recently used evicted beyond `budget_bytes` (the
    bytes of the arrays each model holds, as it holds them)."""

    def __init__(self, allowed: list[str], budget_bytes: int, dtype: str | None = None):
        self.served: dict[str, Served] = served_models(allowed, dtype)  # a bad entry is a LabError here
        self.allowed = list(self.served)
        self.budget_bytes, self.dtype = budget_bytes, dtype
        self._models: OrderedDict[str, Deployed] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, model_id: str) -> str:
        """The served name a request's model name is, or UnknownModel (a dict lookup: never touches files)."""
        if not isinstance(model_id, str) or model_id not in self.served:
            raise UnknownModel(f"The model {model_id!r} does not exist here; available: {', '.join(self.allowed)}.")
        return model_id

    def describe(self, model_id: str) -> Served:
        """What is served under this name, as known at start-up (nothing loaded)."""
        return self.served[self.check(model_id)]

    def kind(self, model_id: str) -> str:
        """'lm' or 'vision', without loading the model."""
        return self.describe(model_id).kind

    def get(self, model_id: str) -> Deployed:
        model_id = self.check(model_id)
        with self._lock:  # one load at a time; a model in use elsewhere stays alive through its references
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
            loaded = self.served[model_id].load(self.dtype)
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


@dataclass
class Engines:
    """Everything that runs models for the server: the pool, the text engine and the vision lane."""

    pool: ModelPool
    text: TextEngine
    vision: VisionLane

    @classmethod
    def start(cls, pool: ModelPool, max_batch: int, max_queue: int, max_vision_queue: int) -> "Engines":
        vision = VisionLane(pool.get, max_vision_queue)
        text = TextEngine(pool.get, max_batch, max_queue, give_way=vision.let_finish)
        return cls(pool, text, vision)

    def stop(self) -> None:
        self.text.stop()
        self.vision.stop()
