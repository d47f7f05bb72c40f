"""What the calibrated methods take, as small frozen dataclasses: the calibration data itself (CalibrationData) and
each method's own settings (GptqSettings, AwqSettings, MixedSettings, Distillation; RtnSettings reads nothing).
core.quant.config.QuantConfig.method_settings builds them from a validated config; core.quant.methods.apply_method
hands each method what it uses and nothing else.

Calibration data is never a test set: CIFAR-10 *train* images for the ResNets, WikiText-2 *validation* text
for language models. Every default size lives here; the CLI, the pipeline and the dashboard ask `default_size`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mlx.core as mx
import numpy as np

from core import data
from core.errors import LabError
from core.models import resnet
from core.quant.dwq import DwqSettings

# Images, or chunks of `ctx` tokens. The per-layer measurements (`mixed`, and the sensitivity table it is built
# from) quantize every layer at every width, so their defaults are what a 2-core CPU affords; give them more on
# a GPU. Every other use (GPTQ, AWQ, the ranges of simulated activations) takes the larger default.
_DEFAULT_SIZES = {"vision": 512, "lm": 32}
_PER_LAYER_SIZES = {"vision": 256, "lm": 2}
PER_LAYER = ("mixed", "sensitivity")
# Distillation trains on more: CIFAR-10 train images, or WikiText-2 validation chunks (a few held out for its curve).
_DWQ_SIZES = {"vision": 4096, "lm": 64}


@dataclass(frozen=True)
class CalibrationData:
    """`size` CIFAR-10 train images, class-stratified with `seed` (vision), or `size` chunks of `ctx` WikiText-2
    validation tokens, evenly spread (language models)."""

    size: int
    ctx: int = 512
    seed: int = 0


@dataclass(frozen=True)
class RtnSettings:
    """Round to nearest (and full precision): nothing to calibrate."""

    method: ClassVar[str] = "rtn"


@dataclass(frozen=True)
class GptqSettings:
    method: ClassVar[str] = "gptq"
    data: CalibrationData


@dataclass(frozen=True)
class AwqSettings:
    method: ClassVar[str] = "awq"
    data: CalibrationData  # chunks of tokens: AWQ is for language models


@dataclass(frozen=True)
class MixedSettings:
    """Mixed precision: per-layer sensitivities measured on `data`, one width per layer chosen under the
    bits-per-weight budget `target_bpw`, then each layer quantized at its width by `layers` (round to nearest, or
    GPTQ or AWQ with their own data)."""

    method: ClassVar[str] = "mixed"
    data: CalibrationData
    target_bpw: float
    layers: RtnSettings | GptqSettings | AwqSettings = RtnSettings()


@dataclass(frozen=True)
class Distillation:
    """DWQ: the `start` method's model, then its scales, biases and norms distilled from the full-precision model
    on `data` (core.quant.dwq, with `training`), resumable from `checkpoint`."""

    method: ClassVar[str] = "dwq"
    start: RtnSettings | GptqSettings | AwqSettings | MixedSettings
    data: CalibrationData
    training: DwqSettings
    checkpoint: Path | None = None


MethodSettings = RtnSettings | GptqSettings | AwqSettings | MixedSettings | Distillation


def default_size(method: str, kind: str) -> int:
    """How much calibration data `method` ('rtn' with simulated activations, 'gptq', 'awq', 'mixed' or
    'sensitivity') takes for a model of `kind` ('vision' or 'lm') unless told otherwise."""
    if method == "dwq":
        return _DWQ_SIZES[kind]
    return (_PER_LAYER_SIZES if method in PER_LAYER else _DEFAULT_SIZES)[kind]


def calibration_images(n: int, seed: int = 0) -> mx.array:
    """`n` class-stratified CIFAR-10 *train* images, preprocessed as the models expect."""
    images, labels = data.load_cifar10("train")
    return resnet.preprocess(images[data.stratified_indices(labels, n, seed)])


def calibration_tokens(tokenizer, n: int, ctx: int) -> mx.array:
    """`n` chunks of `ctx` tokens evenly spread over WikiText-2 *validation*."""
    tokens = np.asarray(tokenizer.encode(data.load_wikitext2_calibration(), add_special_tokens=False), np.int32)
    chunks = len(tokens) // ctx
    if chunks == 0:
        raise LabError(f"The calibration text has fewer than {ctx} tokens.")
    picked = data.spread_indices(chunks, n)
    return mx.array(tokens[: chunks * ctx].reshape(chunks, ctx)[picked])


def calibration_inputs(kind: str, tokenizer, calibration: CalibrationData) -> mx.array:
    if kind == "vision":
        return calibration_images(calibration.size, calibration.seed)
    return calibration_tokens(tokenizer, calibration.size, calibration.ctx)
