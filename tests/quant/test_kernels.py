"""The kernel choice for quantized layers: de-quantize + float32 matmul for many rows on a CPU computes what MLX's
packed kernel computes, only the rows decide which runs, and the crossover is measured, not assumed."""
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from core import runtime
from core.quant.kernels import (CANDIDATE_ROWS, AdaptiveQuantizedLinear, dense_pays, dense_weight,
                                measured_crossover, row_adaptive_layers, use_measured_kernels)
from core.quant.layers import ExactQuantizedEmbedding, quantize_model
from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.spec import QuantSpec


class TiedLM(nn.Module):
    """Embedding, two linear layers and the embedding as the output layer (SmolLM2's tied head)."""

    def __init__(self, vocab=512, dims=256, hidden=512):
        super().__init__()
        self.embed = nn.Embedding(vocab, dims)
        self.up, self.down = nn.Linear(dims, hidden), nn.Linear(hidden, dims, bias=False)

    def __call__(self, tokens):
        h = self.embed(tokens)
        return self.embed.as_linear(h + self.down(nn.silu(self.up(h))))


def quantized_lm(spec: QuantSpec) -> TiedLM:
    mx.random.seed(0)
    model = TiedLM()
    quantize_model(model, spec)
    return model


SPECS = [QuantSpec(4, 64), QuantSpec(8, 32), QuantSpec(3, 64), QuantSpec(4, None, "mxfp4").validated()]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.tag)
def test_dense_rows_compute_what_the_packed_kernel_computes(spec):
    model = quantized_lm(spec)
    layers = row_adaptive_layers(model)
    assert {type(m) for m in layers} == {AdaptiveQuantizedLinear, ExactQuantizedEmbedding}
    tokens = mx.array(np.random.default_rng(1).integers(0, 512, (3, 17)))
    packed = model(tokens)
    for layer in layers:
        layer.dense_from_rows = 2
    dense = model(tokens)
    assert dense.dtype == packed.dtype == mx.float32
    scale = float(mx.abs(packed).max())
    assert float(mx.abs(dense - packed).max()) <= 1e-5 * scale + 1e-6
    assert (dense.argmax(-1) == packed.argmax(-1)).all()


@pytest.mark.parametrize("spec", [QuantSpec(2, 32), QuantSpec(4, 64), QuantSpec(8, 128), QuantSpec(4, 64, quantizer="symmetric"),
                                  QuantSpec(3, 64), QuantSpec(6, 32)], ids=lambda s: s.tag)
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
def test_the_dense_weight_is_the_de_quantized_weight_bit_for_bit(spec, scale_dtype):
    spec = QuantSpec(spec.bits, spec.group_size, quantizer=spec.quantizer, scale_dtype=scale_dtype).validated()
    w = 0.1 * mx.random.normal((96, 256), key=mx.random.key(spec.bits))
    packed = quantize_matrix(w, spec)
    assert mx.array_equal(dense_weight(*packed, spec), dequantize_matrix(*packed, spec)).item()


def test_only_enough_float32_rows_take_the_dense_path():
    x = mx.zeros((2, 3, 64))  # six rows
    assert dense_pays(x, 6) and dense_pays(x, 4) and not dense_pays(x, 7)
    assert not dense_pays(x, None)
    assert not dense_pays(x.astype(mx.bfloat16), 2)  # no BLAS for half precision on a CPU


def test_the_crossover_is_measured_once_per_format_and_enabled_and_disabled():
    crossover = measured_crossover(4, 64, "affine")
    # On a CPU with a tuned BLAS, MLX's packed kernel costs about as much per row as de-quantizing the whole weight:
    # the dense path wins from a handful of rows. (On Metal/CUDA the measurement returns None; with MLX's bundled
    # reference BLAS the dense path may never win.)
    if mx.default_device() == mx.cpu and runtime.fast_blas_active():
        assert crossover in CANDIDATE_ROWS
    assert measured_crossover(4, 64, "affine") is crossover  # cached: measured once per process
    model = use_measured_kernels(quantized_lm(QuantSpec(4, 64)))
    assert {m.dense_from_rows for m in row_adaptive_layers(model)} == {crossover}
    use_measured_kernels(model, enabled=False)
    assert {m.dense_from_rows for m in row_adaptive_layers(model)} == {None}
