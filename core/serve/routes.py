"""The small endpoints: health, metrics, the model list, and image classification (the vision lane). Chat and
text completions are in core.serve.completions. Handlers read the server's parts from `request.app.state`
(settings, engines, metrics; set by core.serve.app.create_app)."""
from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse

from core import runtime
from core.data import CIFAR10_CLASSES
from core.deploy import classify as vision
from core.deploy.vision_lane import VisionQueueFull
from core.serve.openai import ApiError

router = APIRouter()
MAX_TOP_K = len(CIFAR10_CLASSES)  # every class can be asked for


def busy(error: Exception, retry_after_s: int = 1) -> ApiError:
    """429 with Retry-After: the server is full right now, the request itself is fine."""
    return ApiError(429, str(error), "queue_full", kind="rate_limit_error",
                    headers={"Retry-After": str(retry_after_s)})


class PixelBudget:
    """Pixels being decoded at once, across requests: a request waits (up to `wait_s`) for its image's share,
    then is answered 429. One image alone may always take the whole budget."""

    def __init__(self, total: int, wait_s: float = 10.0):
        self.total, self.wait_s, self.used = total, wait_s, 0
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def held(self, pixels: int):
        share = min(max(pixels, 1), self.total)
        async with self._freed:
            try:
                await asyncio.wait_for(self._freed.wait_for(lambda: self.used + share <= self.total), self.wait_s)
            except asyncio.TimeoutError:
                raise busy(RuntimeError("Too many large images are being decoded right now; retry shortly."),
                           retry_after_s=2) from None
            self.used += share
        try:
            yield
        finally:
            async with self._freed:
                self.used -= share
                self._freed.notify_all()


@router.get("/health")
async def health(request: Request):
    engines = request.app.state.engines
    return {"status": "ok", "backend": runtime.backend(), "models_loaded": engines.pool.loaded(),
            "text_running": engines.text.stats.running, "text_waiting": engines.text.stats.waiting,
            "vision_waiting": engines.vision.waiting}


@router.get("/metrics")
async def prometheus(request: Request):
    return PlainTextResponse(request.app.state.metrics.render(request.app.state.engines),
                             media_type="text/plain; version=0.0.4")


def _model_card(pool, model_id: str) -> dict:
    """One model as listed, from what was known at start-up (nothing is loaded to list it): kind ('lm' or
    'vision'); method (rtn, gptq, awq, dwq, mixed; 'none' for full precision; 'unknown' for a folder the lab did
    not export); bits_per_weight (a registry id's from its quantization, scales and biases counted; a folder's as
    it stores the whole model: the export's record, or computed from its arrays' shapes; None if unknown); and
    source ('registry' or 'folder'; a folder's path is not shown)."""
    served = pool.describe(model_id)
    bpw = served.bits_per_weight
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "mlxq", "kind": served.kind,
            "method": served.method, "bits_per_weight": None if bpw is None else round(float(bpw), 4),
            "source": served.source}


@router.get("/v1/models")
async def list_models(request: Request):
    pool = request.app.state.engines.pool
    return {"object": "list", "data": [_model_card(pool, m) for m in pool.allowed]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    return _model_card(request.app.state.engines.pool, model_id)


@router.post("/v1/classify")
async def classify(request: Request, file: UploadFile = File(...), model: str = Form(...), top_k: int = Form(5)):
    engines, limit = request.app.state.engines, request.app.state.settings.max_upload_bytes
    if engines.pool.kind(model) != "vision":
        raise ApiError(400, f"{model} is a language model; use /v1/chat/completions.", param="model")
    if not 1 <= top_k <= MAX_TOP_K:
        raise ApiError(400, f"top_k must be between 1 and {MAX_TOP_K}.", param="top_k")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"The image is larger than {limit} bytes.", "request_too_large")
    # decoding and resizing are CPU work: off the event loop, so /health and streams never stall; the pixels
    # being decoded at once are bounded across requests, since a decoded image takes many times its file's size
    async with request.app.state.pixels.held(vision.pixel_count(data)):
        image32 = await asyncio.to_thread(lambda: vision.to_cifar_input(vision.read_image(data)))
    try:
        future = engines.vision.submit(model, image32)
    except VisionQueueFull as e:
        raise busy(e) from e
    result = await asyncio.wrap_future(future)
    return {"object": "classification", "model": model, "latency_ms": result.latency_ms,
            "predictions": [{"label": c, "probability": p} for c, p in result.top_k(top_k)]}
