"""Trying a model by hand: classify an uploaded image, chat with the LLM (streamed). Inputs are checked first."""
from __future__ import annotations

import io
import os
import time
import warnings
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core import resnet
from core.data import CIFAR10_CLASSES
from core.errors import LabError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_MEGAPIXELS = 40
MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 1024
MAX_NEW_TOKENS = 512


# ---- images --------------------------------------------------------------------------------------------------------

def read_image(data: bytes) -> Image.Image:
    """A PNG or JPEG of any size and mode as RGB, or a LabError saying what is wrong with the file."""
    if not data:
        raise LabError("The file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise LabError(f"The file is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ("PNG", "JPEG"):
                raise LabError(f"This is a {image.format or 'unknown'} file; upload a PNG or JPEG image.")
            width, height = image.size  # read from the header, before decoding any pixels
            if width * height > MAX_MEGAPIXELS * 1e6:
                raise LabError(f"The image is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
                               f"the limit is {MAX_MEGAPIXELS} megapixels.")
            image.load()
    except LabError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError, EOFError) as cause:
        raise LabError(f"This file is not a readable PNG or JPEG image ({type(cause).__name__}).") from cause
    return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float greyscale: stretch to 8 bits
        a = np.asarray(image, dtype=np.float64)
        span = a.max() - a.min()
        a = (a - a.min()) / span * 255 if span > 0 else np.zeros_like(a)
        image = Image.fromarray(a.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def to_cifar_input(image: Image.Image) -> np.ndarray:
    """Centre square crop, resized to 32x32 (as CIFAR-10 images are): uint8 [32, 32, 3]."""
    side = min(image.size)
    square = ImageOps.fit(image, (side, side), method=Image.Resampling.BICUBIC)
    return np.asarray(square.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.uint8)


@dataclass
class Classification:
    top5: list[tuple[str, float]]  # (class name, probability)
    latency_ms: float


def classify(model, image32: np.ndarray) -> Classification:
    x = resnet.preprocess(image32[None])
    mx.eval(model(x))  # warm-up: the first call of a fresh model sets up its kernels
    start = time.perf_counter()
    probs = mx.softmax(model(x).astype(mx.float32), axis=-1)
    mx.eval(probs)
    latency = (time.perf_counter() - start) * 1e3
    p = np.array(probs[0])
    order = np.argsort(-p)[:5]
    return Classification([(CIFAR10_CLASSES[i], float(p[i])) for i in order], latency)


# ---- chat ---------------------------------------------------------------------------------------------------------

def check_generation_settings(max_tokens: int, temperature: float, top_p: float) -> None:
    if not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise LabError(f"max tokens must be between 1 and {MAX_NEW_TOKENS}, not {max_tokens}.")
    if not 0.0 <= temperature <= 2.0:
        raise LabError(f"temperature must be between 0 and 2, not {temperature}.")
    if not 0.0 <= top_p <= 1.0:
        raise LabError(f"top_p must be between 0 and 1, not {top_p}.")


def chat_prompt_tokens(tokenizer, messages: list[dict]) -> list[int]:
    """The chat template applied to the messages, with the assistant turn opened; checked for size."""
    if not messages or not all(isinstance(m.get("content"), str) for m in messages):
        raise LabError("A prompt needs at least one message with text.")
    _check_text(messages[-1]["content"], sum(len(m["content"]) for m in messages))
    if getattr(tokenizer, "chat_template", None):
        tokens = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    else:
        tokens = tokenizer.encode("\n".join(m["content"] for m in messages))
    return _checked_length(tokens)


def completion_prompt_tokens(tokenizer, text: str) -> list[int]:
    """A plain-text prompt as tokens, checked like a chat prompt."""
    _check_text(text, len(text))
    return _checked_length(tokenizer.encode(text))


def _check_text(last: str, chars: int) -> None:
    if not last.strip():
        raise LabError("The prompt is empty; type something to send.")
    if chars > MAX_PROMPT_CHARS:
        raise LabError(f"The prompt is {chars} characters long; the limit is {MAX_PROMPT_CHARS}.")


def _checked_length(tokens) -> list[int]:
    if len(tokens) > MAX_PROMPT_TOKENS:
        raise LabError(f"The prompt is {len(tokens)} tokens long; the limit is {MAX_PROMPT_TOKENS}.")
    return list(tokens)


@dataclass
class Chunk:
    text: str  # new text since the previous chunk
    tokens: int  # generated so far
    tokens_per_s: float
    prompt_tokens_per_s: float
    peak_memory_bytes: int
    finish_reason: str | None


DECODE_ENGINES = ("auto", "mlx-lm", "compiled")


def decode_engine(model) -> str:
    """'mlx-lm' (its own loop) or 'compiled' (core.fastdecode), as MLXQ_DECODE_ENGINE says; 'auto' is mlx-lm:
    the compiled step measured 0.44-0.86x of it on the H200 and ~0.9x on the Linux CPU (docs/bench)."""
    from core import fastdecode

    choice = os.environ.get("MLXQ_DECODE_ENGINE", "auto")
    if choice not in DECODE_ENGINES:
        raise LabError(f"MLXQ_DECODE_ENGINE={choice!r}: choose one of {', '.join(DECODE_ENGINES)}.")
    if choice == "auto":
        choice = "mlx-lm"
    return choice if choice == "mlx-lm" or fastdecode.supports(model) else "mlx-lm"


def stream_chat(model, tokenizer, prompt_tokens: list[int], max_tokens: int = 128, temperature: float = 0.0,
                top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None) -> Iterator[Chunk]:
    """Generate one chunk per token with mlx-lm's loop or the compiled decode step (`decode_engine`), the same
    sampling either way; stops on EOS or a stop string."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from core import fastdecode

    check_generation_settings(max_tokens, temperature, top_p)
    if seed is not None:
        mx.random.seed(seed)
    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
    if decode_engine(model) == "compiled":
        responses = fastdecode.stream_generate(model, tokenizer, prompt_tokens, max_tokens, sampler)
    else:
        responses = stream_generate(model, tokenizer, prompt_tokens, max_tokens=max_tokens, sampler=sampler)
    text, held = "", ""
    for response in responses:
        held += response.text
        finish = response.finish_reason
        if stop:
            text_so_far = text + held
            hit = min((text_so_far.find(s) for s in stop if s in text_so_far), default=-1)
            if hit >= 0:
                yield Chunk(text_so_far[len(text):hit], response.generation_tokens, response.generation_tps,
                            response.prompt_tps, int(response.peak_memory * 1e9), "stop")
                return
            # hold back text that could be the start of a stop string
            keep = max((len(s) - 1 for s in stop), default=0)
            emit, held = (held[:-keep], held[-keep:]) if keep and finish is None else (held, "")
        else:
            emit, held = held, ""
        text += emit
        yield Chunk(emit, response.generation_tokens, response.generation_tps, response.prompt_tps,
                    int(response.peak_memory * 1e9), finish)
