"""AWQ (Lin et al. 2023) for LLaMA-style models, on this project's min-max grid.

mlx-lm's `mlx_lm.quant.awq` does the search well: per block, a per-channel scale moved from each linear layer's
input into the operation before it (a norm, or up_proj before down_proj), chosen on a grid of
(mean |activation|)^ratio to minimise the block's output error, then a per-group clipping search. We reuse its
search functions (`scale_block`, `clip_block`, `run_layer`) with our quantizer plugged in; its driver is not
reused because it quantizes with `mx.quantize` (zero-snapping: bad for SmolLM2, see docs/methods.md) and needs the hub
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


def awq_config(model: nn.Module):
    """mlx-lm's AWQ description of the model's architecture (which layers share an input, what to fold into)."""
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS

    config = AWQ_MODEL_CONFIGS.get(getattr(model, "model_type", None))
    inner = getattr(model, "model", None)
    if config is None or config.lm_key is not None or inner is None or "embed_tokens" not in inner:
        raise LabError(f"AWQ here supports LLaMA-style mlx-lm models, not {getattr(model, 'model_type', '?')!r}.")
    return config


def awq_lm(model: nn.Module, spec: QuantSpec, tokens: mx.array, progress, grid: int = GRID,
           specs: dict[str, QuantSpec] | None = None) -> None:
    """Scale and clip the model's linear layers in place, block by block; a block whose output error after
    round-to-nearest the search does not lower keeps its weights. `specs` gives layers their own width (mixed
    precision): each layer's scales, clipping and error are then judged at its own width."""
    from mlx_lm.models.base import create_attention_mask

    config = awq_config(model)
    x = model.model.embed_tokens(tokens)
    mask = create_attention_mask(x, None)
    for b, block in enumerate(model.layers):
        progress(b / len(model.layers), f"AWQ block {b + 1}/{len(model.layers)}")
        x = awq_block(block, f"model.layers.{b}.", x, mask, config, spec, specs or {}, grid)


def awq_block(block: nn.Module, prefix: str, x: mx.array, mask, config, spec: QuantSpec,
              specs: dict[str, QuantSpec], grid: int = GRID) -> mx.array:
    """AWQ one block in place, on its inputs `x`; returns its float outputs (the next block's inputs)."""
    from mlx_lm.quant.awq import clip_block, mse, run_layer, scale_block

    def fake_quantize(w: mx.array) -> mx.array:
        return dequantize_matrix(*quantize_matrix(w, spec), spec, w.dtype)

    def block_error(reference, rounding) -> float:
        saved = _weights(block)
        for path, layer in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module):
            if isinstance(layer, nn.Linear):
                layer.weight = rounding[path](layer.weight)
        error = (mse(reference, run_layer(block, x, mask=mask)).sum() / reference.size).item()
        block.update(saved)
        return error

    leaves = block.leaf_modules()
    block.update_modules(_capturing(leaves))
    reference = run_layer(block, x, mask=mask)  # float outputs; the layers keep their inputs in .input_feat
    block.update_modules(leaves)
    rounding = _rounding(block, prefix, spec, specs)
    before = block_error(reference, rounding)
    original = _weights(block)
    if specs:
        _scale_mixed(block, config, rounding, {"mask": mask}, grid)
        _clip_mixed(block, config.no_clip, rounding, spec, specs, prefix, grid)
    else:
        scale_block(block=block, configs=config.scale_configs, quantize_func=fake_quantize,
                    layer_kwargs={"mask": mask}, n_grid=grid)
        clip_block(block=block, no_clip_keys=config.no_clip, quantize_func=fake_quantize,
                   group_size=spec.group_size, n_grid=grid)
    _forget_inputs(block)
    after = block_error(reference, rounding)
    if after > before:  # the search made this block worse: keep its original weights
        block.update(original)
    mx.eval(block.parameters())
    return reference


def _rounding(block: nn.Module, prefix: str, spec: QuantSpec, specs: dict[str, QuantSpec]) -> dict:
    """{path in block: the function that rounds that layer's weight at its own width (identity when kept)}."""
    def at(layer_spec: QuantSpec):
        if layer_spec.full_precision:
            return lambda w: w
        layer_spec = layer_spec.validated()
        return lambda w: dequantize_matrix(*quantize_matrix(w, layer_spec), layer_spec, w.dtype)

    return {p: at(specs.get(prefix + p, spec)) for p, m in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
            if isinstance(m, nn.Linear)}


def _scale_mixed(block: nn.Module, config, rounding: dict, layer_kwargs: dict, grid: int) -> None:
    """mlx-lm's per-channel scale search (search_best_scale), with each layer rounded at its own width: for every
    group of layers that share an input, the ratio on a grid of (mean |activation|)^ratio whose rounded output is
    closest to the float output, folded into the operation before them (mlx-lm's apply_scale)."""
    from mlx_lm.quant.awq import apply_scale, mse, run_layer, submodule_from_key

    for conf in config.scale_configs:
        if conf.use_config is not None and not conf.use_config(block):
            continue
        local = block[conf.block] if conf.block is not None else None
        names = [(f"{conf.block}." if conf.block is not None else "") + name for name in conf.layers]
        layers = [submodule_from_key(block, name) for name in names]
        kwargs = {k: layer_kwargs[k] for k in conf.kwargs if k in layer_kwargs}
        kwargs.update({k: getattr(layers[0], k) for k in conf.kwargs if hasattr(layers[0], k)})
        target = local or layers[0]
        x = layers[0].input_feat
        out = target(x, **kwargs)
        x_mean = x.abs().mean(axis=(0, 1))
        saved = tree_flatten(target.parameters())
        best, best_scales = float("inf"), None
        for step in range(grid):
            scales = mx.maximum(x_mean ** (step / grid), 1e-4).reshape(-1)
            scales = scales / (scales.max() * scales.min()).sqrt()
            for name, layer in zip(names, layers):
                layer.weight = rounding[name](layer.weight * scales) / scales
            error = (mse(out, run_layer(target, x, **kwargs)).sum() / out.size).item()
            if error < best:
                best, best_scales = error, scales
            target.load_weights(saved)
        apply_scale(submodule_from_key(block, conf.prev), layers, best_scales)


def _clip_mixed(block: nn.Module, no_clip, rounding: dict, spec: QuantSpec, specs: dict, prefix: str,
                grid: int) -> None:
    """mlx-lm's per-group clipping search (search_best_clip), each layer at its own width and group size."""
    from mlx_lm.quant.awq import search_best_clip

    for path, layer in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module):
        layer_spec = specs.get(prefix + path, spec)
        if isinstance(layer, nn.Linear) and not layer_spec.full_precision and all(k not in path for k in no_clip):
            layer.weight = search_best_clip(layer, quantize_func=rounding[path], group_size=layer_spec.group_size,
                                            n_grid=grid)


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
