"""The shape of an mlx-lm language model that the lab relies on: where its logits come from.

SmolLM2 ties its output head to the token embedding (no `lm_head`): the embedding's matrix also computes the
logits, so "the output layer" is the embedding. Every module that needs the head asks here."""
from __future__ import annotations

import mlx.nn as nn


def output_head(model: nn.Module):
    """The callable turning final hidden states into logits: `lm_head`, or the tied embedding as a linear layer."""
    if "lm_head" in model:
        return model.lm_head
    return model.model.embed_tokens.as_linear


def output_layer_path(model: nn.Module, weight_layers: list[str]) -> str:
    """The weight layer producing the outputs: the last one, or the embedding when the head is tied to it."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and "lm_head" not in model and "embed_tokens" in inner:
        return "model.embed_tokens"
    return weight_layers[-1]
