"""One weight layer as a GGUF tensor: the lab's packed grid laid out again as GGUF blocks where a type holds it
exactly, Q8_0 from the de-quantized weights where none does, F32 for float layers."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core.quant.layers import spec_of
from core.quant.quantizers import dequantize_matrix

GGUF_BLOCK = 32  # every GGUF type written here stores blocks of 32 weights
# llama.cpp's general.file_type for the type most weights are in
FILE_TYPES = {"F32": 0, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}


def _rows_permutation(rows: int, heads: int) -> np.ndarray:
    """llama.cpp's order for q_proj/k_proj rows (its converter's RoPE permutation): new row r is old row idx[r]."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _float_weight(module: nn.Module) -> np.ndarray:
    if hasattr(module, "bits"):
        w = dequantize_matrix(module.weight, module.scales, module.get("biases"), spec_of(module))
    else:
        w = module.weight.astype(mx.float32)
    return np.array(w, dtype=np.float32)


def encode_layer(gguf, module: nn.Module, heads: int | None, dequantize_all: bool) -> tuple[np.ndarray, str, bool]:
    """(the tensor as GGUF stores it, its GGML type, whether it holds the lab's weights exactly)."""
    if isinstance(module, nn.RMSNorm):
        return np.array(module.weight.astype(mx.float32)), "F32", True
    exact = None if dequantize_all else exact_blocks(module)
    if exact is not None:
        data, qtype = exact
        return (data[_rows_permutation(len(data), heads)] if heads else data), qtype, True
    w = _float_weight(module)
    if heads:
        w = w[_rows_permutation(len(w), heads)]
    if dequantize_all or not hasattr(module, "bits"):
        return w, "F32", True
    if w.shape[1] % GGUF_BLOCK:
        return w, "F32", False
    return gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), "Q8_0", False


def _integers(module: nn.Module) -> np.ndarray:
    """The layer's packed integers, unpacked (MLX's de-quantization with scale 1 and bias 0 is exact)."""
    ones = mx.ones(module.scales.shape, dtype=mx.float32)
    q = mx.dequantize(module.weight, ones, mx.zeros_like(ones), group_size=module.group_size, bits=module.bits)
    return np.array(q).astype(np.uint8)


def _as_float16(a: mx.array) -> np.ndarray | None:
    """The 16-bit scales as float16, or None when one of them has no exact float16 form (bfloat16 outside it)."""
    wide = np.array(a.astype(mx.float32))
    half = wide.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), wide) else None


def exact_blocks(module: nn.Module) -> tuple[np.ndarray, str] | None:
    """The layer's grid as GGUF blocks (rows x bytes) with its type, or None when no GGUF type holds it."""
    if not hasattr(module, "bits") or module.mode != "affine" or module.group_size % GGUF_BLOCK:
        return None
    bits = module.bits
    scales = _as_float16(module.scales)
    biases = _as_float16(module.biases)
    if scales is None or biases is None:
        return None
    symmetric = np.array_equal(biases.astype(np.float32), -(2.0 ** (bits - 1)) * scales.astype(np.float32))
    qtype = {(4, True): "Q4_0", (4, False): "Q4_1", (5, True): "Q5_0", (5, False): "Q5_1", (8, True): "Q8_0"}
    if (bits, symmetric) not in qtype:
        return None
    q = _integers(module)
    rows, cols = q.shape
    per_group = module.group_size // GGUF_BLOCK
    q = q.reshape(rows, cols // GGUF_BLOCK, GGUF_BLOCK)
    d = np.repeat(scales, per_group, axis=1)[..., None].view(np.uint8)  # rows, blocks, 2
    m = np.repeat(biases, per_group, axis=1)[..., None].view(np.uint8)
    if bits == 8:
        parts = [d, (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
    else:
        low = q & 0x0F
        packed = [low[..., :16] | (low[..., 16:] << 4)]  # byte j: weight j (low nibble) and weight j+16
        if bits == 5:  # first, a 32-bit word whose bit j is the fifth bit of weight j
            packed.insert(0, np.packbits((q >> 4) & 1, axis=-1, bitorder="little"))
        parts = [d, *packed] if symmetric else [d, m, *packed]
    return np.concatenate(parts, axis=-1).reshape(rows, -1), qtype[(bits, symmetric)]
