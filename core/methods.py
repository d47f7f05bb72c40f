"""Quantization methods: round-to-nearest, and the calibrated ones (GPTQ, AWQ, mixed precision).

Calibration data is never a test set: CIFAR-10 train images for the ResNets, WikiText-2 validation text for
language models (core.data). Every method ends in the same packed layout (core.quantize), so size, speed,
export and the dequantized evaluation path treat all of them alike."""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core import data, resnet
from core.errors import LabError
from core.quantize import QuantReport, QuantSpec, quantize_model

METHODS = ("rtn", "gptq", "awq", "mixed")
DEFAULT_CALIBRATION = {"vision": 512, "lm": 32}  # images, or chunks of `ctx` tokens


@dataclass(frozen=True)
class Calibration:
    size: int  # images (vision) or chunks (lm)
    ctx: int = 512
    seed: int = 0
    target_bpw: float | None = None  # mixed precision's budget


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


def apply_method(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, method: str, keep: set[str],
                 calibration: Calibration, progress=None) -> QuantReport:
    """Quantize `model` in place with `method`; returns what happened to each layer."""
    step = progress or (lambda fraction, message: None)
    if method == "rtn" or spec.full_precision:
        return quantize_model(model, spec, keep)
    if method == "gptq":
        from core.gptq import gptq_lm, gptq_resnet

        if kind == "vision":
            packed = gptq_resnet(model, spec, keep, calibration_images(calibration.size, calibration.seed), step)
        else:
            packed = gptq_lm(model, spec, keep, calibration_tokens(tokenizer, calibration.size, calibration.ctx), step)
        return quantize_model(model, spec, keep, packed=packed)
    if method == "awq":
        from core.awq import awq_lm

        awq_lm(model, spec, calibration_tokens(tokenizer, calibration.size, calibration.ctx), step)
        return quantize_model(model, spec, keep)
    if method == "mixed":
        from core.sensitivity import quantize_mixed

        return quantize_mixed(model, tokenizer, kind, spec, keep, calibration, step)
    raise LabError(f"Unknown method {method!r}; available: {', '.join(METHODS)}.")
