"""GPTQ (Frantar et al. 2022) on this project's min-max affine grid, for Linear layers and convolutions.

Why our own rather than `mlx_lm.gptq`: that one supports 2, 4 and 8 bits only and takes its grid from
`mx.quantize`, whose zero-snapping costs SmolLM2 (a de-quantized Q4_1 model) more than GPTQ wins back (README).
Here the grid of each group is min-max over the group's *current* (error-corrected) weights, chosen when the
sweep reaches the group, as in the reference implementation without activation reordering; integers are packed
in MLX's layout, so the result is an ordinary quantized layer.

The column sweep runs in NumPy: it is thousands of tiny, strictly sequential updates, which a lazy graph
framework would only slow down. The Hessians (X^T X of each layer's calibration inputs) are built with MLX.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from core.errors import LabError
from core.quant.conv import im2col
from core.quant.layers import module_at, swap, weight_layer_paths
from core.quant.quantizers import dequantize_matrix, pack, stored_dtype
from core.quant.spec import QuantSpec

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it (the paper's default)
BLOCK = 128  # columns updated lazily together; a multiple of every group size


def gptq_matrix(w: mx.array, hessian: np.ndarray, spec: QuantSpec) -> tuple[mx.array, mx.array, mx.array]:
    """Packed (weight, scales, biases) of a [rows, K] weight, K divisible by the group size, given the Hessian
    proxy H = sum x x^T [K, K] of its inputs. Columns whose input is always zero (padding) are quantized as is."""
    bits, group = spec.bits, spec.group_size
    stored = stored_dtype(spec)
    W = np.array(w.astype(mx.float32), dtype=np.float32)
    rows, K = W.shape
    H = np.array(hessian, dtype=np.float64, copy=True)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices(K)] += DAMPING * np.mean(np.diag(H))
    # Upper Cholesky factor of H^-1: row i holds the update direction for columns after i.
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)
    levels = 2**bits - 1
    Q = np.zeros((rows, K), dtype=np.uint32)
    scales = np.zeros((rows, K // group), dtype=np.float32)
    biases = np.zeros_like(scales)
    for i1 in range(0, K, BLOCK):
        i2 = min(i1 + BLOCK, K)
        W1, E1, U1 = W[:, i1:i2].copy(), np.zeros((rows, i2 - i1), np.float32), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:  # the group's grid, from its weights as corrected so far
                g = W1[:, i:i + group]
                low, high = g.min(axis=1), g.max(axis=1)
                s, b = _stored((high - low) / levels, stored), _stored(low, stored)
                scales[:, col // group], biases[:, col // group] = s, b
                safe = np.where(s > 0, s, 1.0)
            q = np.clip(np.round((W1[:, i] - b) / safe), 0, levels)
            Q[:, col] = q
            err = (W1[:, i] - (q * s + b)) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return (pack(mx.array(Q), bits), mx.array(scales).astype(stored), mx.array(biases).astype(stored))


def _stored(values: np.ndarray, dtype: mx.Dtype) -> np.ndarray:
    """Rounded to the dtype scales are stored in (NumPy has no bfloat16), as float32: the integers are chosen
    against the grid that is actually stored, as core.quant.quantizers does."""
    return np.array(mx.array(values.astype(np.float32)).astype(dtype).astype(mx.float32))


class HessianCatcher(nn.Module):
    """Stands in for a layer: accumulates X^T X of its inputs (as rows, via `to_rows`), then calls the layer."""

    def __init__(self, layer: nn.Module, to_rows):
        super().__init__()
        self.layer = layer
        self._to_rows = to_rows
        self._h, self._count = None, 0

    def __call__(self, x, *args, **kwargs):
        self._add(self._to_rows(x).astype(mx.float32))
        return self.layer(x, *args, **kwargs)

    def _add(self, rows: mx.array) -> None:
        self._h = rows.T @ rows if self._h is None else self._h + rows.T @ rows
        self._count += rows.shape[0]
        mx.eval(self._h)

    def hessian(self) -> np.ndarray:
        return np.array(self._h, dtype=np.float64) / max(self._count, 1)


# ---- whole models ------------------------------------------------------------------------------------------------

def gptq_resnet(model: nn.Module, spec: QuantSpec, keep: set[str], images: mx.array, progress, batch: int = 128):
    """GPTQ every convolution and the classifier in order, each on the inputs produced by the layers already
    quantized before it, then correct the bias each one's rounding leaves behind: the mean output shift
    E[(W - Wq) x] is known exactly from the mean input patch, and the following BatchNorm's running mean (the
    classifier's bias) absorbs it. Returns {path: packed}; BatchNorm statistics change in place."""
    packed = {}
    paths = [p for p in weight_layer_paths(model) if p not in keep]
    for n, path in enumerate(paths):
        progress(n / len(paths), f"GPTQ {path}")
        layer = module_at(model, path)
        if isinstance(layer, nn.Conv2d):
            out_c, kh, kw, in_c = layer.weight.shape
            k = kh * kw * in_c
            width = -(-k // spec.group_size) * spec.group_size
            flat = mx.pad(layer.weight.reshape(out_c, k), [(0, 0), (0, width - k)])
            rows = lambda x, layer=layer, width=width: im2col(x, layer.weight.shape[1:3], layer.stride,  # noqa: E731
                                                              layer.padding, width)[0]
        elif layer.weight.shape[1] % spec.group_size == 0:
            flat, rows = layer.weight, (lambda x: x.reshape(-1, x.shape[-1]))
        else:
            continue  # quantize_model keeps it in full precision and says so
        catcher = _MeanCatcher(layer, rows)
        swap(model, path, catcher)
        for i in range(0, images.shape[0], batch):
            mx.eval(model(images[i:i + batch]))
        swap(model, path, layer)
        packed[path] = gptq_matrix(flat, catcher.hessian(), spec)
        quantized = dequantize_matrix(*packed[path], spec)
        shift = (flat - quantized) @ catcher.mean_row()  # E[y_float - y_quantized] per output channel
        if isinstance(layer, nn.Conv2d):
            layer.weight = quantized[:, :k].reshape(layer.weight.shape)
            bn = module_at(model, path[: -len("conv1")] + "bn" + path[-1])  # convN -> bnN, as in core.models.resnet
            bn.running_mean = bn.running_mean - shift
        else:
            layer.weight = quantized
            layer.bias = layer.bias + shift
        mx.eval(model.parameters())
    return packed


class _MeanCatcher(HessianCatcher):
    """Also keeps the mean input row (for the bias correction)."""

    def _add(self, rows: mx.array) -> None:
        self._sum = rows.sum(axis=0) if self._count == 0 else self._sum + rows.sum(axis=0)
        super()._add(rows)

    def mean_row(self) -> mx.array:
        return self._sum / max(self._count, 1)


def gptq_lm(model: nn.Module, spec: QuantSpec, keep: set[str], tokens: mx.array, progress, batch: int = 8,
            specs: dict[str, QuantSpec] | None = None):
    """GPTQ the Linear layers of a LLaMA-style mlx-lm model block by block: each block's Hessians come from the
    calibration activations as the already-quantized blocks before it produce them. The embedding (and a head
    tied to it) is left to round-to-nearest. `specs` gives layers their own width (mixed precision; a
    full-precision spec leaves the layer alone). Returns {path: packed}."""
    from mlx_lm.models.base import create_attention_mask

    specs = specs or {}
    inner = getattr(model, "model", None)
    if inner is None or "embed_tokens" not in inner or not hasattr(model, "layers"):
        raise LabError("GPTQ here supports LLaMA-style mlx-lm models (model.embed_tokens and model.layers).")
    x = inner.embed_tokens(tokens)
    mask = create_attention_mask(x, None)
    packed = {}
    blocks = model.layers
    for b, block in enumerate(blocks):
        progress(b / len(blocks), f"GPTQ block {b + 1}/{len(blocks)}")
        prefix = f"model.layers.{b}."
        leaves = tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
        chosen = {p: specs.get(prefix + p, spec).validated() for p, m in leaves
                  if isinstance(m, nn.Linear) and prefix + p not in keep}
        local = [p for p, s in chosen.items()
                 if not s.full_precision and module_at(block, p).weight.shape[1] % s.group_size == 0]
        catchers = {p: HessianCatcher(module_at(block, p), lambda v: v.reshape(-1, v.shape[-1])) for p in local}
        for p, c in catchers.items():
            swap(block, p, c)
        for i in range(0, x.shape[0], batch):
            mx.eval(block(x[i:i + batch], mask))
        for p, c in catchers.items():
            swap(block, p, c.layer)
            packed[prefix + p] = gptq_matrix(c.layer.weight, c.hessian(), chosen[p])
            c.layer.weight = dequantize_matrix(*packed[prefix + p], chosen[p], c.layer.weight.dtype)
        x = mx.concatenate([block(x[i:i + batch], mask) for i in range(0, x.shape[0], batch)])
        mx.eval(x)
    return packed
