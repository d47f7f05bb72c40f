"""The full-precision baseline of any model: the checkpoint as loaded, every quantized layer de-quantized, in
float32. Every quantization starts from it and every quality number is measured against it; the compute dtype
a model is deployed in is applied afterwards (core.quant.precision).

A language model's baseline is never whole in memory (`LazyBaseline`): it is read from its checkpoint one piece
(embedding, block, norm, head) at a time, so a model larger than the machine's memory in float32 can still be
quantized and measured against. Vision models are small and load whole (`load_baseline`)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from core.models.checkpoint import LazyCheckpoint
from core.models.lm import Chain
from core.models.registry import ModelInfo, lm_path, load
from core.quant.layers import dequantize_model, float_copy


def load_baseline(info: ModelInfo):
    """(model, tokenizer or None) in float32, whole and fresh each call (quantization replaces layers in place)."""
    model, tokenizer = load(info)
    if info.kind == "lm":  # an already quantized mlx-lm checkpoint is de-quantized exactly, then cast
        dequantize_model(model, mx.float32)
        model.set_dtype(mx.float32)
        mx.eval(model.parameters())
    return model, tokenizer


class LazyBaseline:
    """A language model's full-precision baseline, piece by piece from its checkpoint."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.checkpoint = LazyCheckpoint(lm_path(info))
        self.chain = Chain(self.checkpoint.model())  # checks the architecture up front; reads nothing

    def skeleton(self) -> nn.Module:
        """A fresh model of the checkpoint's structure with nothing read: pieces are put into it as they are made."""
        return self.checkpoint.model()

    def piece(self, path: str, dtype=mx.float32) -> nn.Module:
        """The piece at `path` ('model.embed_tokens', 'model.layers.3', 'model.norm', 'lm_head') in full precision,
        read now; it is freed when dropped."""
        return float_copy(self.checkpoint.piece(path), dtype)

    def tokenizer(self):
        return self.checkpoint.tokenizer()
