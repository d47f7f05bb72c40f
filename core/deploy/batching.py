"""Continuous batching for the language models, on mlx-lm's BatchGenerator (the engine mlx_lm.server uses).

One thread owns all language-model work. Each step it admits waiting requests into their model's running batch
(up to `max_batch` sequences), advances every batch by one token, and delivers each request's new text; a
request leaves its batch when it ends, is cancelled (its client went away) or passes its deadline. Other work
that must not interleave with a step (loading a model, tokenizing, scoring a prompt) runs between steps
through `call`. Finished requests leave their KV cache in mlx-lm's LRU prompt cache, so a later prompt that
shares a prefix with an earlier one (the chat template's system turn, a conversation's history) computes only
the new tokens. Before each step the engine calls `give_way(MAX_YIELD_S)`, which lets the vision lane finish
the batch it is running (a bounded wait), so images never queue behind text and text is never starved."""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from core import runtime
from core.deploy.sampling import processors_for, sampler_for, token_logprob
from core.deploy.streams import Failed, Handle, LiveRequest, TextRequest
from core.errors import LabError

log = logging.getLogger("mlxq.engine")
MAX_YIELD_S = 0.5  # the longest one step waits for the vision lane's batch in flight
PREFILL_STEP = 64  # prompt tokens per sequence per step: long prompts never hold the thread for long
PROMPT_CACHE_ENTRIES = 32
PROMPT_CACHE_BYTES = 512 * 1024**2


class QueueFull(LabError):
    """More requests are waiting than the engine accepts; retry later."""


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of those, taken from the prompt cache instead of computed
    generated_tokens: int = 0
    cancelled: int = 0
    deadline_exceeded: int = 0
    steps: int = 0
    finished: int = 0


@dataclass
class _Batch:
    """One model's running batch."""

    deployed: object
    generator: object
    live: dict[int, LiveRequest] = field(default_factory=dict)


class TextEngine:
    def __init__(self, get_model: Callable[[str], object], max_batch: int = 16, max_queue: int = 64,
                 give_way: Callable[[float], None] = lambda timeout_s: None):
        from mlx_lm.models.cache import LRUPromptCache

        self.get_model, self.max_batch, self.max_queue, self.give_way = get_model, max_batch, max_queue, give_way
        self.prompt_cache = LRUPromptCache(max_size=PROMPT_CACHE_ENTRIES, max_bytes=PROMPT_CACHE_BYTES)
        self.stats = EngineStats()
        self._idle_release_due = False  # a batch has ended since memory was last given back
        self._waiting: deque[tuple[TextRequest, Handle, float]] = deque()
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._batches: dict[str, _Batch] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mlxq-text-engine", daemon=True)
        self._thread.start()

    # ---- the caller's side (any thread)
    def submit(self, request: TextRequest, handle: Handle) -> Handle:
        with self._wake:
            # waiting requests that the next step admits (free places in the batch) do not count against the queue
            beyond_batch = len(self._waiting) - max(0, self.max_batch - self.stats.running)
            if beyond_batch >= self.max_queue:
                raise QueueFull(f"{self.stats.running} requests are running and {beyond_batch} waiting (the "
                                f"limit is {self.max_queue} waiting); retry shortly.")
            self._waiting.append((request, handle, time.perf_counter()))
            self.stats.waiting = len(self._waiting)
            self._wake.notify()
        return handle

    def call(self, fn: Callable[[], object]) -> Future:
        """`fn()` on the engine thread between steps; its result or exception comes back in the future."""
        future: Future = Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._calls or self.stats.running)

    # ---- the engine thread
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._waiting or self._calls or self._batches):
                    if self._idle_release_due:  # gone idle after work: memory back to what is held
                        self._idle_release_due = False
                        runtime.release_free_memory()
                        continue
                    self._wake.wait()
                if self._stopping:
                    return
            self._run_calls()
            self._admit()
            self.give_way(MAX_YIELD_S)
            for model_id in list(self._batches):
                self._step(model_id)

    def _run_calls(self) -> None:
        while self._calls:
            fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as error:  # delivered to the caller, never kills the thread
                    future.set_exception(error)

    def _admit(self) -> None:
        with self._wake:
            room = self.max_batch - self.stats.running
            taken = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            self.stats.waiting = len(self._waiting)
        for request, handle, admitted in taken:
            reason = _abandoned(handle, request.deadline, time.monotonic())
            if reason:  # gone or out of time while it waited: never started
                self._count(reason)
                handle.deliver(LiveRequest.never_started(request, reason, admitted))
                continue
            try:
                batch = self._batch_for(request.model_id)
                live = LiveRequest(request, handle, batch.deployed.tokenizer, admitted)
                processors = [*processors_for(request.sampling), *request.logits_processors]
                cache, rest = self._cached_prefix(request.model_id, request.prompt)
                done = len(request.prompt) - len(rest)
                (uid,) = batch.generator.insert([rest], max_tokens=[request.max_tokens], caches=[cache],
                                                all_tokens=[request.prompt[:done]],
                                                samplers=[sampler_for(request.sampling)],
                                                logits_processors=[processors])
            except Exception as error:
                handle.deliver(Failed(_message(error)))
                continue
            batch.live[uid] = live
            self.stats.running += 1
            self.stats.prompt_tokens += len(request.prompt)
            self.stats.cached_prompt_tokens += done

    def _cached_prefix(self, model_id: str, prompt: list[int]) -> tuple[list | None, list[int]]:
        """(a copy of the longest cached KV prefix or None, the prompt tokens still to compute: at least one,
        since the last prompt token's logits start the generation)."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        cache, rest = self.prompt_cache.fetch_nearest_cache(model_id, prompt)
        if cache is not None and not rest:
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, rest

    def _batch_for(self, model_id: str) -> _Batch:
        from mlx_lm.generate import BatchGenerator

        if model_id not in self._batches:
            deployed = self.get_model(model_id)
            eos = [[t] for t in sorted(deployed.tokenizer.eos_token_ids)]
            generator = BatchGenerator(deployed.model, stop_tokens=eos, completion_batch_size=self.max_batch,
                                       prefill_batch_size=min(8, self.max_batch), prefill_step_size=PREFILL_STEP)
            self._batches[model_id] = _Batch(deployed, generator)
        return self._batches[model_id]

    def _step(self, model_id: str) -> None:
        batch = self._batches[model_id]
        self._drop_abandoned(batch)
        try:
            if batch.live:
                _, responses = batch.generator.next()
                self.stats.steps += 1
                for response in responses:
                    self._deliver(batch, response)
        except Exception as error:  # a failed step fails its batch's requests, never the engine
            log.error("batch step failed for %s:\n%s", model_id, traceback.format_exc())
            for live in batch.live.values():
                live.handle.deliver(Failed(_message(error)))
            self.stats.running -= len(batch.live)
            batch.live.clear()
        if not batch.live:
            batch.generator.close()
            del self._batches[model_id]
            mx.clear_cache()
            self._idle_release_due = True

    def _deliver(self, batch: _Batch, response) -> None:
        live = batch.live.get(response.uid)
        if live is None:
            return
        top = live.request.top_logprobs
        logprob = None if top is None else token_logprob(response.logprobs, response.token, top)
        self.stats.generated_tokens += 1
        reason = live.on_token(response.token, logprob, response.finish_reason)
        if response.finish_reason is not None and response.prompt_cache is not None:
            # The extracted cache is a lazy copy of one row of the batch's KV arrays: until evaluated it keeps the
            # whole batch's arrays alive, many times the bytes the prompt cache counts for it.
            mx.eval([c.state for c in response.prompt_cache])
            self.prompt_cache.insert_cache(live.request.model_id, list(response.all_tokens), response.prompt_cache)
        if reason is not None:
            if response.finish_reason is None:  # ended by a stop string: take it out of the batch
                batch.generator.remove([response.uid])
            self._finish(batch, response.uid, reason)

    def _drop_abandoned(self, batch: _Batch) -> None:
        now = time.monotonic()
        for uid, live in list(batch.live.items()):
            deadline = live.request.deadline
            reason = _abandoned(live.handle, deadline, now)
            if reason:
                batch.generator.remove([uid])
                self._count(reason)
                self._finish(batch, uid, reason)

    def _count(self, reason: str) -> None:
        if reason == "cancelled":
            self.stats.cancelled += 1
        else:
            self.stats.deadline_exceeded += 1

    def _finish(self, batch: _Batch, uid: int, reason: str) -> None:
        live = batch.live.pop(uid)
        self.stats.running -= 1
        self.stats.finished += 1
        live.handle.deliver(live.finished(reason))


def _abandoned(handle: Handle, deadline: float | None, now: float) -> str | None:
    if handle.cancelled:
        return "cancelled"
    return "deadline" if deadline is not None and now > deadline else None


def _message(error: Exception) -> str:
    return str(error) if isinstance(error, LabError) else f"Generation failed ({type(error).__name__}): {error}"
