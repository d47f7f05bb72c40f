"""AWQ (Lin et al. 2023) for LLaMA-style models, on this project's min-max grid.

mlx-lm's `mlx_lm.quant.awq` does the search well: per block, a per-channel scale moved from each linear layer's
input into the operation before it (a norm, or up_proj before down_proj), chosen on a grid of
(mean |activation|)^ratio to minimise the block's output error, then a per-group clipping search. We reuse its
search functions (`scale_block`, `clip_block`, `run_layer`) with our quantizer plugged in; its driver is not
reused because it quantizes with `mx.quantize` (zero-snapping: bad for SmolLM2, see README) and needs the hub
for calibration text. The result is a float model whose weights round better; round-to-nearest then packs it.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from core.errors import LabError
from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.spec import QuantSpec

GRID = 20  # scale ratios (and clipping ratios) tried per search, as mlx-lm


def awq_lm(model: nn.Module, spec: QuantSpec, tokens: mx.array, progress, grid: int = GRID) -> None:
    """Scale and clip the model's linear layers in place, block by block; a block whose output error after
    round-to-nearest the search does not lower keeps its weights."""
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, clip_block, mse, run_layer, scale_block

    config = AWQ_MODEL_CONFIGS.get(getattr(model, "model_type", None))
    inner = getattr(model, "model", None)
    if config is None or config.lm_key is not None or inner is None or "embed_tokens" not in inner:
        raise LabError(f"AWQ here supports LLaMA-style mlx-lm models, not {getattr(model, 'model_type', '?')!r}.")

    def fake_quantize(w: mx.array) -> mx.array:
        return dequantize_matrix(*quantize_matrix(w, spec), spec, w.dtype)

    def block_error(block, x, mask, reference) -> float:
        saved = _weights(block)
        for _, layer in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module):
            if isinstance(layer, nn.Linear):
                layer.weight = fake_quantize(layer.weight)
        error = (mse(reference, run_layer(block, x, mask=mask)).sum() / reference.size).item()
        block.update(saved)
        return error

    x = inner.embed_tokens(tokens)
    mask = create_attention_mask(x, None)
    for b, block in enumerate(model.layers):
        progress(b / len(model.layers), f"AWQ block {b + 1}/{len(model.layers)}")
        leaves = block.leaf_modules()
        block.update_modules(_capturing(leaves))
        reference = run_layer(block, x, mask=mask)  # float outputs; the layers keep their inputs in .input_feat
        block.update_modules(leaves)
        before = block_error(block, x, mask, reference)
        original = _weights(block)
        scale_block(block=block, configs=config.scale_configs, quantize_func=fake_quantize,
                    layer_kwargs={"mask": mask}, n_grid=grid)
        clip_block(block=block, no_clip_keys=config.no_clip, quantize_func=fake_quantize,
                   group_size=spec.group_size, n_grid=grid)
        _forget_inputs(block)
        after = block_error(block, x, mask, reference)
        if after > before:  # the search made this block worse: keep its original weights
            block.update(original)
        x = reference
        mx.eval(block.parameters())


def _capturing(leaves):
    """Wrap each Linear so that it records its inputs on itself (as mlx-lm's search expects)."""
    from mlx.utils import tree_map

    def wrap(module):
        if not isinstance(module, nn.Linear):
            return module

        class Recorder(nn.Module):
            def __call__(self, x, *args, **kwargs):
                if "input_feat" in module:
                    module.input_feat = mx.concatenate([module.input_feat, x], axis=0)
                else:
                    module.input_feat = x
                return module(x, *args, **kwargs)

        return Recorder()

    return tree_map(wrap, leaves, is_leaf=nn.Module.is_module)


def _weights(block: nn.Module) -> dict:
    """The block's parameters without recorded inputs: a snapshot to restore (arrays are immutable)."""
    return tree_unflatten([(k, v) for k, v in tree_flatten(block.parameters()) if not k.endswith("input_feat")])


def _forget_inputs(block: nn.Module) -> None:
    """Recorded inputs are arrays on the modules: they would count as parameters (size, export)."""
    for _, layer in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module):
        if "input_feat" in layer:
            layer.pop("input_feat")
