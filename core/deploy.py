"""Models as deployed: named with their quantization ('resnet20@q4g32', 'smollm2-135m-instruct@q8', '...@mxfp4'),
loaded fresh and quantized, for the playground and the HTTP API."""
from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.nn as nn

from core import models
from core.errors import LabError
from core.quantize import FLOAT_MODES, QuantReport, QuantSpec, bits_per_weight, quantize_model, size_bytes

_AFFINE_TAG = re.compile(r"^q(\d+)(?:g(\d+))?$")


def parse_spec(tag: str) -> QuantSpec:
    """'fp' / 'q8' / 'q4g32' / 'mxfp4' -> a validated QuantSpec."""
    tag = tag.strip().lower()
    if tag in ("", "fp", "fp32", "q16"):
        return QuantSpec().validated()
    if tag in FLOAT_MODES:
        return QuantSpec(FLOAT_MODES[tag][0], None, tag).validated()
    match = _AFFINE_TAG.match(tag)
    if not match:
        raise LabError(f"Unknown quantization {tag!r}: use fp, q<bits> or q<bits>g<group> (e.g. q4g64), "
                       f"or one of {', '.join(FLOAT_MODES)}.")
    bits, group = int(match[1]), int(match[2]) if match[2] else None
    return QuantSpec(bits, group).validated()


def parse_model_id(model_id: str, allow_paths: bool = False) -> tuple[models.ModelInfo, QuantSpec]:
    """'name@tag' -> (registry entry, spec). Only registry names unless allow_paths (never from the network)."""
    name, _, tag = model_id.partition("@")
    if not allow_paths and name not in models.REGISTRY:
        raise LabError(f"Unknown model {name!r}; available: {', '.join(models.REGISTRY)}.")
    return models.resolve(name), parse_spec(tag)


def model_id(name: str, spec: QuantSpec) -> str:
    return f"{name}@{spec.tag}"


@dataclass
class Deployed:
    info: models.ModelInfo
    spec: QuantSpec
    model: nn.Module
    tokenizer: object | None
    report: QuantReport
    size_bytes: int
    bits_per_weight: float

    @property
    def id(self) -> str:
        return model_id(self.info.name, self.spec)


def load_deployed(info: models.ModelInfo, spec: QuantSpec) -> Deployed:
    """A fresh model quantized to `spec` (never a shared one: quantization replaces layers in place)."""
    model, tokenizer = models.load(info)
    report = quantize_model(model, spec)
    model.eval()
    return Deployed(info, spec, model, tokenizer, report, size_bytes(model), bits_per_weight(model))
