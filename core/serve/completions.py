"""POST /v1/chat/completions and /v1/completions on the continuous-batching text engine: requests checked,
tokenized on the engine thread (where models load), submitted with their own sampling settings, answered whole
or as server-sent events. A client that goes away, streaming or not, frees its place in the batch at the next
step. Prompt scoring (`echo` with `logprobs`, `max_tokens` 0) runs between steps too; a JSON response_format is
enforced by constrained decoding (core.deploy.constrained)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from core.deploy import prompts, scoring
from core.deploy.batching import QueueFull
from core.deploy.constrained import JsonConstraint, SchemaError
from core.deploy.detokenize import decode_with_offsets
from core.deploy.streams import Failed, Finished, Handle, Text, TextRequest
from core.serve import openai, tools
from core.serve.openai import ApiError
from core.serve.routes import busy
from core.serve.schemas import ChatRequest, CompletionRequest

router = APIRouter()
MAX_PROMPTS = 32


@dataclass
class Outcome:
    """A finished generation as the routes need it."""

    text: str = ""
    logprobs: list = field(default_factory=list)
    offsets: list = field(default_factory=list)  # each logprob's token's start in `text`
    end: Finished | None = None


def _engines(request: Request):
    return request.app.state.engines


async def _on_engine(request: Request, fn, deadline: float | None = None):
    """`fn()` on the text engine's thread between steps (tokenizing; loading a model on first use), awaited
    without blocking the event loop; past the request's `deadline` the client gets its 408 at once (a load in
    progress still finishes, for the next request)."""
    future = asyncio.wrap_future(_engines(request).text.call(fn))
    if deadline is None:
        return await future
    try:
        return await asyncio.wait_for(asyncio.shield(future), max(deadline - time.monotonic(), 0))
    except asyncio.TimeoutError:
        raise _deadline_error() from None


def _deadline_error() -> ApiError:
    return ApiError(408, "The request passed its deadline (--request-timeout) before it finished.",
                    "deadline_exceeded", kind="timeout_error")


def _language_model(request: Request, model_id: str, sampling=None):
    pool = _engines(request).pool
    if pool.kind(model_id) != "lm":  # known from start-up: an image classifier is not loaded to refuse it
        raise ApiError(400, f"{model_id} is an image classifier; use /v1/classify.", param="model")
    deployed = pool.get(model_id)
    if sampling is not None and sampling.logit_bias:
        _check_bias(sampling.logit_bias, len(deployed.tokenizer), model_id)
    return deployed


def _check_bias(bias: dict[int, float], vocabulary: int, model_id: str) -> None:
    """mlx-lm indexes the logits with the biased ids unchecked: an id past the vocabulary must stop here."""
    largest = max(bias)
    if largest >= vocabulary:
        raise ApiError(400, f"logit_bias names token {largest}, but {model_id} has {vocabulary} tokens "
                            f"(ids 0 to {vocabulary - 1}).", param="logit_bias")


def _prompt_limit(deployed, settings) -> int:
    return prompts.prompt_limit(deployed.model, settings.memory_budget_bytes, settings.max_prompt_tokens)


def _fits_context(deployed, prompt_tokens: int, max_tokens: int) -> None:
    context = prompts.context_length(deployed.model)
    if prompt_tokens + max_tokens > context:
        raise ApiError(400, f"This model's context is {context} tokens, and the request asks for "
                            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} to generate): "
                            "shorten the prompt or lower max_tokens.", "context_length_exceeded", param="max_tokens")


def _names(request: Request, model_id: str, tokenizer) -> scoring.TokenNames:
    cache = request.app.state.token_names
    if model_id not in cache or cache[model_id].tokenizer is not tokenizer:
        cache[model_id] = scoring.TokenNames(tokenizer)
    return cache[model_id]


def _deadline(request: Request) -> float | None:
    seconds = request.app.state.settings.request_timeout_s
    return time.monotonic() + seconds if seconds else None


def _submit(request: Request, text_request: TextRequest) -> tuple[Handle, asyncio.Queue]:
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    handle = Handle(lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    try:
        _engines(request).text.submit(text_request, handle)
    except QueueFull as e:
        raise busy(e) from e
    return handle, events


async def _watch_disconnect(request: Request, handle: Handle) -> None:
    """Cancel `handle` when the client goes away (for non-streaming answers; a stream notices by itself)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


async def _collect(request: Request, text_request: TextRequest) -> Outcome:
    handle, events = _submit(request, text_request)
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    outcome = Outcome()
    try:
        while True:
            event = await events.get()
            if isinstance(event, Text):
                outcome.text += event.text
                outcome.logprobs += event.logprobs
                outcome.offsets += event.offsets
            elif isinstance(event, Failed):
                raise ApiError(500, event.message, "generation_failed", kind="server_error")
            else:
                outcome.end = event
                return _checked(outcome)
    finally:
        watcher.cancel()
        handle.cancel()  # no-op when finished; stops the generation if this task was cancelled


def _checked(outcome: Outcome) -> Outcome:
    if outcome.end.reason == "deadline":
        raise _deadline_error()
    return outcome


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    settings = request.app.state.settings
    params = openai.sampling_params(body, settings.default_max_tokens, settings.max_tokens_limit)
    model_id = _engines(request).pool.check(body.model)
    tools.refuse_unserved(body)
    messages = [m.for_template() for m in body.messages]

    def prepare():
        deployed = _language_model(request, model_id, params.sampling)
        extras = tools.template_extras(deployed.tokenizer, body)
        tokens = prompts.chat_prompt_tokens(deployed.tokenizer, messages, settings.allow_special_tokens, extras,
                                            _prompt_limit(deployed, settings))
        _fits_context(deployed, len(tokens), params.max_tokens)
        return deployed, tokens

    deadline = _deadline(request)
    deployed, prompt = await _on_engine(request, prepare, deadline)
    top = (body.top_logprobs or 0) if body.logprobs else None
    text_request = TextRequest(model_id, prompt, params.max_tokens, params.sampling, params.stop, top,
                               deadline, await _constraints(request, deployed.tokenizer, body))
    names = _names(request, model_id, deployed.tokenizer).name
    completion = openai.Completion.new(model_id, chat=True)
    if body.stream:
        handle, events = _submit(request, text_request)
        return _sse(_chat_events(completion, handle, events, names, top is not None, _usage_wanted(body)))
    outcome = await _collect(request, text_request)
    text, calls = tools.parse_calls(deployed.tokenizer, outcome.text) if body.tools else (outcome.text, [])
    finish = "tool_calls" if calls else outcome.end.reason
    logprobs = openai.chat_logprobs(outcome.logprobs, names) if top is not None else None
    return completion.whole(text, finish, _usage(outcome.end), logprobs, calls)


async def _constraints(request: Request, tokenizer, body: ChatRequest) -> tuple:
    """The logits processor that enforces a JSON response_format (its index built off the event loop)."""
    if not tools.wants_json(body):
        return ()
    try:
        index = await request.app.state.json_indexes.index(tokenizer, tools.json_schema(body))
    except SchemaError as e:
        raise ApiError(400, str(e), param="response_format") from e
    return (JsonConstraint(index, tokenizer.eos_token_id),)


def _usage(end: Finished) -> dict:
    return openai.usage(end.prompt_tokens, end.completion_tokens)


def _usage_wanted(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_events(completion, handle: Handle, events: asyncio.Queue, names, with_logprobs: bool,
                       include_usage: bool):
    try:
        yield openai.sse(completion.chunk(role=True))
        async for kind, value in _stream(events):
            if kind == "text":
                logprobs = openai.chat_logprobs(value.logprobs, names) if with_logprobs else None
                yield openai.sse(completion.chunk(value.text, logprobs=logprobs))
            elif kind == "error":
                yield openai.sse(value)
                return
            else:
                yield openai.sse(completion.chunk(finish=value.reason))
                if include_usage:
                    yield openai.sse(completion.usage_chunk(_usage(value)))
                yield openai.DONE
    finally:
        handle.cancel()  # a client that went away stops its generation at the next step


async def _stream(events: asyncio.Queue):
    """('text', Text) ... then ('end', Finished) or ('error', in-band error body)."""
    while True:
        event = await events.get()
        if isinstance(event, Text):
            if event.text or event.logprobs:
                yield "text", event
        elif isinstance(event, Failed):
            yield "error", openai.error_body(event.message, "server_error", "generation_failed")
            return
        elif event.reason == "deadline":
            yield "error", openai.error_body("The request passed its deadline (--request-timeout).",
                                             "timeout_error", "deadline_exceeded")
            return
        else:
            yield "end", event
            return


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    settings = request.app.state.settings
    params = openai.sampling_params(body, settings.default_max_tokens, settings.max_tokens_limit,
                                    allow_zero=body.echo)
    model_id = _engines(request).pool.check(body.model)
    given = _prompt_list(body.prompt)
    if body.stream and len(given) > 1:
        raise ApiError(400, "Streaming takes one prompt; send several prompts without stream.", param="prompt")
    top = body.logprobs

    def prepare():
        deployed = _language_model(request, model_id, params.sampling)
        tokenizer, limit = deployed.tokenizer, _prompt_limit(deployed, settings)
        token_lists = [prompts.checked_token_prompt(p, len(tokenizer), limit) if isinstance(p, list)
                       else prompts.completion_prompt_tokens(tokenizer, p, settings.allow_special_tokens, limit)
                       for p in given]
        for tokens in token_lists:
            _fits_context(deployed, len(tokens), params.max_tokens)
        scores = ([scoring.score_prompt(deployed.model, t, top) for t in token_lists]
                  if body.echo and top is not None else [None] * len(token_lists))
        return deployed, token_lists, scores

    deadline = _deadline(request)
    deployed, token_lists, scores = await _on_engine(request, prepare, deadline)
    names = _names(request, model_id, deployed.tokenizer).name
    completion = openai.Completion.new(model_id, chat=False)
    requests = [TextRequest(model_id, t, params.max_tokens, params.sampling, params.stop, top, deadline)
                for t in token_lists]
    echoes = [decode_with_offsets(deployed.tokenizer, t) if body.echo else ("", []) for t in token_lists]
    if body.stream:
        return await _stream_completion(request, completion, requests[0], echoes[0], scores[0], names, body)
    if params.max_tokens == 0:
        outcomes = [Outcome(end=Finished("length", len(t), 0, 0.0, None)) for t in token_lists]
    else:
        outcomes = await asyncio.gather(*(_collect(request, r) for r in requests))
    choices = [_completion_choice(i, o, echoes[i], token_lists[i], scores[i], names, top)
               for i, o in enumerate(outcomes)]
    usage = openai.usage(sum(o.end.prompt_tokens for o in outcomes), sum(o.end.completion_tokens for o in outcomes))
    return completion.with_choices(choices, usage)


def _prompt_list(prompt) -> list:
    """A prompt is text, token ids, or a list of either; always a list of prompts here."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt or len(prompt) > MAX_PROMPTS:
        raise ApiError(400, f"Send between 1 and {MAX_PROMPTS} prompts.", param="prompt")
    return prompt


def _completion_choice(index: int, outcome: Outcome, echo: tuple[str, list[int]], prompt_tokens: list[int], scores,
                       names, top: int | None) -> dict:
    """One choice: the echoed prompt (text, token offsets) then the generated text, offsets shifted past it."""
    echo_text, echo_offsets = echo
    logprobs = None
    if top is not None:
        entries, tokens = list(outcome.logprobs), [e.token for e in outcome.logprobs]
        offsets = [len(echo_text) + o for o in outcome.offsets]
        if scores is not None:
            entries, tokens, offsets = [*scores, *entries], [*prompt_tokens, *tokens], [*echo_offsets, *offsets]
        logprobs = openai.completion_logprobs(entries, names, tokens, offsets)
    return {"index": index, "text": echo_text + outcome.text, "finish_reason": outcome.end.reason,
            "logprobs": logprobs}


async def _stream_completion(request: Request, completion, text_request: TextRequest, echo: tuple[str, list[int]],
                             scores, names, body: CompletionRequest):
    top = text_request.top_logprobs
    echo_text, echo_offsets = echo

    def piece_logprobs(entries, tokens, offsets):
        return None if top is None else openai.completion_logprobs(entries, names, tokens, offsets)

    async def events_of(handle, events):
        try:
            if echo_text:
                yield openai.sse(completion.chunk(echo_text, logprobs=piece_logprobs(
                    scores or [], text_request.prompt if scores else [], echo_offsets if scores else [])))
            if handle is not None:
                async for kind, value in _stream(events):
                    if kind == "text":
                        tokens = [e.token for e in value.logprobs]
                        yield openai.sse(completion.chunk(value.text, logprobs=piece_logprobs(
                            value.logprobs, tokens, [len(echo_text) + o for o in value.offsets])))
                    elif kind == "error":
                        yield openai.sse(value)
                        return
                    else:
                        yield openai.sse(completion.chunk(finish=value.reason))
                        if _usage_wanted(body):
                            yield openai.sse(completion.usage_chunk(_usage(value)))
            else:
                yield openai.sse(completion.chunk(finish="length"))
            yield openai.DONE
        finally:
            if handle is not None:
                handle.cancel()

    if text_request.max_tokens == 0:
        return _sse(events_of(None, None))
    handle, events = _submit(request, text_request)
    return _sse(events_of(handle, events))
