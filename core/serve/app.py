"""OpenAI-compatible HTTP API for the quantized models: `python -m core serve`.

Endpoints (core.serve.routes): GET /health, GET /metrics (Prometheus), GET /v1/models, POST /v1/chat/completions,
POST /v1/completions (both streaming as server-sent events or not), POST /v1/classify (multipart image).
Models are named with their quantization ('smollm2-135m-instruct@q4g64', 'resnet20@q8'); only the ids given
at start-up are served, and an id is never used as a path. This module wires the parts together: settings,
the model pool and worker (core.serve.engine), metrics, the request guard and the error handlers."""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.deploy.classify import MAX_UPLOAD_BYTES
from core.deploy.generate import MAX_NEW_TOKENS
from core.deploy.ids import parse_model_id
from core.errors import LabError
from core.models.registry import default_vision_model
from core.runtime import resolve_dtype
from core.serve.engine import ModelPool, UnknownModel, Worker
from core.serve.metrics import Metrics
from core.serve.openai import ApiError, error_body
from core.serve.routes import router

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


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code, param), status)


def _internal(e: Exception) -> JSONResponse:
    return error_response(500, f"Internal error ({type(e).__name__}); the server keeps running.", "server_error")


def create_app(settings: ServeSettings) -> FastAPI:
    for model_id in settings.models:  # a bad id at start-up is the operator's error: fail before serving
        parse_model_id(model_id)
    resolve_dtype(settings.dtype)  # a bad dtype (or MLXQ_DTYPE) fails here, not on the first request
    app = FastAPI(title="MLX Quant Lab API", version="1")
    app.state.settings = settings
    app.state.pool = ModelPool(settings.models, settings.memory_budget_bytes, settings.dtype)
    app.state.worker, app.state.metrics = Worker(), Metrics()
    app.middleware("http")(_guard)
    _add_error_handlers(app)
    app.include_router(router)
    return app


def _check_request(request: Request, settings: ServeSettings) -> None:
    """The API key (on /v1/* and /metrics) and the declared body size, before the body is read."""
    route = request.scope.get("path", "")
    if settings.api_key and (route.startswith("/v1/") or route == "/metrics"):
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.", "invalid_api_key")
    limit = settings.max_upload_bytes if route == "/v1/classify" else settings.max_json_bytes
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, f"The request body is larger than {limit} bytes.", "request_too_large")


async def _guard(request: Request, call_next):
    """Every request: checked, answered (nothing a request does may take the server down), counted."""
    start = time.perf_counter()
    route = request.scope.get("path", "")
    try:
        _check_request(request, request.app.state.settings)
        response = await call_next(request)
    except ApiError as e:
        response = error_response(e.status, e.message, code=e.code, param=e.param)
    except Exception as e:
        response = _internal(e)
    request.app.state.metrics.observe(route if route in KNOWN_PATHS else "other", response.status_code,
                                      time.perf_counter() - start)
    return response


def _add_error_handlers(app: FastAPI) -> None:
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
        return _internal(e)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_keep_alive=5)
