"""OpenAI-compatible HTTP API for the quantized models: `python -m core serve`.

Endpoints: GET /health, GET /metrics (Prometheus), GET /v1/models, POST /v1/chat/completions,
POST /v1/completions (both streaming as server-sent events or not), POST /v1/classify (multipart image).
Models are named with their quantization ('smollm2-135m-instruct@q4g64', 'resnet20@q8'); only the ids given
at start-up are served, and an id is never used as a path."""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal, Union

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import playground, runtime
from core.deploy import parse_model_id
from core.errors import LabError
from core.inference import Cancelled, ModelPool, UnknownModel, Worker
from core.metrics import Metrics



def default_models() -> list[str]:
    """A few of each kind; the vision model is the project's own ResNet-20 where the data mirror is absent."""
    from core.models import default_vision_model

    vision = default_vision_model()
    return ["smollm2-135m-instruct@q4g64", "smollm2-135m-instruct@q8", "smollm2-135m-instruct@fp",
            f"{vision}@q8", f"{vision}@q4g32", f"{vision}@fp"]


@dataclass
class ServeSettings:
    models: list[str] = field(default_factory=default_models)
    api_key: str | None = None
    memory_budget_bytes: int = 2 * 1024**3
    max_json_bytes: int = 1024 * 1024
    max_upload_bytes: int = playground.MAX_UPLOAD_BYTES
    max_tokens_limit: int = playground.MAX_NEW_TOKENS
    default_max_tokens: int = 128


# ---- request bodies ------------------------------------------------------------------------------------------------

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request")


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


# ---- errors --------------------------------------------------------------------------------------------------------

def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


# ---- the app -------------------------------------------------------------------------------------------------------

def create_app(settings: ServeSettings) -> FastAPI:
    for model_id in settings.models:  # a bad id at start-up is the operator's error: fail before serving
        parse_model_id(model_id)
    app = FastAPI(title="MLX Quant Lab API", version="1")
    pool, worker, metrics = ModelPool(settings.models, settings.memory_budget_bytes), Worker(), Metrics()
    app.state.pool, app.state.worker, app.state.metrics = pool, worker, metrics

    async def run(job):
        return await asyncio.wrap_future(worker.submit(job))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        route = request.scope.get("path", "")
        endpoint = route if route in KNOWN_PATHS else "other"
        try:
            if settings.api_key and (route.startswith("/v1/") or route == "/metrics"):
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                    raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                   "invalid_api_key")
            limit = settings.max_upload_bytes if route == "/v1/classify" else settings.max_json_bytes
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                raise ApiError(413, f"The request body is larger than {limit} bytes.", "request_too_large")
            response = await call_next(request)
        except ApiError as e:
            response = error_response(e.status, e.message, code=e.code, param=e.param)
        except Exception as e:  # nothing a request does may take the server down
            response = error_response(500, f"Internal error ({type(e).__name__}); the server keeps running.",
                                      "server_error")
        metrics.observe(endpoint, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return error_response(e.status, e.message, code=e.code, param=e.param)

    @app.exception_handler(UnknownModel)
    async def unknown_model(_request, e: UnknownModel):
        return error_response(404, str(e), code="model_not_found", param="model")

    @app.exception_handler(LabError)
    async def lab_error(_request, e: LabError):
        return error_response(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, "The request body is not valid JSON.", code="invalid_json")
        return error_response(400, f"Invalid request: {where or 'body'}: {first.get('msg', 'invalid value')}.",
                              param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):
        return error_response(500, f"Internal error ({type(e).__name__}); the server keeps running.", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "backend": runtime.backend(), "models_loaded": pool.loaded(),
                "queue_depth": worker.pending()}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(len(pool.loaded()), worker.pending()),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "mlxq",
                                            "kind": _kind(m)} for m in pool.allowed]}

    def sampling(body: _Sampling) -> dict:
        max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
        if not 1 <= max_tokens <= settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens must be between 1 and {settings.max_tokens_limit}, not {max_tokens}.",
                           param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop takes at most 4 non-empty strings.", param="stop")
        return dict(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop)

    def lm(model_id: str):
        deployed = pool.get(pool.check(model_id))
        if deployed.tokenizer is None:
            raise ApiError(400, f"{model_id} is an image classifier; use /v1/classify.", param="model")
        return deployed

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        params = sampling(body)
        pool.check(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]

        def prepare():
            deployed = lm(body.model)
            return deployed, playground.chat_prompt_tokens(deployed.tokenizer, messages)

        deployed, prompt = await run(prepare)
        return await respond(request, body, deployed, prompt, params, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        params = sampling(body)
        pool.check(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt must be one string.", param="prompt")

        def prepare():
            deployed = lm(body.model)
            return deployed, playground.completion_prompt_tokens(deployed.tokenizer, prompts[0])

        deployed, prompt = await run(prepare)
        return await respond(request, body, deployed, prompt, params, chat=False)

    async def respond(request: Request, body: _Sampling, deployed, prompt: list[int], params: dict, chat: bool):
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        cancel = threading.Event()

        def generate(on_chunk=None):
            text, last = [], None
            for chunk in playground.stream_chat(deployed.model, deployed.tokenizer, prompt, **params):
                if cancel.is_set():
                    metrics.add_cancelled()
                    raise Cancelled()
                text.append(chunk.text)
                last = chunk
                if on_chunk:
                    on_chunk(chunk)
            metrics.add_tokens(len(prompt), last.tokens if last else 0)
            return "".join(text), (last.finish_reason if last else "length") or "length", last.tokens if last else 0

        def usage(completion: int) -> dict:
            return {"prompt_tokens": len(prompt), "completion_tokens": completion,
                    "total_tokens": len(prompt) + completion}

        if not body.stream:
            text, finish, n = await run(generate)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                      if chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
            return {"id": rid, "object": obj, "created": created, "model": body.model, "choices": [choice],
                    "usage": usage(n)}

        loop, chunks = asyncio.get_running_loop(), asyncio.Queue()
        future = worker.submit(lambda: generate(lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c)))
        future.add_done_callback(lambda _f: loop.call_soon_threadsafe(chunks.put_nowait, None))

        def event(delta_or_text, finish=None, extra=None) -> str:
            choice = ({"index": 0, "delta": delta_or_text, "finish_reason": finish} if chat else
                      {"index": 0, "text": delta_or_text, "finish_reason": finish, "logprobs": None})
            payload = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                       "model": body.model, "choices": [choice], **(extra or {})}
            return f"data: {json.dumps(payload)}\n\n"

        async def sse():
            try:
                if chat:
                    yield event({"role": "assistant", "content": ""})
                while (chunk := await chunks.get()) is not None:
                    if await request.is_disconnected():
                        cancel.set()
                        return
                    if chunk.text:
                        yield event({"content": chunk.text} if chat else chunk.text)
                try:
                    _text, finish, n = future.result()
                except Exception as e:  # the stream has started: report in-band, as OpenAI does
                    yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                    return
                yield event({} if chat else "", finish)
                if body.stream_options and body.stream_options.include_usage:
                    yield f"data: {json.dumps({'id': rid, 'object': obj + ('.chunk' if chat else ''), 'created': created, 'model': body.model, 'choices': [], 'usage': usage(n)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # a client that went away stops its generation at the next token

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/classify")
    async def classify(file: UploadFile = File(...), model: str = Form(...), top_k: int = Form(5)):
        pool.check(model)
        if not 1 <= top_k <= 10:
            raise ApiError(400, "top_k must be between 1 and 10.", param="top_k")
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"The image is larger than {settings.max_upload_bytes} bytes.", "request_too_large")
        image32 = playground.to_cifar_input(playground.read_image(data))

        def job():
            deployed = pool.get(model)
            if deployed.tokenizer is not None:
                raise ApiError(400, f"{model} is a language model; use /v1/chat/completions.", param="model")
            return playground.classify(deployed.model, image32)

        result = await run(job)
        return {"object": "classification", "model": model, "latency_ms": result.latency_ms,
                "predictions": [{"label": c, "probability": p} for c, p in result.top5[:top_k]]}

    return app


KNOWN_PATHS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify"}


def _kind(model_id: str) -> str:
    from core.models import REGISTRY

    return REGISTRY[model_id.partition("@")[0]].kind


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_keep_alive=5)
