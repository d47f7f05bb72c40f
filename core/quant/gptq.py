"""GPTQ (Frantar et al. 2022) on this project's min-max affine grid, for Linear layers and convolutions.

Why our own rather than `mlx_lm.gptq`: that one supports 2, 4 and 8 bits only and takes its grid from
`mx.quantize`, whose zero-snapping costs SmolLM2 (a de-quantized Q4_1 model) more than GPTQ wins back (docs/methods.md).
Here the grid of each group is min-max over the group's *current* (error-corrected) weights, chosen when the
sweep reaches the group, as in the reference implementation without activation reordering; integers are packed
in MLX's layout, so the result is an ordinary quantized layer.

Everything runs in MLX: the Hessians and the factor of their inverse (core.quant.hessian), and the sweep on the
default device (a GPU where there is one). Each column's integers depend on the errors of all
columns before it, so the sweep is sequential; it is batched as in the reference, by deferring what an error
does to far columns. One compiled step quantizes a whole group, its columns unrolled SUB at a time: each error
is applied at once within its SUB-wide tile, and a tile's errors reach the rest of the group as one small
matmul; the rest of a BLOCK gets a group's errors as one matmul, the columns beyond it a block's as one more.
The lazy graph is evaluated once per block.

Language models go block by block: one calibration pass records every layer's Hessian (the last layer of the
block is not run: nothing reads its outputs), then each layer is swept, then a second pass through the quantized
block makes the next block's inputs. Both passes spread their batches over the CPU streams (core.parallel).
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from core.errors import LabError
from core.parallel import map_batches, parallel_steps
from core.quant import footprint
from core.quant.conv import im2col
from core.quant.hessian import HessianCatcher, factor_of, inverse_factor
from core.quant.layers import module_at, swap, weight_layer_paths
from core.quant.quantizers import dequantize_matrix, pack, stored_dtype
from core.quant.spec import QuantSpec

BLOCK = 128  # columns updated lazily together; a multiple of every group size
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


def calibration_batch(block: nn.Module, x: mx.array) -> int:
    """How many calibration sequences of `x` [n, ctx, hidden] one pass through `block` takes, so a big model's
    pass does not hold gigabytes of activations (core.quant.footprint.calibration_batch_bytes)."""
    widest = max(m.weight.shape[0] for _, m in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
                 if isinstance(m, (nn.Linear, nn.QuantizedLinear)))
    heads = getattr(getattr(block, "self_attn", None), "n_heads", 1)
    return footprint.calibration_batch_bytes(x.shape[1], widest, heads, parallel_steps())[0]


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
            mx.eval(model(images[i:i + batch]), catcher.pending())
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

    def pending(self) -> list[mx.array]:
        return [*super().pending(), self._sum]

    def mean_row(self) -> mx.array:
        return self._sum / max(self._count, 1)


def gptq_lm(model: nn.Module, spec: QuantSpec, keep: set[str], tokens: mx.array, progress,
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
        packed |= gptq_block(block, f"model.layers.{b}.", x, mask, spec, keep, specs)
        x = block_outputs(block, x, mask)
    return packed


def block_outputs(block: nn.Module, x: mx.array, mask) -> mx.array:
    """`block` run over every calibration sequence of `x`, a batch at a time: the next block's inputs."""
    batch = calibration_batch(block, x)
    out = mx.concatenate(list(map_batches(lambda part: block(part, mask),
                                          [x[i:i + batch] for i in range(0, x.shape[0], batch)])))
    mx.eval(out)
    mx.clear_cache()  # as after the calibration pass: the next block's work allocates other sizes
    return out


def gptq_block(block: nn.Module, prefix: str, x: mx.array, mask, spec: QuantSpec, keep: set[str],
               specs: dict[str, QuantSpec] | None = None) -> dict:
    """GPTQ one block's Linear layers in place, on its inputs `x`: their weights become the de-quantized ones.
    `prefix` ('model.layers.3.') turns the block's paths into the model's, which `keep`, `specs` and the
    returned {path: packed} use."""
    specs = specs or {}
    leaves = tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
    chosen = {p: specs.get(prefix + p, spec).validated() for p, m in leaves
              if isinstance(m, nn.Linear) and prefix + p not in keep}
    local = [p for p, s in chosen.items()
             if not s.full_precision and module_at(block, p).weight.shape[1] % s.group_size == 0]
    batch = calibration_batch(block, x)  # before the catchers go in: they refer to each other
    shared = {}
    catchers = {p: HessianCatcher(module_at(block, p), lambda v: v.reshape(-1, v.shape[-1]), shared) for p in local}
    for p, c in catchers.items():
        swap(block, p, c)
    order = []

    def record(part):  # the block's outputs are not used: only what the catchers saw
        return [block(part, mask), *(t for c in catchers.values() for t in c.pending())]

    for _ in map_batches(record, [x[i:i + batch] for i in range(0, x.shape[0], batch)]):
        if not order and shared.get("order"):  # the last layer called: its outputs feed nothing recorded
            order = list({id(c): c for c in shared["order"]}.values())  # modules are dicts: not hashable
            order[-1].skip_output = True
    shared.clear()
    mx.clear_cache()  # the pass's activations: freed buffers of sizes the factors below do not use
    # In the order the layers run, each Hessian dropped once factored and each factor once its last layer is done:
    # the peak holds one factor being made beside the Hessians not yet used.
    by_catcher = {id(c): p for p, c in catchers.items()}
    order = [by_catcher[id(c)] for c in order]
    order += [p for p in catchers if p not in order]
    last_user = {id(catchers[p].leader): p for p in order}
    packed, factors = {}, {}
    for p in order:
        c = catchers[p]
        swap(block, p, c.layer)
        leader = id(c.leader)
        if leader not in factors:
            factors[leader] = factor_of([c.leader.take_hessian()])
        packed[prefix + p] = gptq_matrix(c.layer.weight, None, chosen[p], factors[leader])
        c.layer.weight = dequantize_matrix(*packed[prefix + p], chosen[p], c.layer.weight.dtype)
        if last_user[leader] == p:
            del factors[leader]
    return packed
