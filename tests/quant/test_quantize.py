"""The quantizers, the quantized convolution and model conversion, on small random tensors and models."""
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from core.errors import LabError
from core.quant.conv import QuantizedConv2d
from core.quant.layers import bits_per_weight, dequantize_model, quantize_model, size_bytes
from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.spec import AFFINE_BITS, FLOAT_MODES, QuantSpec


def _weights(rows=64, cols=256, seed=0):
    return mx.array(np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32))


@pytest.mark.parametrize("bits", AFFINE_BITS)
@pytest.mark.parametrize("group", (32, 64, 128))
def test_minmax_affine_is_round_to_nearest_on_the_min_max_grid(bits, group):
    w = _weights()
    spec = QuantSpec(bits, group)
    wq, scales, biases = quantize_matrix(w, spec)
    assert wq.dtype == mx.uint32 and wq.shape == (64, 256 * bits // 32)
    assert scales.dtype == mx.float16 and scales.shape == (64, 256 // group)
    deq = np.array(dequantize_matrix(wq, scales, biases, spec))
    groups = np.array(w).reshape(64, -1, group)
    s = np.array(scales.astype(mx.float32))[..., None]
    b = np.array(biases.astype(mx.float32))[..., None]
    expected = np.clip(np.round((groups - b) / s), 0, 2**bits - 1) * s + b
    np.testing.assert_allclose(deq.reshape(groups.shape), expected, atol=1e-6)
    # Every weight within half a step (plus fp16 rounding of the grid) of the original.
    assert np.all(np.abs(deq.reshape(groups.shape) - groups) <= s / 2 + 2e-3 * np.abs(s) + 1e-7)


def test_minmax_keeps_an_existing_4bit_grid_exactly_where_mx_quantize_moves_it():
    """The Q4_1 re-quantization question (docs/methods.md): a tensor already on a 4-bit min-max grid."""
    rng = np.random.default_rng(1)
    d = rng.uniform(0.01, 0.05, (32, 8, 1)).astype(np.float16).astype(np.float32)
    m = -rng.uniform(0.1, 0.4, (32, 8, 1)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (32, 8, 32))
    q[..., 0], q[..., 1] = 0, 15  # each group spans its whole grid, as llama.cpp's Q4_1 rounding makes it
    w = mx.array((q * d + m).reshape(32, 256).astype(np.float32))
    ours = dequantize_matrix(*quantize_matrix(w, QuantSpec(4, 32)), QuantSpec(4, 32))
    theirs = dequantize_matrix(*quantize_matrix(w, QuantSpec(4, 32, quantizer="mlx")), QuantSpec(4, 32))
    assert float(mx.abs(ours - w).max()) < 1e-6
    assert float(mx.abs(theirs - w).max()) > 1e-3


@pytest.mark.parametrize("mode", FLOAT_MODES)
def test_float_modes_roundtrip_close(mode):
    w = _weights()
    spec = QuantSpec(FLOAT_MODES[mode][0], None, mode).validated()
    deq = dequantize_matrix(*quantize_matrix(w, spec), spec)
    rel = float(mx.abs(deq - w).mean() / mx.abs(w).mean())
    assert rel < (0.2 if spec.bits == 4 else 0.05)


@pytest.mark.parametrize("bits,group,mode", [(7, None, "affine"), (4, 48, "affine"), (8, None, "mxfp4"),
                                              (4, 64, "nvfp4"), (4, None, "int4"), (1, None, "affine"), (32, None, "affine")])
def test_bad_specs_are_rejected_with_a_message(bits, group, mode):
    with pytest.raises(LabError, match=r"\S"):
        QuantSpec(bits, group, mode).validated()


def test_defaults_fill_in():
    assert QuantSpec(4).validated() == QuantSpec(4, 64, "affine")
    assert QuantSpec(4, None, "nvfp4").validated().group_size == 16
    assert QuantSpec(16, 64).validated().full_precision


@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(3, 64), QuantSpec(8, 128), QuantSpec(4, 32, "mxfp4"),
                                  QuantSpec(4, 16, "nvfp4"), QuantSpec(8, 32, "mxfp8")])
@pytest.mark.parametrize("stride", (1, 2))
def test_quantized_conv_paths_agree(spec, stride):
    mx.random.seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=stride, padding=1, bias=True)  # K = 144 needs padding for every group
    x = mx.random.normal((2, 9, 9, 16))
    q = QuantizedConv2d.from_conv(conv, spec, quantize_matrix)
    assert q.padded_k % spec.group_size == 0 and q.padded_k >= 144
    y_dequant = q(x)
    q.compute = "qmm"
    y_kernel = q(x)
    y_float = q.to_float()(x)
    assert y_dequant.shape == conv(x).shape
    np.testing.assert_allclose(np.array(y_kernel), np.array(y_dequant), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(y_float), np.array(y_dequant), rtol=1e-5, atol=1e-5)
    # and it is still the same convolution, up to the quantization error
    err = float(mx.abs(y_float - conv(x)).mean() / mx.abs(conv(x)).mean())
    assert err < 0.2


def _tiny_llama(hidden=128, vocab=256, layers=2):
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
                           intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=vocab, tie_word_embeddings=True)
    mx.random.seed(0)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


@pytest.mark.parametrize("spec", [QuantSpec(4, 64), QuantSpec(8, 32), QuantSpec(3, 32), QuantSpec(4, 32, "mxfp4")])
def test_dequantized_model_matches_quantized_kernels(spec):
    """The evaluation shortcut: a model with de-quantized float weights gives the quantized kernels' logits."""
    model = _tiny_llama()
    report = quantize_model(model, spec)
    assert len(report.quantized) == 2 * 7 + 1 and not report.kept
    tokens = mx.array(np.random.default_rng(0).integers(0, 256, (2, 24)))
    kernel_logits = model(tokens)
    dequantize_model(model)
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for m in model.modules())
    np.testing.assert_allclose(np.array(model(tokens)), np.array(kernel_logits), rtol=1e-4, atol=1e-4)


def test_layers_that_do_not_fit_the_group_are_reported_not_skipped_silently():
    model = _tiny_llama(hidden=96)  # 96 does not divide by 64; the MLP's 192 does
    report = quantize_model(model, QuantSpec(4, 64))
    assert "model.embed_tokens" in report.kept and "model.layers.0.self_attn.q_proj" in report.kept
    assert "does not divide by group size 64" in report.kept["model.layers.0.mlp.up_proj"]
    assert "model.layers.0.mlp.down_proj" in report.quantized
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert "kept in full precision" in report.summary()


def test_keep_first_and_last():
    model = _tiny_llama()
    report = quantize_model(model, QuantSpec(4, 64), keep={"model.embed_tokens"})
    assert report.kept == {"model.embed_tokens": "kept in full precision on request"}
    assert isinstance(model.model.embed_tokens, nn.Embedding)


def test_size_and_bits_per_weight_count_scales_and_biases():
    layer = nn.Linear(512, 256, bias=False)
    holder = nn.Module()
    holder.proj = layer
    assert bits_per_weight(holder) == pytest.approx(32.0)
    quantize_model(holder, QuantSpec(4, 64))
    # 4 bits + one fp16 scale and one fp16 bias per 64 weights = 4.5 bits per weight
    assert size_bytes(holder) == 512 * 256 // 2 + 2 * 2 * 512 * 256 // 64
    assert bits_per_weight(holder) == pytest.approx(4.5)
