"""Which kernel multiplies activations by a quantized weight.

MLX's quantized matmul reads the packed weight directly. On Metal and CUDA that is the fast path at any batch. On
a CPU it has no SIMD or BLAS path and its cost grows with every row of input, while de-quantizing the weight once
and handing the product to BLAS costs nearly the same for one row or sixty-four. So on a CPU a layer fed enough
rows (a prompt chunk, a batch of decoding sequences) de-quantizes its weight for that call and multiplies in
float32, and a single decoding sequence keeps the packed kernel. The weights stay packed in memory; only one
layer's float copy exists at a time, for the length of its product. Where the two cross is measured on this
machine, once per process and quantization format, never assumed."""
from __future__ import annotations

import functools
import time

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.spec import SCALE_DTYPES, QuantSpec

CANDIDATE_ROWS = (2, 4, 8, 16, 32, 64)
PROBE_SHAPE = (1024, 1024)  # a weight of about a small model's hidden size: the measurement takes milliseconds
PROBE_TRIALS = 3
CLEAR_WIN = 0.8  # switch only where the dense path is clearly faster, so timing noise cannot flip the choice


class RowAdaptive:
    """Mixin for quantized layers with a packed `weight`, `scales`, optional `biases`, `bits`, `group_size` and
    `mode`: `dense_from_rows` (None: always the packed kernel) is set by `use_measured_kernels`."""

    dense_from_rows: int | None = None

    def rows_matmul(self, x: mx.array) -> mx.array:
        """x @ W.T for the weight this layer stands for, by the kernel chosen for this many rows."""
        # the attribute test first: on a GPU it is always None, and this runs for every layer of every step
        if self.dense_from_rows is not None and dense_pays(x, self.dense_from_rows):
            return x @ dense_weight(self.weight, self.scales, self.get("biases"),
                                    QuantSpec(self.bits, self.group_size, self.mode)).T
        return mx.quantized_matmul(x, self.weight, self.scales, self.get("biases"), transpose=True,
                                   group_size=self.group_size, bits=self.bits, mode=self.mode)


def dense_weight(wq: mx.array, scales: mx.array, biases: mx.array | None, spec: QuantSpec) -> mx.array:
    """The float32 weight, equal bit for bit to `dequantize_matrix`. For 2, 4 and 8 bits (whole values per 32-bit
    word) it unpacks with shifts and masks, element-wise ops that MLX's CPU runs faster than its generic
    de-quantize loop; other widths and the float modes take `dequantize_matrix`."""
    if spec.mode != "affine" or 32 % spec.bits:
        return dequantize_matrix(wq, scales, biases, spec)
    rows = wq.shape[0]
    shifts = mx.arange(32 // spec.bits, dtype=mx.uint32) * spec.bits
    q = ((wq[..., None] >> shifts) & (2**spec.bits - 1)).reshape(rows, -1, spec.group_size).astype(mx.float32)
    w = q * scales.astype(mx.float32)[..., None] + biases.astype(mx.float32)[..., None]
    return w.reshape(rows, -1)


def dense_pays(x: mx.array, dense_from_rows: int | None) -> bool:
    """Float32 activations only: BLAS is a float32 path here (half-precision products are slower still)."""
    return dense_from_rows is not None and x.dtype == mx.float32 and x.size >= dense_from_rows * x.shape[-1]


class AdaptiveQuantizedLinear(RowAdaptive, nn.QuantizedLinear):
    """MLX's QuantizedLinear (same arrays, same file format) that picks its kernel by the number of rows."""

    def __call__(self, x: mx.array) -> mx.array:
        y = self.rows_matmul(x)
        return y + self["bias"] if "bias" in self else y


def measured_crossover(bits: int, group_size: int, mode: str, scale_dtype: str = "float16") -> int | None:
    """The fewest input rows at which de-quantize + float32 matmul beats MLX's quantized matmul on this machine,
    measured once per process on a probe weight of this format; None on a GPU, or when the packed kernel always
    wins."""
    return _crossover(bits, group_size, mode, scale_dtype)


@functools.cache
def _crossover(bits: int, group_size: int, mode: str, scale_dtype: str) -> int | None:
    if mx.default_device() != mx.cpu:
        return None
    spec = QuantSpec(bits, group_size, mode, scale_dtype=scale_dtype)
    w = 0.02 * mx.random.normal(PROBE_SHAPE, key=mx.random.key(0))
    wq, scales, biases = quantize_matrix(w, spec)
    mx.eval(wq, scales, biases)

    def best_ms(fn) -> float:
        mx.eval(fn())  # warm-up
        samples = []
        for _ in range(PROBE_TRIALS):
            start = time.perf_counter()
            mx.eval(fn())
            samples.append(time.perf_counter() - start)
        return min(samples)

    for rows in CANDIDATE_ROWS:
        x = mx.random.normal((rows, PROBE_SHAPE[1]), key=mx.random.key(rows))
        packed = best_ms(lambda: mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=group_size,
                                                     bits=bits, mode=mode))
        dense = best_ms(lambda: x @ dense_weight(wq, scales, biases, spec).T)
        if dense < CLEAR_WIN * packed:
            return rows
    return None


def row_adaptive_layers(model: nn.Module) -> list[RowAdaptive]:
    return [m for _, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module) if isinstance(m, RowAdaptive)]


def use_measured_kernels(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Let each row-adaptive layer switch to de-quantize + BLAS at its format's measured crossover (in place);
    `enabled=False` puts every layer back on MLX's packed kernel."""
    for layer in row_adaptive_layers(model):
        # affine scales are stored in 16 bits (QuantSpec.scale_dtype); the float modes' scales are their own
        scale_dtype = str(layer.scales.dtype).removeprefix("mlx.core.") if layer.mode == "affine" else "float16"
        layer.dense_from_rows = (measured_crossover(layer.bits, layer.group_size, layer.mode, scale_dtype)
                                 if enabled and scale_dtype in SCALE_DTYPES else None)
    return model
