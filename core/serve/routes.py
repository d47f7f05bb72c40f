"""The endpoints. Each handler reads the server's parts from `request.app.state` (settings, model pool, worker,
metrics, set by core.serve.app.create_app); all MLX work runs on the one worker thread."""
from __future__ import annotations

import asyncio
import threading

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, StreamingResponse

from core import runtime
from core.data import CIFAR10_CLASSES
from core.deploy import classify as vision
from core.deploy import generate
from core.models.registry import REGISTRY
from core.serve import openai
from core.serve.engine import Cancelled
from core.serve.openai import ApiError
from core.serve.schemas import ChatRequest, CompletionRequest, Sampling

router = APIRouter()
MAX_TOP_K = len(CIFAR10_CLASSES)  # every class can be asked for


async def _run(request: Request, job):
    """`job()` on the worker thread, awaited without blocking the event loop."""
    return await asyncio.wrap_future(request.app.state.worker.submit(job))


def _language_model(request: Request, model_id: str):
    deployed = request.app.state.pool.get(request.app.state.pool.check(model_id))
    if deployed.tokenizer is None:
        raise ApiError(400, f"{model_id} is an image classifier; use /v1/classify.", param="model")
    return deployed


def _sampling(request: Request, body: Sampling) -> dict:
    settings = request.app.state.settings
    return openai.sampling_params(body, settings.default_max_tokens, settings.max_tokens_limit)


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    return {"status": "ok", "backend": runtime.backend(), "models_loaded": state.pool.loaded(),
            "queue_depth": state.worker.pending()}


@router.get("/metrics")
async def prometheus(request: Request):
    state = request.app.state
    return PlainTextResponse(state.metrics.render(len(state.pool.loaded()), state.worker.pending()),
                             media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "mlxq",
                                        "kind": REGISTRY[m.partition("@")[0]].kind}
                                       for m in request.app.state.pool.allowed]}


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    params = _sampling(request, body)
    request.app.state.pool.check(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]

    def prepare():
        deployed = _language_model(request, body.model)
        return deployed, generate.chat_prompt_tokens(deployed.tokenizer, messages)

    deployed, prompt = await _run(request, prepare)
    return await _respond(request, body, deployed, prompt, params, chat=True)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    params = _sampling(request, body)
    request.app.state.pool.check(body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(400, "prompt must be one string.", param="prompt")

    def prepare():
        deployed = _language_model(request, body.model)
        return deployed, generate.completion_prompt_tokens(deployed.tokenizer, prompts[0])

    deployed, prompt = await _run(request, prepare)
    return await _respond(request, body, deployed, prompt, params, chat=False)


def _generation_job(metrics, deployed, prompt: list[int], params: dict, cancel: threading.Event):
    """The worker's job: generate, stopping at the next token once `cancel` is set; (text, finish, tokens)."""
    def generate_all(on_chunk=None):
        text, last = [], None
        for chunk in generate.stream_chat(deployed.model, deployed.tokenizer, prompt, **params):
            if cancel.is_set():
                metrics.add_cancelled()
                raise Cancelled()
            text.append(chunk.text)
            last = chunk
            if on_chunk:
                on_chunk(chunk)
        metrics.add_tokens(len(prompt), last.tokens if last else 0)
        return "".join(text), (last.finish_reason if last else "length") or "length", last.tokens if last else 0

    return generate_all


async def _respond(request: Request, body: Sampling, deployed, prompt: list[int], params: dict, chat: bool):
    completion = openai.Completion.new(body.model, chat)
    cancel = threading.Event()
    job = _generation_job(request.app.state.metrics, deployed, prompt, params, cancel)
    if not body.stream:
        text, finish, n = await _run(request, job)
        return completion.whole(text, finish, openai.usage(len(prompt), n))
    loop, chunks = asyncio.get_running_loop(), asyncio.Queue()
    future = request.app.state.worker.submit(lambda: job(lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c)))
    future.add_done_callback(lambda _f: loop.call_soon_threadsafe(chunks.put_nowait, None))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_events(request, completion, chunks, future, cancel, len(prompt), include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(request: Request, completion: openai.Completion, chunks: asyncio.Queue, future, cancel,
                  prompt_tokens: int, include_usage: bool):
    """The server-sent events of one streamed completion, ending with [DONE]."""
    try:
        if completion.chat:
            yield openai.sse(completion.chunk(role=True))
        while (chunk := await chunks.get()) is not None:
            if await request.is_disconnected():
                cancel.set()
                return
            if chunk.text:
                yield openai.sse(completion.chunk(chunk.text))
        try:
            _text, finish, n = future.result()
        except Exception as e:  # the stream has started: report in-band, as OpenAI does
            yield openai.sse({"error": {"message": str(e), "type": "server_error"}})
            return
        yield openai.sse(completion.chunk(finish=finish))
        if include_usage:
            yield openai.sse(completion.usage_chunk(openai.usage(prompt_tokens, n)))
        yield openai.DONE
    finally:
        cancel.set()  # a client that went away stops its generation at the next token


@router.post("/v1/classify")
async def classify(request: Request, file: UploadFile = File(...), model: str = Form(...), top_k: int = Form(5)):
    pool, limit = request.app.state.pool, request.app.state.settings.max_upload_bytes
    pool.check(model)
    if not 1 <= top_k <= MAX_TOP_K:
        raise ApiError(400, f"top_k must be between 1 and {MAX_TOP_K}.", param="top_k")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"The image is larger than {limit} bytes.", "request_too_large")
    image32 = vision.to_cifar_input(vision.read_image(data))

    def job():
        deployed = pool.get(model)
        if deployed.tokenizer is not None:
            raise ApiError(400, f"{model} is a language model; use /v1/chat/completions.", param="model")
        return vision.classify(deployed.model, image32)

    result = await _run(request, job)
    return {"object": "classification", "model": model, "latency_ms": result.latency_ms,
            "predictions": [{"label": c, "probability": p} for c, p in result.top_k(top_k)]}
