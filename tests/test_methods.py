"""Calibrated quantization methods (core/gptq.py, core/awq.py, core/methods.py) against round-to-nearest."""
import mlx.core as mx
import numpy as np
import pytest

from conftest import needs_mirror
from core.gptq import gptq_matrix
from core.quantize import QuantSpec, dequantize_matrix, quantize_matrix


def correlated_inputs(k: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(k, k)) / np.sqrt(k)
    return rng.normal(size=(n, k)) @ mixing + 0.1 * rng.normal(size=(n, k))


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_lowers_the_output_error_of_round_to_nearest(bits):
    rng = np.random.default_rng(1)
    x = correlated_inputs(256, 4096)
    w = rng.normal(size=(96, 256)).astype(np.float32)
    spec = QuantSpec(bits, 64).validated()
    errors = {}
    for name, packed in (("rtn", quantize_matrix(mx.array(w), spec)),
                         ("gptq", gptq_matrix(mx.array(w), x.T @ x / len(x), spec))):
        errors[name] = float(np.mean((x @ (w - np.array(dequantize_matrix(*packed, spec))).T) ** 2))
    assert errors["gptq"] < 0.75 * errors["rtn"], errors


def test_gptq_with_uncorrelated_inputs_is_exactly_round_to_nearest():
    """H = I leaves no error to push onto later columns: every integer, scale and bias must match."""
    w = mx.array(np.random.default_rng(2).normal(size=(32, 128)).astype(np.float32))
    spec = QuantSpec(4, 32).validated()
    for ours, rtn in zip(gptq_matrix(w, np.eye(128), spec), quantize_matrix(w, spec)):
        assert ours.dtype == rtn.dtype and np.array_equal(np.array(ours), np.array(rtn))


def test_gptq_zero_input_columns_are_quantized_without_breaking():
    """Padded convolution columns never see input (a zero Hessian row)."""
    x = correlated_inputs(64, 1024)
    x[:, 48:] = 0
    w = mx.array(np.random.default_rng(3).normal(size=(16, 64)).astype(np.float32))
    packed = gptq_matrix(w, x.T @ x / len(x), QuantSpec(4, 32).validated())
    assert all(np.isfinite(np.array(a.astype(mx.float32))).all() for a in packed[1:])


@needs_mirror
def test_gptq_resnet_at_3_bits_beats_round_to_nearest_on_test_images():
    """resnet20-mlxq at 3 bits, 128 CIFAR-10 *train* images for calibration, 1,000 test images."""
    from core.pipeline import EvalConfig, run_eval

    rows = {m: run_eval(EvalConfig("resnet20-mlxq", bits=3, method=m, limit=1000, calib=128, bench=False))
            for m in ("rtn", "gptq")}
    assert rows["gptq"].method == "gptq" and rows["gptq"].tag == "q3g64-gptq"
    assert rows["gptq"].bits_per_weight == pytest.approx(rows["rtn"].bits_per_weight, abs=1e-9)
    assert rows["gptq"].value > rows["rtn"].value + 1.0, (rows["rtn"].value, rows["gptq"].value)
    assert rows["gptq"].agreement > rows["rtn"].agreement


def _truncated_smollm2(blocks: int):
    """SmolLM2's real weights, first `blocks` transformer blocks only: a smaller real LLaMA for fast tests."""
    from core import models

    model, tokenizer = models.load(models.resolve("smollm2-135m-instruct"))
    model.model.layers = model.model.layers[:blocks]
    return model, tokenizer


def _mean_kl(reference: mx.array, logits: mx.array) -> float:
    p = mx.softmax(reference, axis=-1)
    return float((p * (mx.log_softmax(reference, axis=-1) - mx.log_softmax(logits, axis=-1))).sum(-1).mean())


@needs_mirror
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_calibrated_lm_methods_lose_less_than_round_to_nearest(smollm2_dir, method):
    """Four real SmolLM2 blocks at 3 bits: calibrated on validation text, judged on test text by the KL of the
    output distribution against full precision."""
    from core import data
    from core.methods import Calibration, apply_method
    from core.quantize import QuantSpec

    spec = QuantSpec(3, 64).validated()
    full, tokenizer = _truncated_smollm2(4)
    test = tokenizer.encode(data.load_wikitext2_test()[:20000], add_special_tokens=False)[:512]
    test = mx.array(np.asarray(test, dtype=np.int32).reshape(2, 256))
    reference = full(test)
    kl = {}
    for name in ("rtn", method):
        model, _ = _truncated_smollm2(4)
        apply_method(model, tokenizer, "lm", spec, name, set(), Calibration(4, ctx=128))
        kl[name] = _mean_kl(reference, model(test))
    assert kl[method] < 0.9 * kl["rtn"], kl
