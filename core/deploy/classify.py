"""Classifying an image with a deployed vision model: any PNG or JPEG, checked first, as a CIFAR-10 input."""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.data import CIFAR10_CLASSES
from core.errors import LabError
from core.models import resnet
from core.quant.precision import activation_dtype

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_MEGAPIXELS = 40


def read_image(data: bytes) -> Image.Image:
    """A PNG or JPEG of any size and mode as RGB, or a LabError saying in words what is wrong with the file."""
    if not data:
        raise LabError("The file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise LabError(f"The file is too large: {len(data) / 2**20:.1f} MB; the limit is "
                       f"{MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            # Pillow warns from about 89 megapixels; the pixel check below is stricter and names the size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_header(image)
            image.load()
    except LabError:
        raise
    except Image.DecompressionBombError as cause:  # raised by Image.open itself, beyond twice Pillow's limit
        raise LabError(f"The image is too large: over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels; "
                       f"the limit is {MAX_MEGAPIXELS} megapixels.") from cause
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as cause:
        raise LabError("This file is not a readable PNG or JPEG image: it may be damaged, cut short, or another "
                       "kind of file.") from cause
    return _to_rgb(ImageOps.exif_transpose(image))


def pixel_count(data: bytes) -> int:
    """Width x height from the file's header (nothing decoded); 0 where the header cannot be read, which
    read_image then reports in words."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size
        return width * height
    except Exception:  # any unreadable header: read_image says what is wrong
        return 0


def _check_header(image: Image.Image) -> None:
    """Format and size from the header, before any pixel is decoded."""
    if image.format not in ("PNG", "JPEG", "MPO"):  # MPO: a JPEG with extra pictures, as phone cameras write
        raise LabError(f"This is a {image.format or 'unknown'} file; upload a PNG or JPEG image.")
    width, height = image.size
    if width * height > MAX_MEGAPIXELS * 1e6:
        raise LabError(f"The image is too large: {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
                       f"the limit is {MAX_MEGAPIXELS} megapixels.")


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
    top: list[tuple[str, float]]  # (class name, probability), most probable first: every class
    latency_ms: float

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        return self.top[:k]


def classify(model, image32: np.ndarray, warm: bool = True) -> Classification:
    """Probabilities of every class for one 32x32 image, most probable first, and the latency of the call.
    `warm` runs the model once first (the first call of a fresh model sets up its kernels)."""
    return classify_batch(model, image32[None], warm)[0]


def classify_batch(model, images32: np.ndarray, warm: bool = False) -> list[Classification]:
    """One forward pass for a batch of 32x32 images [N, 32, 32, 3]; each result carries the batch's latency."""
    x = resnet.preprocess(images32).astype(activation_dtype(model))
    if warm:
        mx.eval(model(x))
    start = time.perf_counter()
    probs = mx.softmax(model(x).astype(mx.float32), axis=-1)
    mx.eval(probs)
    latency = (time.perf_counter() - start) * 1e3
    results = []
    for p in np.array(probs):
        order = np.argsort(-p)
        results.append(Classification([(CIFAR10_CLASSES[i], float(p[i])) for i in order], latency))
    return results
