"""Per-layer sensitivity and mixed precision: measured on resnet20-mlxq with CIFAR-10 train images, the step chain
and the KL checked against whole forward passes in float64, the allocation against brute force and against the
quantized model's own bits per weight."""
import itertools
import time

import mlx.core as mx
import numpy as np
import pytest

from conftest import needs_mirror
from core.errors import LabError
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.calibration import CalibrationData, MixedSettings, calibration_images
from core.quant.layers import bits_per_weight, dequantize_model, quantize_model, weight_layer_paths
from core.quant.methods import apply_method
from core.quant.mixed import UNITS, allocate_bits, keep_full_precision, predicted_bpw
from core.quant.sensitivity import (cached_sensitivity, fingerprint, forward_steps, layer_sensitivity,
                                    sensitivity_table)
from core.quant.spec import QuantSpec

OWN = "resnet20-mlxq"


@pytest.fixture(autouse=True)
def private_sensitivity(tmp_path_factory, monkeypatch):
    """One sensitivity cache for this session's tests, never the user's cache/sensitivity."""
    monkeypatch.setenv("MLXQ_SENSITIVITY", str(tmp_path_factory.getbasetemp() / "sensitivity"))


def kl_float64(ref: np.ndarray, q: np.ndarray) -> np.ndarray:
    def log_softmax(x):
        x = x.astype(np.float64)
        top = x.max(-1, keepdims=True)
        return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))
    lr, lq = log_softmax(ref), log_softmax(q)
    return (np.exp(lr) * (lr - lq)).sum(-1)


def test_forward_steps_compose_to_the_whole_forward_pass(smollm2_dir):
    model = load_baseline(resolve(OWN))[0]
    x = mx.random.normal((8, 32, 32, 3), key=mx.random.key(0))
    steps = forward_steps(model)
    assert len(steps) == 11  # stem, 9 blocks, head
    out = x
    for _, f in steps:
        out = f(out)
    assert float(mx.abs(out - model(x)).max()) < 1e-6

    lm, _ = load_baseline(resolve("smollm2-135m-instruct"))
    tokens = mx.array(np.arange(1, 65, dtype=np.int32).reshape(1, 64) * 37)
    out = tokens
    for _, f in forward_steps(lm):
        out = f(out)
    # The LM chain scores the second half of each chunk, as the perplexity protocol does.
    assert out.shape == (1, 32, 49152)
    assert float(mx.abs(out - lm(tokens)[:, 32:]).max()) < 1e-4


@needs_mirror
def test_sensitivities_are_real_cached_and_the_allocation_gives_the_predicted_bits_per_weight():
    started = time.perf_counter()
    rows = layer_sensitivity(OWN, (2, 4, 8), 64, CalibrationData(128))
    measured_s = time.perf_counter() - started
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert len(layers) == 20 and len(rows) == 60 and layers[0] == "conv1" and layers[-1] == "linear"
    kl = {(r["layer"], r["bits"]): r["kl"] for r in rows}
    ordered = [kl[p, 2] > kl[p, 4] > kl[p, 8] for p in layers]
    assert sum(ordered) >= 18, [p for p, ok in zip(layers, ordered) if not ok]
    assert all(0 <= r["kl"] < 1 for r in rows) and all(r["agreement"] >= 99 for r in rows if r["bits"] == 8)
    assert all(r["n"] == 128 and "CIFAR-10 train, 128" in r["protocol"] for r in rows)

    # One row against a whole forward pass of a freshly quantized model, KL in float64.
    model = load_baseline(resolve(OWN))[0]
    images = calibration_images(128)
    reference = np.array(model(images))
    quantize_model(model, QuantSpec(4, 64), keep=set(weight_layer_paths(model)) - {"layer2.1.conv1"})
    dequantize_model(model)
    expected = kl_float64(reference, np.array(model(images))).mean()
    assert kl["layer2.1.conv1", 4] == pytest.approx(expected, rel=1e-3)

    # The second time it comes from the cache, and the dashboard finds it without measuring.
    started = time.perf_counter()
    assert layer_sensitivity(OWN, (2, 4, 8), 64, CalibrationData(128)) == rows
    assert time.perf_counter() - started < min(5.0, measured_s / 4)
    assert cached_sensitivity(OWN, (8, 4, 2), 64, CalibrationData(128)) == rows
    assert cached_sensitivity(OWN, (2, 3), 64, CalibrationData(128)) is None

    # The allocation's predicted bits per weight is what the quantized model stores.
    allocation = allocate_bits(rows, 4.5, 64)
    predicted = predicted_bpw(rows, allocation)
    model = load_baseline(resolve(OWN))[0]
    quantize_model(model, QuantSpec(2, 64), specs={p: QuantSpec(b, 64) for p, b in allocation.items()})
    assert predicted <= 4.5 and bits_per_weight(model) == pytest.approx(predicted, abs=0.02)
    assert len(set(allocation.values())) > 1  # a real mix, not one width
    # At the budget of uniform 4-bit, the allocation loses no more than uniform 4-bit does.
    uniform = {p: 4 for p in layers}
    mixed = allocate_bits(rows, predicted_bpw(rows, uniform), 64)
    assert sum(kl[p, b] for p, b in mixed.items()) <= sum(kl[p, 4] for p in layers)


@needs_mirror
def test_measuring_leaves_the_model_unchanged():
    model, _ = load_baseline(resolve(OWN))
    before = fingerprint(model)
    rows = sensitivity_table(model, None, "vision", (3,), 32, CalibrationData(32), use_cache=False)
    assert len(rows) == 20 and all(r["group_size"] == 32 for r in rows)
    assert fingerprint(model) == before


def synthetic(layer: str, weights: int, kls: dict[int, float], group: int = 32) -> list[dict]:
    return [{"layer": layer, "bits": b, "group_size": group, "weights": weights, "kl": kl} for b, kl in kls.items()]


def test_allocation_picks_the_better_total_where_greedy_gain_per_bit_does_not():
    # Costs per weight at group 32: 2 + 1 bits, 4 + 1 bits. The slack above all-2-bit is 6,000 bits: enough to
    # upgrade B (3,000 weights x 2 bits) or A (2,000 bits), not both. A gains more per bit (0.8 / 2,000) than
    # B (2.0 / 6,000), so a greedy upgrade takes A and is stuck at 3.2; the optimum upgrades B: 1.0 + 1.0.
    rows = synthetic("A", 1000, {2: 1.0, 4: 0.2}) + synthetic("B", 3000, {2: 3.0, 4: 1.0})
    allocation = allocate_bits(rows, 4.5, 32)
    assert allocation == {"A": 2, "B": 4}
    assert predicted_bpw(rows, allocation, 32) == pytest.approx(4.5)
    assert allocate_bits(rows, 3.0, 32) == {"A": 2, "B": 2}  # no slack: the lowest widths
    assert allocate_bits(rows, 9.0, 32) == {"A": 4, "B": 4}
    with pytest.raises(LabError, match="below the 3.000"):
        allocate_bits(rows, 2.9, 32)


def test_allocation_respects_the_budget_and_matches_brute_force_on_random_rows():
    rng = np.random.default_rng(0)
    widths = (2, 3, 4, 8)
    for case in range(40):
        rows = []
        for i in range(5):
            weights = int(rng.integers(100, 5000))
            kls = np.sort(rng.exponential(1.0, len(widths)))[::-1]  # usually, not always, fewer bits lose more
            if case % 3 == 0:
                kls = rng.exponential(1.0, len(widths))
            rows += synthetic(f"l{i}", weights, dict(zip(widths, kls.tolist())))
        target = float(rng.uniform(3.0, 9.0))
        allocation = allocate_bits(rows, target, 32)
        assert predicted_bpw(rows, allocation, 32) <= target + 1e-12
        loss = {(r["layer"], r["bits"]): r["kl"] for r in rows}
        got = sum(loss[p, b] for p, b in allocation.items())
        # Brute force over all 4^5 allocations. The programme rounds each layer's extra cost up to 1/UNITS of the
        # slack, so it is at least as good as the exact optimum under a budget smaller by 5/UNITS of the slack.
        floor = predicted_bpw(rows, {f"l{i}": 2 for i in range(5)}, 32)
        tight = target - 5 / UNITS * (target - floor)
        best = min(sum(loss[f"l{i}", b] for i, b in enumerate(choice))
                   for choice in itertools.product(widths, repeat=5)
                   if predicted_bpw(rows, {f"l{i}": b for i, b in enumerate(choice)}, 32) <= tight)
        assert got <= best + 1e-12


def test_a_kept_layer_stays_in_full_precision_and_counts_in_the_budget():
    rows = [{**r, "fp_bits": 32 * r["weights"]} for r in
            synthetic("A", 1000, {2: 1.0, 4: 0.2}) + synthetic("B", 3000, {2: 3.0, 4: 1.0})]
    kept = keep_full_precision(rows, {"A"})
    # A at 32 bits/weight = 32,000 bits; B at 2 bits = 9,000; together 10.25 bits per weight.
    with pytest.raises(LabError):
        allocate_bits(kept, 10.0, 32)
    assert allocate_bits(kept, 10.25, 32) == {"A": 16, "B": 2}
    assert allocate_bits(kept, 11.75, 32) == {"A": 16, "B": 4}


@needs_mirror
def test_mixed_method_quantizes_within_the_budget_through_apply_method_and_run_eval():
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    model, _ = load_baseline(resolve(OWN))
    # Lowest width 3 (choices 3, 4, 5, 6, 8); uniform 4-bit g64 would be 5.01 bits per weight.
    report = apply_method(model, None, "vision", QuantSpec(3, 64), {"conv1"}, MixedSettings(CalibrationData(128), 4.5))
    assert bits_per_weight(model) <= 4.5
    assert "conv1" in report.kept and "conv1" not in report.layer_bits
    assert set(report.layer_bits) == set(report.quantized) and len(report.quantized) == 19
    assert set(report.layer_bits.values()) <= {3, 4, 5, 6, 8} and len(set(report.layer_bits.values())) > 1

    result = run_eval(EvalConfig(OWN, bits=3, group_size=64, method="mixed", calib=128, target_bpw=4.5, limit=200,
                                 bench=False))
    assert result.method == "mixed" and result.tag == "mixed4.5-g64" and result.n == 200
    assert result.bits_per_weight <= 4.5 and result.agreement >= 90
