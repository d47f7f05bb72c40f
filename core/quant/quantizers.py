"""One weight matrix to its packed, quantized form and back: the min-max affine quantizer, and MLX's own.

Why a quantizer of our own for the affine mode: `mx.quantize` moves each group's grid so that zero is exactly
representable (it rescales around the larger-magnitude end), which shifts most grid points. A re-quantization
of an already 4-bit group-32 model (SmolLM2's Q4_1 GGUF) then moves most of its weights (docs/methods.md: the Q4_1 answer). Plain min-max
(scale = (max - min) / (2^b - 1), bias = min) keeps such a grid exactly and is never worse in range use.
The packed layout is MLX's own, so `mx.dequantize` and `mx.quantized_matmul` read it unchanged."""
from __future__ import annotations

import mlx.core as mx

from core.quant.spec import QuantSpec


def pack(q: mx.array, bits: int) -> mx.array:
    """Pack integers < 2**bits into uint32 words as one LSB-first bit stream per row (MLX's layout)."""
    rows, cols = q.shape
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = mx.arange(per_word, dtype=mx.uint32) * bits
        return (q.reshape(rows, cols // per_word, per_word) << shifts).sum(axis=-1).astype(mx.uint32)
    bit_planes = (q[..., None] >> mx.arange(bits, dtype=mx.uint32)) & 1  # rows, cols, bits
    bit_planes = bit_planes.reshape(rows, cols * bits // 32, 32)
    return (bit_planes << mx.arange(32, dtype=mx.uint32)).sum(axis=-1).astype(mx.uint32)


def stored_dtype(spec: QuantSpec) -> mx.Dtype:
    """The dtype affine scales and biases are stored in (spec.scale_dtype). Quantized kernels take float16
    scales next to float32 activations unchanged; half-precision activations need scales of their own dtype."""
    return getattr(mx, spec.scale_dtype)


def _minmax_affine(w: mx.array, bits: int, group_size: int, stored: mx.Dtype) -> tuple[mx.array, mx.array, mx.array]:
    rows, cols = w.shape
    groups = w.astype(mx.float32).reshape(rows, cols // group_size, group_size)
    low, high = groups.min(axis=-1), groups.max(axis=-1)
    levels = 2**bits - 1
    # Round scale and bias to their stored dtype first, so the integers are chosen against the stored grid.
    scales = ((high - low) / levels).astype(stored)
    biases = low.astype(stored)
    s32, b32 = scales.astype(mx.float32)[..., None], biases.astype(mx.float32)[..., None]
    safe = mx.where(s32 > 0, s32, 1.0)  # a constant group: every weight equals the bias
    q = mx.clip(mx.round((groups - b32) / safe), 0, levels).astype(mx.uint32)
    return pack(q.reshape(rows, cols), bits), scales, biases


def _symmetric_affine(w: mx.array, bits: int, group_size: int, stored: mx.Dtype) -> tuple[mx.array, mx.array, mx.array]:
    """A grid centred on zero, in MLX's affine form: bias = -2^(b-1) * scale. The weight of largest magnitude lands
    on the grid's end point -2^(b-1) (a negative scale when it is positive), so all 2^b levels are used, as
    llama.cpp's Q4_0 and Q5_0 do."""
    rows, cols = w.shape
    groups = w.astype(mx.float32).reshape(rows, cols // group_size, group_size)
    extreme = mx.take_along_axis(groups, mx.abs(groups).argmax(axis=-1, keepdims=True), axis=-1)[..., 0]
    half = 2 ** (bits - 1)
    scales = (extreme / -half).astype(stored)
    biases = (-half * scales.astype(mx.float32)).astype(stored)  # exact: a power-of-two multiple
    s32, b32 = scales.astype(mx.float32)[..., None], biases.astype(mx.float32)[..., None]
    safe = mx.where(s32 != 0, s32, 1.0)  # an all-zero group: every weight equals the (zero) bias
    q = mx.clip(mx.round((groups - b32) / safe), 0, 2**bits - 1).astype(mx.uint32)
    return pack(q.reshape(rows, cols), bits), scales, biases


def quantize_matrix(w: mx.array, spec: QuantSpec) -> tuple[mx.array, mx.array, mx.array | None]:
    """(packed weight, scales, biases or None) for a 2-D weight whose columns divide by the group size."""
    if spec.mode != "affine":
        wq, scales = mx.quantize(w, group_size=spec.group_size, bits=spec.bits, mode=spec.mode)
        return wq, scales, None
    if spec.quantizer == "mlx":
        wq, scales, biases = mx.quantize(w.astype(stored_dtype(spec)), group_size=spec.group_size, bits=spec.bits)
        return wq, scales, biases
    grid = _symmetric_affine if spec.quantizer == "symmetric" else _minmax_affine
    # Row blocks bound the bit-plane temporary of 3/5/6-bit packing on large embeddings.
    parts = [grid(w[i:i + 8192], spec.bits, spec.group_size, stored_dtype(spec))
             for i in range(0, w.shape[0], 8192)]
    if len(parts) == 1:
        return parts[0]
    return tuple(mx.concatenate([p[k] for p in parts]) for k in range(3))


def dequantize_matrix(wq, scales, biases, spec: QuantSpec, dtype=mx.float32) -> mx.array:
    """The weights the packed form stands for, computed in float32 (scales widened first), then cast."""
    if spec.mode != "affine":
        return mx.dequantize(wq, scales, group_size=spec.group_size, bits=spec.bits, mode=spec.mode).astype(dtype)
    w = mx.dequantize(wq, scales.astype(mx.float32), biases.astype(mx.float32),
                      group_size=spec.group_size, bits=spec.bits)
    return w.astype(dtype)
