"""The full-precision baseline of any model: the checkpoint as loaded, every quantized layer de-quantized, in
float32. Every quantization starts from it and every quality number is measured against it; the compute dtype
a model is deployed in is applied afterwards (core.quant.precision)."""
from __future__ import annotations

import mlx.core as mx

from core.models.registry import ModelInfo, load
from core.quant.layers import dequantize_model


def load_baseline(info: ModelInfo):
    """(model, tokenizer or None) in float32, fresh each call (quantization replaces layers in place)."""
    model, tokenizer = load(info)
    if info.kind == "lm":  # an already quantized mlx-lm checkpoint is de-quantized exactly, then cast
        dequantize_model(model, mx.float32)
        model.set_dtype(mx.float32)
        mx.eval(model.parameters())
    return model, tokenizer
