"""Models as deployed, named with their quantization ('resnet20@q4g32', 'smollm2-135m-instruct@q8',
'...@mxfp4'): quantized fresh through core.quant.recipe, for the playground and the HTTP API."""
from __future__ import annotations

from dataclasses import dataclass

import mlx.nn as nn

from core.errors import LabError
from core.models import registry
from core.quant.config import QuantConfig
from core.quant.layers import QuantReport, bits_per_weight, size_bytes
from core.quant.recipe import quantize
from core.quant.spec import QuantSpec


def parse_model_id(model_id: str) -> tuple[registry.ModelInfo, QuantSpec]:
    """'name@tag' -> (registry entry, spec). Registry names only: an id never becomes a path or a hub download."""
    name, _, tag = model_id.partition("@")
    if name not in registry.REGISTRY:
        raise LabError(f"Unknown model {name!r}; available: {', '.join(registry.REGISTRY)}.")
    return registry.resolve(name), QuantSpec.from_tag(tag)


@dataclass
class Deployed:
    info: registry.ModelInfo
    spec: QuantSpec
    model: nn.Module
    tokenizer: object | None
    report: QuantReport
    size_bytes: int
    bits_per_weight: float
    dtype: str  # what it computes in


def load_deployed(info: registry.ModelInfo, spec: QuantSpec, dtype: str | None = None) -> Deployed:
    """A fresh model quantized to `spec` by round-to-nearest (never a shared one: quantization is in place),
    computing in `dtype` (default: this backend's, core.runtime.default_dtype)."""
    q = quantize(QuantConfig(info.name, bits=spec.bits, group_size=spec.group_size, mode=spec.mode,
                             quantizer=spec.quantizer, dtype=dtype))
    model = q.deploy()
    return Deployed(info, spec, model, q.tokenizer, q.report, size_bytes(model), bits_per_weight(model),
                    q.config.dtype)
