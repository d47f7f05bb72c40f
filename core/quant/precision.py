"""The compute dtype a quantized model runs in. Models are quantized and measured for quality in float32; a
deployed model computes in the config's dtype (core.runtime.default_dtype): its full-precision arrays (norms,
kept layers, BatchNorm statistics, biases) cast to it, affine scales stored in the 16-bit type that matches it,
packed integers untouched."""
from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from core.quant.kernels import use_measured_kernels
from core.quant.spec import QuantSpec
from core.runtime import DTYPES

SCALE_ARRAYS = ("scales", "biases")  # of quantized layers only: float layers call their offset `bias`


def _is_scale(path: str) -> bool:
    return path.rsplit(".", 1)[-1] in SCALE_ARRAYS


def cast_to(model: nn.Module, dtype: str) -> nn.Module:
    """Make `model` compute in `dtype` ('float32', 'bfloat16' or 'float16'), in place; arrays already of the
    right type are left alone."""
    target, scales = DTYPES[dtype], getattr(mx, QuantSpec.scales_for(dtype))
    changed = []
    for path, value in tree_flatten(model.parameters()):
        if not mx.issubdtype(value.dtype, mx.floating):
            continue
        want = scales if _is_scale(path) else target
        if value.dtype != want:
            changed.append((path, value.astype(want)))
    if changed:
        model.update(tree_unflatten(changed))
        mx.eval([v for _, v in changed])
    return model


@contextmanager
def computing_in(model: nn.Module, dtype: str):
    """Within the block `model` computes in `dtype` with the kernels it would be deployed with; afterwards it holds
    its own arrays again, nothing rounded (speed is measured as deployed, quality in float32, on one model)."""
    saved = model.parameters()
    use_measured_kernels(cast_to(model, dtype))
    try:
        yield model
    finally:
        use_measured_kernels(model, enabled=False)
        model.update(saved)


def activation_dtype(model: nn.Module) -> mx.Dtype:
    """The dtype the model computes in: that of its first floating full-precision array that is not a scale."""
    for path, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating) and not _is_scale(path):
            return value.dtype
    return mx.float32


def deployed_size(model: nn.Module, dtype: str) -> tuple[int, float]:
    """(bytes, bits per weight) the model holds once cast to `dtype` (as `cast_to` would), from shapes alone:
    nothing is read or cast, so a model whose arrays are not read yet is sized without reading it."""
    from core.quant.layers import logical_weight_count

    target, scales = DTYPES[dtype], getattr(mx, QuantSpec.scales_for(dtype))
    total = 0
    for path, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            total += value.size * (scales if _is_scale(path) else target).size
        else:
            total += value.nbytes
    return total, 8 * total / logical_weight_count(model)
