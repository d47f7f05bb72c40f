"""The OpenAI wire format as pure functions: error bodies, sampling settings, completion and chunk payloads,
log-probabilities in the chat and the completions shapes, and server-sent-event framing. Nothing here touches a
model or a socket, so all of it is tested directly."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from core.deploy.sampling import SamplingSettings, TokenLogprob
from core.serve.schemas import Sampling

DONE = "data: [DONE]\n\n"
MAX_STOPS = 4
TokenNamer = Callable[[int], tuple[str, bytes]]  # token id -> (its text, its exact bytes)


class ApiError(Exception):
    """A request the server answers with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.kind, self.headers = kind, headers or {}


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Params:
    """A request's generation settings, checked."""

    max_tokens: int
    sampling: SamplingSettings
    stop: tuple[str, ...]


def sampling_params(body: Sampling, default_max_tokens: int, max_tokens_limit: int,
                    allow_zero: bool = False) -> Params:
    """The generation settings a request asks for, checked. `allow_zero`: max_tokens 0 (score the prompt only)."""
    asked = getattr(body, "max_completion_tokens", None)
    max_tokens = next((v for v in (asked, body.max_tokens) if v is not None), default_max_tokens)
    low = 0 if allow_zero else 1
    if not low <= max_tokens <= max_tokens_limit:
        hint = " (0 only with echo on /v1/completions)" if max_tokens == 0 else ""
        raise ApiError(400, f"max_tokens must be between 1 and {max_tokens_limit}, not {max_tokens}{hint}.",
                       param="max_tokens")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > MAX_STOPS or any(not s or len(s) > 256 for s in stop):
        raise ApiError(400, f"stop takes at most {MAX_STOPS} non-empty strings of up to 256 characters.",
                       param="stop")
    bias = {int(k): float(v) for k, v in (body.logit_bias or {}).items()}
    settings = SamplingSettings(body.temperature, body.top_p, body.seed, body.presence_penalty,
                                body.frequency_penalty, bias)
    return Params(max_tokens, settings, stop)


def sse(payload: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload)}\n\n"


def chat_logprobs(entries: list[TokenLogprob], name: TokenNamer) -> dict:
    """The chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    def item(token: int, logprob: float) -> dict:
        text, raw = name(token)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob | None], name: TokenNamer, tokens: list[int],
                        offsets: list[int]) -> dict:
    """The completions shape: parallel lists tokens / token_logprobs / top_logprobs / text_offset, `offsets`
    being where each token starts in the choice's text (core.deploy.detokenize). An entry of None (the first
    token of an echoed prompt, which nothing predicts) has logprob None. A token holding part of a character is
    named by its bytes ('bytes:\\xe2\\x82'), as OpenAI's API names it."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": list(offsets)}
    for token, entry in zip(tokens, entries):
        out["tokens"].append(token_text(name, token))
        out["token_logprobs"].append(None if entry is None else entry.logprob)
        out["top_logprobs"].append(None if entry is None else {token_text(name, t): lp for t, lp in entry.top})
    return out


def token_text(name: TokenNamer, token: int) -> str:
    """A token's text, or 'bytes:\\xNN...' when its bytes are not whole characters."""
    raw = name(token)[1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@dataclass(frozen=True)
class Completion:
    """The identity of one completion response: every payload of it (whole or streamed) carries these."""

    model: str
    chat: bool
    id: str
    created: int

    @classmethod
    def new(cls, model: str, chat: bool) -> "Completion":
        return cls(model, chat, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], int(time.time()))

    def _payload(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def whole(self, text: str, finish: str, usage: dict, logprobs: dict | None = None,
              tool_calls: list | None = None) -> dict:
        """The non-streaming response."""
        if self.chat:
            message = {"role": "assistant", "content": text if not tool_calls or text else None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}
        return self._payload("chat.completion" if self.chat else "text_completion", [choice], usage=usage)

    def with_choices(self, choices: list[dict], usage: dict) -> dict:
        """A non-streaming text completion of several prompts, one choice each."""
        return self._payload("text_completion", choices, usage=usage)

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False,
              logprobs: dict | None = None) -> dict:
        """A streamed piece: new text, or (text None) the closing chunk with `finish`; `role` opens a chat."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        return self._payload(self._chunk_object, [choice])

    def usage_chunk(self, usage: dict) -> dict:
        """The last chunk when the client asked for stream_options.include_usage."""
        return self._payload(self._chunk_object, [], usage=usage)

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
