"""The vision lane: image classification on a thread and an MLX stream of its own, so it never queues behind
text generation. Requests that arrive while a batch runs are classified together in the next one. Before each
of its steps the text engine lets the batch in flight finish (`let_finish`), so the two alternate: an image
never waits for more than one text step, and text never waits for more than one vision batch."""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable

import mlx.core as mx
import numpy as np

from core.deploy import classify as vision
from core.errors import LabError

MAX_IMAGES_PER_BATCH = 64


class VisionQueueFull(LabError):
    """More images are waiting than the lane accepts; retry later."""


class VisionLane:
    def __init__(self, get_model: Callable[[str], object], max_queue: int = 256):
        self.get_model, self.max_queue = get_model, max_queue
        self.batches = self.images = 0
        self._waiting: deque[tuple[str, np.ndarray, Future]] = deque()
        self._in_flight = 0
        self._done = 0  # batches finished (or failed); `let_finish` waits for it to move
        self._finished = threading.Condition()
        self._warmed: set[str] = set()  # models whose kernels have been set up by a first call
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mlxq-vision-lane", daemon=True)
        self._thread.start()

    def submit(self, model_id: str, image32: np.ndarray) -> Future:
        future: Future = Future()
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise VisionQueueFull(f"{len(self._waiting)} images are already waiting (the limit is "
                                      f"{self.max_queue}); retry shortly.")
            self._waiting.append((model_id, image32, future))
            self._wake.notify()
        return future

    @property
    def busy(self) -> bool:
        return bool(self._waiting) or self._in_flight > 0

    def let_finish(self, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, for the batch in flight (or about to start) to finish; at once when idle."""
        with self._finished:
            if self.busy:
                seen = self._done
                self._finished.wait_for(lambda: self._done != seen or not self.busy, timeout_s)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _take_batch(self) -> list[tuple[str, np.ndarray, Future]] | None:
        """The oldest waiting image and every other one waiting for the same model, up to the batch limit."""
        with self._wake:
            while not (self._stopping or self._waiting):
                self._wake.wait()
            if self._stopping:
                return None
            model_id = self._waiting[0][0]
            batch = [job for job in self._waiting if job[0] == model_id][:MAX_IMAGES_PER_BATCH]
            taken = {id(job) for job in batch}
            self._waiting = deque(job for job in self._waiting if id(job) not in taken)
            self._in_flight = len(batch)
            return batch

    def _loop(self) -> None:
        stream = mx.new_stream(mx.default_device())
        while (batch := self._take_batch()) is not None:
            futures = [f for *_, f in batch if f.set_running_or_notify_cancel()]
            try:
                with mx.stream(stream):
                    deployed = self.get_model(batch[0][0])
                    if deployed.tokenizer is not None:
                        raise LabError(f"{batch[0][0]} is a language model, not an image classifier.")
                    images = np.stack([image for _, image, _ in batch])
                    results = vision.classify_batch(deployed.model, images, warm=batch[0][0] not in self._warmed)
                    self._warmed.add(batch[0][0])
                self.batches, self.images = self.batches + 1, self.images + len(batch)
                for (*_, future), result in zip(batch, results):
                    if future in futures:
                        future.set_result(result)
            except BaseException as error:  # delivered to every waiting request, never kills the thread
                for future in futures:
                    future.set_exception(error)
            finally:
                with self._finished:
                    self._in_flight = 0
                    self._done += 1
                    self._finished.notify_all()
