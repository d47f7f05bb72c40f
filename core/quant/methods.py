"""Quantization methods: round-to-nearest, and the calibrated ones (GPTQ, AWQ, mixed precision, and DWQ, which
distils any of the others).

Every method ends in the same packed layout (core.quant.layers), so size, speed, export and the de-quantized
evaluation path treat all of them alike."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import mlx.nn as nn

from core.errors import LabError
from core.quant.awq import awq_lm
from core.quant.calibration import Calibration, calibration_inputs, calibration_tokens, default_size
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


def apply_method(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, method: str, keep: set[str],
                 calibration: Calibration, progress=None) -> QuantReport:
    """Quantize `model` in place with `method`; returns what happened to each layer."""
    step = progress or (lambda fraction, message: None)
    if method == "rtn" or spec.full_precision:
        return quantize_model(model, spec, keep)
    if method == "gptq":
        gptq = gptq_resnet if kind == "vision" else gptq_lm
        packed = gptq(model, spec, keep, calibration_inputs(kind, tokenizer, calibration), step)
        return quantize_model(model, spec, keep, packed=packed)
    if method == "awq":
        awq_lm(model, spec, calibration_tokens(tokenizer, calibration.size, calibration.ctx), step)
        return quantize_model(model, spec, keep)
    if method == "mixed":
        return quantize_mixed(model, tokenizer, kind, spec, keep, calibration, step)
    if method == "dwq":
        return _distilled(model, tokenizer, kind, spec, keep, calibration, step)
    raise LabError(f"Unknown method {method!r}; available: {', '.join(METHODS)}.")


def _distilled(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, keep: set[str], calibration: Calibration,
               step) -> QuantReport:
    """DWQ: the starting method's model (with that method's own calibration), then its scales, biases and norms
    distilled from the full-precision model on calibration.size items (core.quant.dwq)."""
    teacher = copy.deepcopy(model)
    start = replace(calibration, size=default_size(calibration.dwq_from, kind), dwq=None)
    report = apply_method(model, tokenizer, kind, spec, calibration.dwq_from, keep, start,
                          progress=lambda f, m: step(0.2 * f, f"{calibration.dwq_from}: {m}"))
    inputs = calibration_inputs(kind, tokenizer, calibration)
    report.distillation = distill(model, teacher, inputs, calibration.dwq,
                                  Path(calibration.checkpoint) if calibration.checkpoint else None,
                                  progress=lambda f, m: step(0.2 + 0.8 * f, m))
    return report
