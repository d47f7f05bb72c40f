"""Perplexity with the llama.cpp protocol on SmolLM2-135M, and what re-quantizing its Q4_1 weights costs."""
import mlx.core as mx
import numpy as np
import pytest

from conftest import needs_mirror
from core.eval import quality as evaluate
from core.eval.config import EvalConfig
from core.eval.pipeline import run_eval
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.layers import dequantize_model, quantize_model
from core.quant.spec import QuantSpec

SMOLLM2 = "smollm2-135m-instruct"


def test_chunking_follows_llama_cpp():
    tokens = np.arange(1, 1300)
    w = evaluate.chunk_windows(tokens, 512, bos_id=0)
    assert w.shape == (2, 512) and (w[:, 0] == 0).all() and w[1, 1] == 514  # the tail that fills no chunk is dropped
    assert evaluate.chunk_windows(tokens, 512, None)[1, 0] == 513


def test_standard_error_formula():
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    ppl, se = evaluate.ppl_with_stderr(losses)
    assert ppl == pytest.approx(np.exp(2.5))
    assert se == pytest.approx(np.exp(2.5) * np.std(losses, ddof=1) / 2)


@needs_mirror
def test_first_eight_chunks_match_the_reference_measurement(smollm2_dir):
    """../shared/docs/PLATFORM.md: 24.49 in MLX with the de-quantized weights in fp32 (llama.cpp itself: 24.61,
    its CPU kernels round activations to 8 bits). SmolLM2's tokenizer adds no BOS, so no chunk gets one."""
    model, tokenizer = load_baseline(resolve(SMOLLM2))
    tokens = evaluate.wikitext_tokens(SMOLLM2, tokenizer)
    assert len(tokens) == 303415
    assert evaluate.chunk_bos("auto", tokenizer) is None
    r = evaluate.perplexity(model, evaluate.chunk_windows(tokens, 512, None)[:8])
    assert r.n_tokens == 8 * 255
    assert r.ppl == pytest.approx(24.49, abs=0.01)
    assert 1.0 < r.stderr < 2.5


@needs_mirror
def test_requantizing_the_q4_1_linear_layers_at_4bit_g32_is_lossless_with_minmax():
    """The Q4_1 answer in docs/methods.md: mx.quantize moves the zero point and so the grid; min-max keeps it."""
    ours = run_eval(EvalConfig(SMOLLM2, bits=4, group_size=32, keep_first=True, limit=1, bench=False))
    theirs = run_eval(EvalConfig(SMOLLM2, bits=4, group_size=32, keep_first=True, limit=1, bench=False,
                                 quantizer="mlx"))
    assert ours.kl_mean < 1e-6 and ours.value == pytest.approx(ours.reference_value, rel=1e-5)
    assert theirs.kl_mean > 0.05 and theirs.value > 1.05 * theirs.reference_value
    assert ours.layers_kept == {"model.embed_tokens": "kept in full precision on request"}


@needs_mirror
def test_int8_is_within_one_percent_of_full_precision():
    r = run_eval(EvalConfig(SMOLLM2, bits=8, limit=2, bench=False))
    assert r.metric == "perplexity" and r.n == 2 * 255
    assert abs(r.value / r.reference_value - 1) < 0.01
    assert 0 < r.kl_mean < 0.01
    assert r.bits_per_weight == pytest.approx(8.5, abs=0.02)  # 8 bits + an fp16 scale and bias per 64


@needs_mirror
def test_group_128_reports_the_layers_it_cannot_quantize():
    r = run_eval(EvalConfig(SMOLLM2, bits=4, group_size=128, limit=1, bench=False))
    assert "does not divide by group size 128" in r.layers_kept["model.layers.0.self_attn.q_proj"]
    assert "model.layers.0.mlp.down_proj" not in r.layers_kept  # 1536 = 12 x 128
    assert r.layers_quantized == 30  # only the down projections fit


def test_quantized_kernels_and_dequantized_weights_give_the_same_perplexity(smollm2_dir):
    model, tokenizer = load_baseline(resolve(SMOLLM2))
    quantize_model(model, QuantSpec(4, 64))
    windows = np.array(tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 12))[None, :96]
    kernel = evaluate.perplexity(model, windows)
    dequantize_model(model)
    dequant = evaluate.perplexity(model, windows)
    assert dequant.ppl == pytest.approx(kernel.ppl, rel=1e-4)


def test_generation_benchmark_reports_speed_and_memory(smollm2_dir):
    from core.eval.speed import bench_generation

    model, tokenizer = load_baseline(resolve(SMOLLM2))
    speed = bench_generation(model, np.array(tokenizer.encode("Hello, my name is")), decode_tokens=8)
    assert speed.throughput > 0.5 and speed.latency_ms_p50 <= speed.latency_ms_p90
    assert speed.peak_memory_bytes > 100e6  # the 538 MB of float32 weights are at least partly touched
    assert speed.extra["prefill_tokens_per_s"] > 0
