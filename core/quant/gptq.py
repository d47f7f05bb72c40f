"""GPTQ (Frantar et al. 2022) on this project's min-max affine grid, for Linear layers and convolutions.

Why our own rather than `mlx_lm.gptq`: that one supports 2, 4 and 8 bits only and takes its grid from
`mx.quantize`, whose zero-snapping costs SmolLM2 (a de-quantized Q4_1 model) more than GPTQ wins back (README).
Here the grid of each group is min-max over the group's *current* (error-corrected) weights, chosen when the
sweep reaches the group, as in the reference implementation without activation reordering; integers are packed
in MLX's layout, so the result is an ordinary quantized layer.

Everything runs in MLX: the factor of the inverse Hessian on the CPU stream (MLX's linalg runs nowhere else),
the sweep on the default device (a GPU where there is one). Each column's integers depend on the errors of all
columns before it, so the sweep is sequential; it is batched as in the reference, by deferring what an error
does to far columns. One compiled step quantizes a whole group, its columns unrolled SUB at a time: each error
is applied at once within its SUB-wide tile, and a tile's errors reach the rest of the group as one small
matmul; the rest of a BLOCK gets a group's errors as one matmul, the columns beyond it a block's as one more.
The lazy graph is evaluated once per block. The Hessians (X^T X of each layer's calibration inputs) are built
with MLX too.
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from core import runtime
from core.errors import LabError
from core.quant.conv import im2col
from core.quant.layers import module_at, swap, weight_layer_paths
from core.quant.quantizers import dequantize_matrix, pack, stored_dtype
from core.quant.spec import QuantSpec

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it (the paper's default)
BLOCK = 128  # columns updated lazily together; a multiple of every group size
FACTOR_BLOCK = 1024  # the inverse's factorisation: blocks factored on the CPU, products between them on the device
SUB = 16  # inside a group, columns updated eagerly together (a tile that stays in cache); divides every group size


def gptq_matrix(w: mx.array, hessian, spec: QuantSpec, factor: mx.array | None = None
                ) -> tuple[mx.array, mx.array, mx.array]:
    """Packed (weight, scales, biases) of a [rows, K] weight, K divisible by the group size, given the Hessian
    proxy H = sum x x^T [K, K] of its inputs (an mx.array or a NumPy array), or its `factor` (inverse_factor)
    where layers fed the same inputs share it. Columns whose input is always zero (padding) are quantized as is."""
    group, K = spec.group_size, w.shape[1]
    U = inverse_factor(hessian) if factor is None else factor
    step, levels = _group_step(group, stored_dtype(spec)), mx.array(2**spec.bits - 1, mx.float32)
    tail = w.astype(mx.float32)  # the columns not swept yet, corrected for every column swept so far
    q, scales, biases = [], [], []
    for i1 in range(0, K, BLOCK):
        i2 = min(i1 + BLOCK, K)
        block, tail, errors = tail[:, :i2 - i1], tail[:, i2 - i1:], []
        for c in range(i1, i2, group):  # `block` starts at column c
            qg, s, b, err = step(block[:, :group], U[c:c + group, c:c + group], levels)
            if c + group < i2:
                block = block[:, group:] - err @ U[c:c + group, c + group:i2]
            q.append(qg), scales.append(s), biases.append(b), errors.append(err)
        if i2 < K:
            tail = tail - mx.concatenate(errors, axis=1) @ U[i1:i2, i2:]
        mx.eval(tail, q, scales, biases)
    return (pack(mx.concatenate(q, axis=1), spec.bits), mx.stack(scales, axis=1), mx.stack(biases, axis=1))


def inverse_factor(hessian) -> mx.array:
    """The upper Cholesky factor U of H^-1 (U^T U = H^-1), row i holding the update direction for the columns
    after i, of H damped by DAMPING * mean(diag) after dead columns (zero diagonal) are given a unit diagonal.
    Float32, as in the reference implementation (float64 changes almost no integer)."""
    if isinstance(hessian, np.ndarray):
        hessian = mx.array(hessian.astype(np.float32))
    H = hessian.astype(mx.float32)
    d = mx.diag(H)
    alive = mx.where(d == 0, 1.0, d)
    H = H + mx.diag(alive - d + DAMPING * alive.mean())
    # With J the order reversal, J H J = N N^T (N lower) gives H^-1 = (J N^-1 J)^T (J N^-1 J), J N^-1 J upper:
    # the factor the reference gets from cholesky, cholesky_inv and an upper cholesky, in half the arithmetic.
    N = _blocked_cholesky(H[::-1, ::-1])
    U = _blocked_tri_inv(N)[::-1, ::-1]
    mx.eval(U)
    return U


def _direct_up_to() -> int:
    """The largest matrix factored whole on the CPU: on a CPU the blocked form gains only for large ones; with a GPU
    its products are where the time would go."""
    return 4 * FACTOR_BLOCK if runtime.backend() == "cpu" else FACTOR_BLOCK


def _small(op, a: mx.array) -> mx.array:
    """`op` (an mx.linalg function) on one diagonal block: MLX's linalg runs on the CPU stream only. One BLAS
    thread: the bundled reference LAPACK calls BLAS in many panel-sized pieces, and a multi-threaded BLIS pays a
    hand-off per call that costs far more than it saves, ruinously so on a busy machine."""
    with mx.stream(mx.cpu), runtime.blas_threads(1):
        out = op(a)
        mx.eval(out)
    return out


def _blocked_cholesky(H: mx.array) -> mx.array:
    """Lower L with L L^T = H, right-looking by blocks of FACTOR_BLOCK: each diagonal block factored on the CPU,
    the panel and the trailing update as matrix products on the default device (a GPU where there is one)."""
    n, b = H.shape[0], FACTOR_BLOCK
    if n <= _direct_up_to():
        return _small(mx.linalg.cholesky, H)
    columns, trailing = [], H
    for k in range(0, n, b):
        size = min(b, n - k)
        diag = _small(mx.linalg.cholesky, trailing[:size, :size])
        panel = trailing[size:, :size] @ _small(mx.linalg.tri_inv, diag).T
        columns.append(mx.concatenate([mx.zeros((k, size)), diag, panel]))
        trailing = trailing[size:, size:] - panel @ panel.T
        mx.eval(columns[-1], trailing)
    return mx.concatenate(columns, axis=1)


def _blocked_tri_inv(L: mx.array) -> mx.array:
    """L^-1 of a lower triangular L by block rows: row block i is -D_i^-1 (L_i,<i L^-1_<i) beside D_i^-1."""
    n, b = L.shape[0], FACTOR_BLOCK
    if n <= _direct_up_to():
        return _small(mx.linalg.tri_inv, L)
    rows = []
    for k in range(0, n, b):
        size = min(b, n - k)
        inv = _small(mx.linalg.tri_inv, L[k:k + size, k:k + size])
        left = -inv @ (L[k:k + size, :k] @ mx.concatenate(rows)[:, :k]) if k else mx.zeros((size, 0))
        rows.append(mx.concatenate([left, inv, mx.zeros((size, n - k - size))], axis=1))
        mx.eval(rows[-1])
    return mx.concatenate(rows)


@lru_cache(maxsize=None)
def _group_step(group: int, stored: mx.Dtype):
    """One group of columns (w [rows, group], u its diagonal block of U, levels = 2^bits - 1): the grid from the
    group's current weights, rounded to the stored dtype before the integers are chosen (as
    core.quant.quantizers does); then each column's integers, and its scaled error pushed onto the group's later
    columns. Returns (integers as uint32, scales, biases, errors [rows, group]). `levels` is an input rather
    than a constant so that every width shares the compiled kernels."""

    def step(w: mx.array, u: mx.array, levels: mx.array):
        low, high = w.min(axis=1), w.max(axis=1)
        s, b = ((high - low) / levels).astype(stored), low.astype(stored)
        s32, b32 = s.astype(mx.float32), b.astype(mx.float32)
        safe = mx.where(s32 > 0, s32, 1.0)  # a constant group: every weight equals the bias
        qs, errs = [], []
        for j in range(0, group, SUB):
            part = w[:, j:j + SUB]
            for i in range(j, j + SUB):
                qi = mx.clip(mx.round((part[:, i - j] - b32) / safe), 0, levels)
                err = (part[:, i - j] - (qi * s32 + b32)) / u[i, i]
                part = part - err[:, None] * u[i, j:j + SUB][None, :]  # upper triangular u: earlier columns stay
                qs.append(qi), errs.append(err)
            if j + SUB < group:  # the whole width, for a fixed shape: only the columns after j + SUB are read again
                w = w - mx.stack(errs[j:], axis=1) @ u[j:j + SUB]
        return mx.stack(qs, axis=1).astype(mx.uint32), s, b, mx.stack(errs, axis=1)

    return mx.compile(step)


class HessianCatcher(nn.Module):
    """Stands in for a layer: accumulates X^T X of its inputs (as rows, via `to_rows`), then calls the layer.
    Catchers given one `shared` dict reuse each other's product when called on the very same input array in a
    row (q, k and v of one attention; gate and up of one MLP): that layer follows the first one (`leader`)."""

    def __init__(self, layer: nn.Module, to_rows, shared: dict | None = None):
        super().__init__()
        self.layer = layer
        self._to_rows = to_rows
        self._shared = shared
        self._h, self._count = None, 0
        self.leader = self  # the catcher whose Hessian this one's equals

    def __call__(self, x, *args, **kwargs):
        last = self._shared.get("last") if self._shared is not None else None
        if last is not None and last[0] is x and self._count == 0 and last[1].leader is last[1]:
            self.leader = last[1]  # the same input as the layer called just before: its Hessian is ours
        elif self.leader is not self and (last is None or last[0] is not x):
            raise LabError("GPTQ: a layer that shared its inputs with the one before stopped doing so.")
        if self.leader is self:
            self._add(self._to_rows(x).astype(mx.float32))
            if self._shared is not None:
                self._shared["last"] = (x, self)
        return self.layer(x, *args, **kwargs)

    def _add(self, rows: mx.array) -> None:
        self._h = rows.T @ rows if self._h is None else self._h + rows.T @ rows
        self._count += rows.shape[0]
        mx.eval(self._h)

    def hessian(self) -> mx.array:
        if self.leader is not self:
            return self.leader.hessian()
        return self._h / max(self._count, 1)


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

    inner = getattr(model, "model", None)
    if inner is None or "embed_tokens" not in inner or not hasattr(model, "layers"):
        raise LabError("GPTQ here supports LLaMA-style mlx-lm models (model.embed_tokens and model.layers).")
    x = inner.embed_tokens(tokens)
    mask = create_attention_mask(x, None)
    packed = {}
    blocks = model.layers
    for b, block in enumerate(blocks):
        progress(b / len(blocks), f"GPTQ block {b + 1}/{len(blocks)}")
        packed |= gptq_block(block, f"model.layers.{b}.", x, mask, spec, keep, specs, batch)
        x = mx.concatenate([block(x[i:i + batch], mask) for i in range(0, x.shape[0], batch)])
        mx.eval(x)
    return packed


def gptq_block(block: nn.Module, prefix: str, x: mx.array, mask, spec: QuantSpec, keep: set[str],
               specs: dict[str, QuantSpec] | None = None, batch: int = 8) -> dict:
    """GPTQ one block's Linear layers in place, on its inputs `x`: their weights become the de-quantized ones.
    `prefix` ('model.layers.3.') turns the block's paths into the model's, which `keep`, `specs` and the
    returned {path: packed} use."""
    specs = specs or {}
    leaves = tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
    chosen = {p: specs.get(prefix + p, spec).validated() for p, m in leaves
              if isinstance(m, nn.Linear) and prefix + p not in keep}
    local = [p for p, s in chosen.items()
             if not s.full_precision and module_at(block, p).weight.shape[1] % s.group_size == 0]
    shared = {}
    catchers = {p: HessianCatcher(module_at(block, p), lambda v: v.reshape(-1, v.shape[-1]), shared) for p in local}
    for p, c in catchers.items():
        swap(block, p, c)
    for i in range(0, x.shape[0], batch):
        mx.eval(block(x[i:i + batch], mask))
    shared.clear()
    packed, factors = {}, {}
    for p, c in catchers.items():
        swap(block, p, c.layer)
        if id(c.leader) not in factors:
            factors[id(c.leader)] = inverse_factor(c.hessian())
        packed[prefix + p] = gptq_matrix(c.layer.weight, None, chosen[p], factors[id(c.leader)])
        c.layer.weight = dequantize_matrix(*packed[prefix + p], chosen[p], c.layer.weight.dtype)
    return packed
