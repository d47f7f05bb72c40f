"""Calibrated quantization methods (core/quant/gptq.py, awq.py, methods.py) against round-to-nearest."""
import mlx.core as mx
import numpy as np
import pytest

from conftest import mean_kl, needs_mirror, truncated_smollm2
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.gptq import gptq_matrix
from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.spec import QuantSpec


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
    """resnet20-mlxq at 3 bits, 64 CIFAR-10 *train* images for calibration, 500 test images."""
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    rows = {m: run_eval(EvalConfig("resnet20-mlxq", bits=3, method=m, limit=500, calib=64, bench=False))
            for m in ("rtn", "gptq")}
    assert rows["gptq"].method == "gptq" and rows["gptq"].tag == "q3g64-gptq"
    assert rows["gptq"].bits_per_weight == pytest.approx(rows["rtn"].bits_per_weight, abs=1e-9)
    assert rows["gptq"].value > rows["rtn"].value + 1.0, (rows["rtn"].value, rows["gptq"].value)
    assert rows["gptq"].agreement > rows["rtn"].agreement


# GPTQ solves for each layer against the Hessian of its inputs: with fewer calibration tokens than a layer's input
# width (1,536 in the MLP) it fits those few tokens and the result depends on which chunks they are.
CALIBRATION_CHUNKS = {"rtn": 4, "awq": 4, "gptq": 64}


@needs_mirror
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_calibrated_lm_methods_lose_less_than_round_to_nearest(smollm2_dir, method):
    """Four real SmolLM2 blocks at 3 bits: calibrated on validation text, judged on test text by the KL of the
    output distribution against full precision."""
    from core import data
    from core.quant.calibration import AwqSettings, CalibrationData, GptqSettings, RtnSettings
    from core.quant.methods import apply_method

    spec = QuantSpec(3, 64).validated()
    full, tokenizer = truncated_smollm2(4)
    test = tokenizer.encode(data.load_wikitext2_test()[:20000], add_special_tokens=False)[:512]
    test = mx.array(np.asarray(test, dtype=np.int32).reshape(2, 256))
    reference = full(test)
    kl = {}
    for name in ("rtn", method):
        model, _ = truncated_smollm2(4)
        data = CalibrationData(CALIBRATION_CHUNKS[method], ctx=128)
        settings = {"rtn": RtnSettings(), "gptq": GptqSettings(data), "awq": AwqSettings(data)}[name]
        apply_method(model, tokenizer, "lm", spec, set(), settings)
        kl[name] = mean_kl(reference, model(test))
    assert kl[method] < 0.9 * kl["rtn"], kl


@needs_mirror
def test_w8a8_simulation_rounds_activations_and_keeps_the_predictions():
    """resnet20-mlxq at 8-bit weights, with and without 8-bit activations (ranges from 256 train images)."""
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    w8 = run_eval(EvalConfig("resnet20-mlxq", bits=8, limit=500, bench=False))
    w8a8 = run_eval(EvalConfig("resnet20-mlxq", bits=8, act_bits=8, calib=256, limit=500, bench=False))
    assert w8a8.tag == "q8g64-a8" and "activations simulated at 8 bits" in w8a8.protocol
    assert w8a8.agreement >= 98.0 and abs(w8a8.value - w8.value) <= 1.0
    from core.quant.actquant import quantize_activations
    from core.quant.calibration import calibration_images
    from core.quant.layers import weight_layer_paths

    model, _ = load_baseline(resolve("resnet20-mlxq"))
    images = calibration_images(64)
    plain = model(images)
    ranges = quantize_activations(model, weight_layer_paths(model), calibration_images(256), 8)
    rounded = model(images)
    assert ranges["conv1"][0] < 0 < ranges["conv1"][1]  # the normalised image has both signs
    assert all(low >= 0 for path, (low, _) in ranges.items() if path != "conv1")  # after ReLU
    difference = float(mx.abs(rounded - plain).max())
    assert 1e-4 < difference < 0.5 * float(mx.abs(plain).max())
