"""What one generation request is and what it hears back, independent of how it is scheduled: the request,
its events (text with log-probabilities, the end, a failure), the handle that cancels it, and the per-request
text state (exact streaming detokenizer, stop strings held back until they cannot match)."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from core.deploy.detokenize import ExactDetokenizer
from core.deploy.sampling import SamplingSettings, TokenLogprob


@dataclass
class TextRequest:
    model_id: str
    prompt: list[int]
    max_tokens: int
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and k alternatives
    deadline: float | None = None  # time.monotonic() after which the request stops
    logits_processors: tuple = ()  # extra per-request processors (constrained decoding)


@dataclass
class Text:
    """New text; `logprobs` has one entry per token whose text this is (when asked for), and `offsets` where each
    of those tokens starts in the request's whole generated text."""

    text: str
    logprobs: list[TokenLogprob]
    offsets: list[int] = field(default_factory=list)


@dataclass
class Finished:
    reason: str  # 'stop', 'length', 'cancelled' or 'deadline'
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float  # from admission to the first token
    decode_tokens_per_s: float | None  # over decode steps only; None with fewer than two tokens


@dataclass
class Failed:
    message: str


class Handle:
    """The caller's side of a request: cancel it, or (from a plain thread) iterate its events."""

    def __init__(self, deliver: Callable[[object], None] | None = None):
        self._cancel = threading.Event()
        self._events: queue.Queue | None = None if deliver else queue.Queue()
        self.deliver = deliver or self._events.put

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def events(self, timeout_s: float = 600) -> Iterator[object]:
        """Every event until the last (Finished or Failed); for handles made without `deliver`."""
        while True:
            event = self._events.get(timeout=timeout_s)
            yield event
            if isinstance(event, (Finished, Failed)):
                return


class StopScanner:
    """Text-level stop strings: text that could still be the start of one is held back."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.emitted, self.held = stops, "", ""
        self.keep = max((len(s) - 1 for s in stops), default=0)

    def feed(self, segment: str, final: bool) -> tuple[str, bool]:
        """(text to release, whether a stop string was hit)."""
        self.held += segment
        so_far = self.emitted + self.held
        hit = min((so_far.find(s) for s in self.stops if s in so_far), default=-1)
        if hit >= 0:
            out = so_far[len(self.emitted):hit]
            self.emitted, self.held = so_far[:hit], ""
            return out, True
        if self.keep and not final:
            out, self.held = self.held[:-self.keep], self.held[-self.keep:]
        else:
            out, self.held = self.held, ""
        self.emitted += out
        return out, False


class LiveRequest:
    """A request inside the engine: turns its tokens into Text events and knows when it is done."""

    def __init__(self, request: TextRequest, handle: Handle, tokenizer, admitted: float):
        self.request, self.handle = request, handle
        self.detokenizer = ExactDetokenizer(tokenizer)
        self.eos = set(tokenizer.eos_token_ids)
        self.scanner = StopScanner(request.stop)
        self.tokens, self.pending, self.offsets = 0, [], []
        self.admitted, self.first, self.last = admitted, None, None

    def on_token(self, token: int, logprob: TokenLogprob | None, finish: str | None) -> str | None:
        """Feed one generated token; the finish reason once the request is done (EOS, length or a stop string)."""
        now = time.perf_counter()
        self.first = self.first or now
        end_of_text = token in self.eos
        segment = ""
        if not end_of_text:  # the end-of-text token is not counted, so its step's time is not either
            self.tokens += 1
            self.last = now
            segment = self.detokenizer.add_token(token)
            if logprob is not None:
                self.pending.append(logprob)
                self.offsets.append(self.detokenizer.offsets[-1])
        done = bool(finish or end_of_text)
        if done:
            segment += self.detokenizer.finalize()
        text, stopped = self.scanner.feed(segment, final=done)
        if text or (self.pending and (stopped or done)):
            self.handle.deliver(Text(text, self.pending, self.offsets))
            self.pending, self.offsets = [], []
        if stopped or end_of_text:
            return "stop"
        return finish

    @staticmethod
    def never_started(request: TextRequest, reason: str, admitted: float) -> Finished:
        return Finished(reason, len(request.prompt), 0, time.perf_counter() - admitted, None)

    def finished(self, reason: str) -> Finished:
        decode = None
        if self.tokens >= 2 and self.last > self.first:
            decode = (self.tokens - 1) / (self.last - self.first)
        first = (self.first or time.perf_counter()) - self.admitted
        return Finished(reason, len(self.request.prompt), self.tokens, first, decode)
