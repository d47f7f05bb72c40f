"""The shape of an mlx-lm language model that the lab relies on: where its logits come from.

SmolLM2 ties its output head to the token embedding (no `lm_head`): the embedding's matrix also computes the
logits, so "the output layer" is the embedding. Every module that needs the head asks here."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from core.errors import LabError


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


# The inner models whose forward pass is: embedding, then each block on (h, mask), then the final norm. Only these
# can be run one block at a time (tests/models/test_lm_chain.py checks the chain equals each one's own forward).
CHAIN_MODULES = ("mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3", "mlx_lm.models.phi3")


def check_architecture(config: dict, where: str) -> None:
    """A LabError in words when mlx-lm cannot build the model `config` describes, or the lab cannot run it block
    by block (its architecture is not one of CHAIN_MODULES)."""
    from mlx_lm.utils import _get_classes

    try:
        module = _get_classes(config)[0].__module__
    except (KeyError, ValueError) as cause:
        raise LabError(f"{where}: mlx-lm does not know this model ({cause}).") from None
    if module not in CHAIN_MODULES:
        raise LabError(f"{where} is a {config.get('model_type')!r} model. The lab quantizes and measures language "
                       f"models block by block, which it supports for {', '.join(m.rsplit('.', 1)[1] for m in CHAIN_MODULES)} "
                       "models and those mlx-lm maps onto them (e.g. mistral).")


class Chain:
    """A language model as the pieces the lab runs one at a time: embedding, blocks, final norm, head. Pieces are
    looked up when asked for, so a piece swapped into the model is the one used."""

    def __init__(self, model: nn.Module):
        inner = getattr(model, "model", None)
        kind = type(inner).__module__ if inner is not None else type(model).__module__
        if kind not in CHAIN_MODULES or not all(k in inner for k in ("embed_tokens", "layers", "norm")):
            raise LabError(f"The lab runs language models block by block, which it supports for the llama, qwen2, "
                           f"qwen3 and phi3 architectures (and those mlx-lm maps onto them, e.g. mistral), not for "
                           f"{getattr(model, 'model_type', kind)!r}.")
        self.model, self.inner = model, inner
        self.tied = "lm_head" not in model
        self.paths = ["model.embed_tokens", *(f"model.layers.{i}" for i in range(len(inner.layers))), "model.norm"]
        if not self.tied:
            self.paths.append("lm_head")

    def block_paths(self) -> list[str]:
        return [f"model.layers.{i}" for i in range(len(self.inner.layers))]

    def mask(self, h: mx.array, block: nn.Module):
        """The attention mask `block` takes for hidden states `h` of whole sequences (no cache)."""
        from mlx_lm.models.base import create_attention_mask  # mlx-lm's import is slow: only when running

        window = getattr(self.inner, "sliding_window", None) if getattr(block, "use_sliding", False) else None
        return create_attention_mask(h, None, window_size=window) if window else create_attention_mask(h, None)
