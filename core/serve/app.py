"""OpenAI-compatible HTTP API for the quantized models: `python -m core serve`.

Endpoints: GET /health, GET /metrics (Prometheus), GET /v1/models and /v1/models/{id} (core.serve.routes);
POST /v1/chat/completions and /v1/completions, whole or streamed (core.serve.completions); POST /v1/classify
(multipart image, core.serve.routes). Models are registry ids named with their quantization
('smollm2-135m-instruct@q4g64', 'resnet20@q8') or NAME=PATH folders (a lab export or any mlx-lm model folder, served
holding exactly its arrays); only the entries given at start-up are served, each checked then, and a request's model
name is only looked up among them, never used as a path. This module wires the parts together: settings, the engines
(core.deploy.engines), metrics, the request guard and error handlers."""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.deploy.classify import MAX_MEGAPIXELS, MAX_UPLOAD_BYTES
from core.deploy.constrained import IndexCache
from core.deploy.generate import MAX_NEW_TOKENS
from core.errors import LabError
from core.models.registry import default_vision_model
from core import runtime
from core.runtime import resolve_dtype
from core.serve import completions, connections, routes
from core.deploy.engines import Engines, ModelPool, UnknownModel
from core.serve.metrics import Metrics
from core.serve.openai import ApiError, error_body

log = logging.getLogger("mlxq.serve")
JSON_ROUTES = {"/v1/chat/completions", "/v1/completions"}
KNOWN_PATHS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify"}


def default_models() -> list[str]:
    """A few of each kind; the vision model is the project's own ResNet-20 where the data mirror is absent."""
    vision = default_vision_model()
    return ["smollm2-135m-instruct@q4g64", "smollm2-135m-instruct@q8", "smollm2-135m-instruct@fp",
            f"{vision}@q8", f"{vision}@q4g32", f"{vision}@fp"]


@dataclass
class ServeSettings:
    models: list[str] = field(default_factory=default_models)
    api_key: str | None = None
    memory_budget_bytes: int = 2 * 1024**3
    max_json_bytes: int = 1024 * 1024
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_tokens_limit: int = MAX_NEW_TOKENS
    default_max_tokens: int = 128
    dtype: str | None = None  # compute dtype of every served model (default: the backend's)
    max_batch: int = 16  # sequences decoded together by the text engine
    max_queue: int = 64  # text requests waiting beyond the running batch; more get 429
    max_vision_queue: int = 256  # images waiting for the vision lane; more get 429
    request_timeout_s: float | None = None  # per-request deadline: generation stops, the answer is 408
    allow_special_tokens: bool = False  # parse control tokens in user text (off: typed text stays text)
    max_decoding_megapixels: int = 2 * MAX_MEGAPIXELS  # images decoded at once, all requests together
    max_prompt_tokens: int | None = None  # default: each model's context, within what the memory budget holds
    body_timeout_s: float = 30.0  # a body slower than this (or shorter than its Content-Length) gets 408
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers by then is closed
    keep_alive_s: int = 5  # an idle connection between requests is closed after this
    shutdown_grace_s: int = 5  # on SIGTERM, in-flight requests get this long before the process exits


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code, param), status, headers=headers)


def api_error_response(e: ApiError) -> JSONResponse:
    return error_response(e.status, e.message, e.kind, e.code, e.param, e.headers)


def _internal(e: BaseException) -> JSONResponse:
    log.error("internal error:\n%s", "".join(traceback.format_exception(e)))
    return error_response(500, f"Internal error ({type(e).__name__}); the server keeps running and logged it.",
                          "server_error")


def create_app(settings: ServeSettings) -> FastAPI:
    resolve_dtype(settings.dtype)  # a bad dtype (or MLXQ_DTYPE) fails here, not on the first request
    # every entry checked here (registry ids parsed, folders' metadata and structure read, no weights): a bad one is
    # the operator's error, one LabError before serving
    pool = ModelPool(settings.models, settings.memory_budget_bytes, settings.dtype)
    engines = Engines.start(pool, settings.max_batch, settings.max_queue, settings.max_vision_queue)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        engines.stop()

    app = FastAPI(title="MLX Quant Lab API", version="1", lifespan=lifespan)
    app.state.settings, app.state.engines, app.state.metrics = settings, engines, Metrics()
    app.state.token_names = {}
    app.state.json_indexes = IndexCache()
    app.state.pixels = routes.PixelBudget(settings.max_decoding_megapixels * 10**6)
    _add_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(completions.router)
    app.add_middleware(Guard, settings=settings, metrics=app.state.metrics)
    return app


class Guard:
    """Every request, as plain ASGI: the API key (on /v1/* and /metrics), the body read whole within its limit
    whatever the transfer encoding (a chunked body has no Content-Length), anything unexpected answered as a
    JSON 500 and logged, and every request counted."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, route = time.perf_counter(), scope.get("path", "")
        status = {"code": 500, "started": False}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            self._check_key(route, scope)
            body = await asyncio.wait_for(self._read_body(route, scope, receive), self.settings.body_timeout_s)
            if route in JSON_ROUTES:
                scope = _as_json(scope)
            await self.app(scope, _replay(body, receive), counted_send)
        except ApiError as e:
            await self._answer(api_error_response(e), status, scope, receive, counted_send)
        except asyncio.TimeoutError:
            await self._answer(error_response(408, f"The request body did not arrive within "
                                                   f"{self.settings.body_timeout_s:g} s.", code="body_timeout",
                                              kind="timeout_error", headers={"Connection": "close"}),
                               status, scope, receive, counted_send)
        except Exception as e:
            await self._answer(_internal(e), status, scope, receive, counted_send)
        label = route if route in KNOWN_PATHS else ("/v1/models/{id}" if route.startswith("/v1/models/") else "other")
        self.metrics.observe(label, status["code"], time.perf_counter() - start)

    @staticmethod
    async def _answer(response, status, scope, receive, send):
        if not status["started"]:  # once a stream has started, its errors are reported in-band
            await response(scope, receive, send)

    def _check_key(self, route: str, scope) -> None:
        if self.settings.api_key and (route.startswith("/v1/") or route == "/metrics"):
            scheme, _, given = dict(scope.get("headers") or []).get(b"authorization", b"").partition(b" ")
            # the scheme is case-insensitive (RFC 9110); the key is compared in constant time
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.settings.api_key.encode()):
                raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                               "invalid_api_key")

    async def _read_body(self, route: str, scope, receive) -> bytes:
        limit = self.settings.max_upload_bytes if route == "/v1/classify" else self.settings.max_json_bytes
        too_large = ApiError(413, f"The request body is larger than {limit} bytes.", "request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "The client went away before sending the whole body.", "client_gone")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _as_json(scope) -> dict:
    """The JSON routes read their body as JSON whatever Content-Type the client sent (curl -d sends a form type;
    OpenAI's API reads JSON regardless): a body that is not JSON is then refused as such."""
    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _replay(body: bytes, receive):
    """A receive that hands the app the body already read, then passes on what comes next (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return api_error_response(e)

    @app.exception_handler(UnknownModel)
    async def unknown_model(_request, e: UnknownModel):
        return error_response(404, str(e), code="model_not_found", param="model")

    @app.exception_handler(LabError)
    async def lab_error(_request, e: LabError):
        return error_response(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, e: RequestValidationError):
        return _validation_error(e.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        if isinstance(e.__cause__, RecursionError):
            return error_response(400, "The request body is nested too deeply.", code="invalid_json")
        return error_response(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(RecursionError)
    async def too_deep(_request, _e: RecursionError):
        return error_response(400, "The request body is nested too deeply.", code="invalid_json")

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):
        return _internal(e)


def _validation_error(errors: list) -> JSONResponse:
    """One message in words for the first problem: which field, and what is wrong with it."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    kind = first.get("type", "")
    if kind == "json_invalid":
        return error_response(400, "The request body is not valid JSON.", code="invalid_json")
    if kind == "extra_forbidden":
        return error_response(400, f"Unsupported field {where!r}: this server does not implement it, so it "
                                   "refuses it rather than ignore it.", code="unsupported_field", param=where)
    if kind == "model_attributes_type" and not where:
        return error_response(400, "The request body must be a JSON object.", code="invalid_body")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return error_response(400, f"Invalid request: {where or 'body'}: {message}.", param=where or None)


SERVER_HEAP_ARENAS = 2


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, banner: str | None = None) -> None:
    """Run the server; `banner` is printed (to stderr) once every model entry has been checked."""
    import sys

    import uvicorn

    runtime.bound_heap_arenas(SERVER_HEAP_ARENAS)  # before the server's threads start
    app = create_app(settings)
    if banner:
        print(banner, file=sys.stderr)
    protocol = connections.guarded_protocol(settings.header_timeout_s)
    # SIGTERM: no new connections, in-flight requests get `shutdown_grace_s` to finish, then the engines stop
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=settings.keep_alive_s,
                http=protocol or "auto", limit_concurrency=connections.connection_cap(
                    connections.raise_descriptor_limit()), timeout_graceful_shutdown=settings.shutdown_grace_s)
