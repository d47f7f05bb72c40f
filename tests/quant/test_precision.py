"""The compute dtype: a quantized model computes in the dtype it is deployed in, every module of it, whether it
was cast by the lab (cast_to) or by a plain `model.set_dtype`; evaluation measures speed in that dtype and quality
in float32; and what half precision itself costs in perplexity."""
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from core.quant.kernels import row_adaptive_layers
from core.quant.layers import quantize_model
from core.quant.precision import activation_dtype, cast_to, computing_in
from core.quant.spec import QuantSpec
from tests.conftest import needs_mirror

HALF = ("bfloat16", "float16")
ALL = ("float32", *HALF)


@contextmanager
def recorded_outputs(model: nn.Module):
    """(class name, dtype) of every array any module of `model` returns while the block runs, the tied output
    head's `as_linear` included: class-level hooks, removed afterwards."""
    seen: list[tuple[str, mx.Dtype]] = []

    def hooked(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            for value in out if isinstance(out, tuple) else (out,):
                if isinstance(value, mx.array):
                    seen.append((f"{type(self).__name__}.{name}", value.dtype))
            return out
        return original, wrapper

    patched = []
    for cls in {type(m) for _, m in model.named_modules()}:
        for name in ("__call__", "as_linear"):
            if hasattr(cls, name):
                own = cls.__dict__.get(name)
                original, wrapper = hooked(cls, name)
                setattr(cls, name, wrapper)
                patched.append((cls, name, own))
    try:
        yield seen
    finally:
        for cls, name, own in patched:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)


def _tiny_llama(tied: bool = True):
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=256,
                           tie_word_embeddings=tied)
    mx.random.seed(0)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def _decode_dtypes(model) -> tuple[list, list]:
    """Module output dtypes over a prefill and one decode step, and the KV cache's dtypes."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    with recorded_outputs(model) as seen:
        logits = model(mx.array([[1, 2, 3, 4, 5]]), cache=cache)
        logits = model(logits[:, -1:].argmax(-1), cache=cache)
        mx.eval(logits)
    kv = [a.dtype for c in cache for a in c.state if isinstance(a, mx.array)]
    return seen, kv


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("how", ["cast_to", "set_dtype"])
def test_every_activation_of_a_quantized_llama_is_in_the_compute_dtype(dtype, how):
    """Quantized linear layers, the (lab's exact) quantized embedding and the head tied to it, norms, attention,
    MLP and the KV cache all compute in the chosen dtype."""
    model = _tiny_llama(tied=True)
    if how == "cast_to":  # the lab's path: scales stored in the dtype's matching 16-bit type
        quantize_model(model, QuantSpec(4, 32, scale_dtype=QuantSpec.scales_for(dtype)))
        cast_to(model, dtype)
        for layer in row_adaptive_layers(model):  # the 5-token prefill takes the de-quantized path where it may
            layer.dense_from_rows = 2
    else:  # a user's: quantized for float32 compute (float16 scales), then mlx's own set_dtype
        quantize_model(model, QuantSpec(4, 32))
        model.set_dtype(getattr(mx, dtype))
    want = getattr(mx, dtype)
    assert model.model.embed_tokens.compute_dtype == want
    seen, kv = _decode_dtypes(model)
    names = {name for name, _ in seen}
    assert {"ExactQuantizedEmbedding.__call__", "ExactQuantizedEmbedding.as_linear", "AdaptiveQuantizedLinear.__call__",
            "RMSNorm.__call__", "Attention.__call__", "MLP.__call__", "Model.__call__"} <= names, names
    wrong = sorted({(name, str(d)) for name, d in seen if d != want})
    assert not wrong, wrong
    assert kv and all(d == want for d in kv), kv


@pytest.mark.parametrize("dtype", HALF)
def test_scales_match_the_compute_dtype_and_float32_keeps_float16_scales(dtype):
    model = _tiny_llama()
    quantize_model(model, QuantSpec(4, 32, scale_dtype=QuantSpec.scales_for(dtype)))
    arrays = dict(tree_flatten(cast_to(model, dtype).parameters()))
    floats = {k: v.dtype for k, v in arrays.items() if mx.issubdtype(v.dtype, mx.floating)}
    assert set(floats.values()) == {getattr(mx, dtype)}, floats
    assert all(v.dtype == mx.uint32 for k, v in arrays.items() if k.endswith(".weight") and "norm" not in k)
    cast_to(model, "float32")
    scales = {v.dtype for k, v in tree_flatten(model.parameters()) if k.endswith((".scales", ".biases"))}
    assert scales == {mx.float16}  # 16-bit scales stay 16-bit: float32 compute does not grow the model


def test_computing_in_restores_every_array_exactly():
    model = _tiny_llama()
    quantize_model(model, QuantSpec(4, 32))
    before = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    dtypes = {k: v.dtype for k, v in tree_flatten(model.parameters())}
    with computing_in(model, "bfloat16"):
        assert activation_dtype(model) == mx.bfloat16
        assert model(mx.array([[1, 2, 3]])).dtype == mx.bfloat16
    after = dict(tree_flatten(model.parameters()))
    assert {k: v.dtype for k, v in after.items()} == dtypes
    for k, v in after.items():
        np.testing.assert_array_equal(np.array(v.astype(mx.float32)), before[k], err_msg=k)


@pytest.mark.parametrize("dtype", ALL)
def test_every_activation_of_a_deployed_resnet_is_in_the_compute_dtype(dtype):
    """The project's own ResNet-20 (weights in the repository), 4-bit with its first layer kept in full
    precision: quantized convolutions, the kept one, BatchNorm, blocks and the classifier."""
    from core.models import resnet
    from core.quant.config import QuantConfig
    from core.quant.recipe import quantize

    q = quantize(QuantConfig("resnet20-mlxq", bits=4, group_size=32, keep_first=True, dtype=dtype))
    model = q.deploy()
    x = resnet.preprocess(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    with recorded_outputs(model) as seen:
        mx.eval(model(x.astype(activation_dtype(model))))
    names = {name for name, _ in seen}
    assert {"QuantizedConv2d.__call__", "Conv2d.__call__", "BatchNorm.__call__", "AdaptiveQuantizedLinear.__call__"} <= names
    want = getattr(mx, dtype)
    wrong = sorted({(name, str(d)) for name, d in seen if d != want})
    assert not wrong, wrong


@needs_mirror
def test_cpu_eval_row_names_both_dtypes_and_the_deployed_size(tmp_path):
    """An evaluation in bfloat16: speed and size measured as deployed (BatchNorm statistics and biases in 16
    bits, so smaller than the float32 row), quality in float32 and the row says so."""
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    rows = {d: run_eval(EvalConfig("resnet20-mlxq", bits=4, group_size=32, dtype=d, limit=200))
            for d in ("float32", "bfloat16")}
    for dtype, row in rows.items():
        assert (row.compute_dtype, row.quality_dtype) == (dtype, "float32")
        assert row.throughput > 0 and f"computed in {dtype}" in row.bench_protocol
        assert "computed in float32" in row.protocol
    assert rows["bfloat16"].size_bytes < rows["float32"].size_bytes
    # The same integers on a grid stored in bfloat16 instead of float16: the accuracy barely moves.
    assert abs(rows["bfloat16"].value - rows["float32"].value) <= 2.0


def test_the_compute_dtype_defaults_to_the_backend_and_mlxq_dtype_overrides_it(monkeypatch):
    from core import runtime
    from core.errors import LabError
    from core.quant.config import QuantConfig

    monkeypatch.delenv("MLXQ_DTYPE", raising=False)
    expected = "float32" if runtime.backend() == "cpu" else "bfloat16"
    cfg = QuantConfig("resnet20-mlxq", bits=4).validated()
    assert cfg.dtype == expected and cfg.spec.scale_dtype == QuantSpec.scales_for(expected)
    monkeypatch.setenv("MLXQ_DTYPE", "bfloat16")
    cfg = QuantConfig("resnet20-mlxq", bits=4).validated()
    assert (cfg.dtype, cfg.spec.scale_dtype) == ("bfloat16", "bfloat16")
    assert QuantConfig("resnet20-mlxq", bits=4, dtype="float16").validated().dtype == "float16"  # --dtype wins
    monkeypatch.setenv("MLXQ_DTYPE", "float64")
    with pytest.raises(LabError, match="MLXQ_DTYPE"):
        QuantConfig("resnet20-mlxq", bits=4).validated()
    with pytest.raises(LabError, match="--dtype"):
        QuantConfig("resnet20-mlxq", bits=4, dtype="int8").validated()


# What half precision itself costs: the same quantized weights, de-quantized, scored with half-precision weights and
# activations against float32 (MLX's CPU quantized matmul has no fast half-precision path, so the float layers
# stand in for the kernels; they hold the same values, up to the half-precision rounding of each weight).
HALF_PRECISION_PPL_TOLERANCE = 0.01


@needs_mirror
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_perplexity_stays_within_tolerance_of_float32(smollm2_dir, dtype):
    from core import data
    from core.eval import quality
    from core.quant.config import QuantConfig
    from core.quant.layers import dequantize_model
    from core.quant.recipe import quantize

    q = quantize(QuantConfig("smollm2-135m-instruct", bits=4, group_size=64, dtype=dtype))
    model = dequantize_model(q.model)
    tokens = quality.wikitext_tokens(q.config.model, q.tokenizer)
    windows = quality.chunk_windows(tokens, 128, None)
    windows = windows[data.spread_indices(len(windows), 2)]
    full = quality.perplexity(model, windows)
    with computing_in(model, dtype):
        half = quality.perplexity(model, windows)
    print(f"{dtype}: PPL {half.ppl:.4f} vs float32 {full.ppl:.4f} ({half.ppl / full.ppl - 1:+.3%})")
    assert abs(half.ppl / full.ppl - 1) < HALF_PRECISION_PPL_TOLERANCE, (dtype, full.ppl, half.ppl)
    assert half.ppl != full.ppl  # it did compute in half precision
