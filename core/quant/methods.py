"""Quantization methods: round-to-nearest, and the calibrated ones (GPTQ, AWQ, mixed precision, and DWQ, which
distils any of the others).

Every method ends in the same packed layout (core.quant.layers), so size, speed, export and the de-quantized
evaluation path treat all of them alike."""
from __future__ import annotations

import copy

import mlx.nn as nn

from core.errors import LabError
from core.quant.awq import awq_lm
from core.quant.calibration import (AwqSettings, Distillation, GptqSettings, MethodSettings, MixedSettings, RtnSettings,
                                    calibration_inputs, calibration_tokens)
from core.quant.dwq import distill
from core.quant.gptq import gptq_lm, gptq_resnet
from core.quant.layers import QuantReport, quantize_model
from core.quant.mixed import quantize_mixed
from core.quant.spec import QuantSpec

METHODS = ("rtn", "gptq", "awq", "mixed", "dwq")
DWQ_STARTS = ("rtn", "gptq", "awq", "mixed")
MIXED_LAYERS = ("rtn", "gptq", "awq")  # how mixed precision quantizes each layer at the width it was given
LM_ONLY = ("awq",)  # AWQ moves scales into the norms before linear layers: language models only


def methods_for(kind: str) -> tuple[str, ...]:
    """The methods a model of `kind` ('vision' or 'lm') can be quantized with."""
    return tuple(m for m in METHODS if kind == "lm" or m not in LM_ONLY)


def check_method(method: str, kind: str, spec: QuantSpec) -> None:
    """A LabError when `method` cannot quantize a model of `kind` to `spec` (full precision takes any)."""
    if spec.full_precision:
        return
    if method not in METHODS:
        raise LabError(f"Unknown method {method!r}; available: {', '.join(METHODS)}.")
    if method == "rtn":
        return
    if spec.mode != "affine":
        raise LabError(f"Method {method} works on affine quantization; {spec.mode} is round-to-nearest only.")
    if method not in methods_for(kind):
        raise LabError("AWQ is for language models; for ResNets use gptq (with BatchNorm bias correction).")
    if spec.quantizer != "minmax":
        raise LabError(f"Method {method} uses this project's min-max grid; drop --q-quantizer {spec.quantizer}.")


def apply_method(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, keep: set[str], settings: MethodSettings,
                 progress=None) -> QuantReport:
    """Quantize `model` in place with the method `settings` are for (core.quant.calibration); returns what happened
    to each layer."""
    step = progress or (lambda fraction, message: None)
    if isinstance(settings, RtnSettings) or spec.full_precision:
        return quantize_model(model, spec, keep)
    if isinstance(settings, GptqSettings):
        gptq = gptq_resnet if kind == "vision" else gptq_lm
        packed = gptq(model, spec, keep, calibration_inputs(kind, tokenizer, settings.data), step)
        return quantize_model(model, spec, keep, packed=packed)
    if isinstance(settings, AwqSettings):
        awq_lm(model, spec, calibration_tokens(tokenizer, settings.data.size, settings.data.ctx), step)
        return quantize_model(model, spec, keep)
    if isinstance(settings, MixedSettings):
        return quantize_mixed(model, tokenizer, kind, spec, keep, settings, step)
    if isinstance(settings, Distillation):
        return _distilled(model, tokenizer, kind, spec, keep, settings, step)
    raise LabError(f"No method takes {settings!r}; available: {', '.join(METHODS)}.")


def _distilled(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, keep: set[str], settings: Distillation,
               step) -> QuantReport:
    """DWQ: the starting method's model (with that method's own settings), then its scales, biases and norms
    distilled from the full-precision model on settings.data (core.quant.dwq)."""
    teacher = copy.deepcopy(model)
    start = settings.start.method
    report = apply_method(model, tokenizer, kind, spec, keep, settings.start,
                          progress=lambda f, m: step(0.2 * f, f"{start}: {m}"))
    inputs = calibration_inputs(kind, tokenizer, settings.data)
    report.distillation = distill(model, teacher, inputs, settings.training, settings.checkpoint,
                                  progress=lambda f, m: step(0.2 + 0.8 * f, m))
    return report
