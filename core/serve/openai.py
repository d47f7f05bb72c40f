"""The OpenAI wire format as pure functions: error bodies, sampling settings, completion and chunk payloads, and
server-sent-event framing. Nothing here touches a model or a socket, so all of it is tested directly."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from core.serve.schemas import Sampling

DONE = "data: [DONE]\n\n"


class ApiError(Exception):
    """A request the server answers with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sampling_params(body: Sampling, default_max_tokens: int, max_tokens_limit: int) -> dict:
    """The generation settings a request asks for, checked: stream_chat's keyword arguments."""
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    if not 1 <= max_tokens <= max_tokens_limit:
        raise ApiError(400, f"max_tokens must be between 1 and {max_tokens_limit}, not {max_tokens}.",
                       param="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise ApiError(400, "stop takes at most 4 non-empty strings.", param="stop")
    return dict(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop)


def sse(payload: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload)}\n\n"


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

    def whole(self, text: str, finish: str, usage: dict) -> dict:
        """The non-streaming response."""
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if self.chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        return self._payload("chat.completion" if self.chat else "text_completion", [choice], usage=usage)

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
        """A streamed piece: new text, or (text None) the closing chunk with `finish`; `role` opens a chat."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
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
