"""The MLX GPTQ sweep (core/quant/gptq.py) against the NumPy sweep it replaced, kept here as the reference, and
against round-to-nearest."""
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from core.quant.gptq import BLOCK, gptq_matrix
from core.quant.hessian import DAMPING
from core.quant.quantizers import dequantize_matrix, pack, quantize_matrix, stored_dtype
from core.quant.spec import QuantSpec


def reference_gptq(w: mx.array, hessian: np.ndarray, spec: QuantSpec):
    """The former NumPy implementation: float64 inverse, one column at a time."""
    bits, group, stored = spec.bits, spec.group_size, stored_dtype(spec)
    W = np.array(w.astype(mx.float32), dtype=np.float32)
    rows, K = W.shape
    H = np.array(hessian, dtype=np.float64, copy=True)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices(K)] += DAMPING * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)
    levels = 2**bits - 1
    Q = np.zeros((rows, K), dtype=np.uint32)
    scales, biases = np.zeros((rows, K // group), np.float32), np.zeros((rows, K // group), np.float32)
    for i1 in range(0, K, BLOCK):
        i2 = min(i1 + BLOCK, K)
        W1, E1, U1 = W[:, i1:i2].copy(), np.zeros((rows, i2 - i1), np.float32), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                g = W1[:, i:i + group]
                low, high = g.min(axis=1), g.max(axis=1)
                s, b = _stored((high - low) / levels, stored), _stored(low, stored)
                scales[:, col // group], biases[:, col // group] = s, b
                safe = np.where(s > 0, s, 1.0)
            q = np.clip(np.round((W1[:, i] - b) / safe), 0, levels)
            Q[:, col] = q
            err = (W1[:, i] - (q * s + b)) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return pack(mx.array(Q), bits), mx.array(scales).astype(stored), mx.array(biases).astype(stored)


def _stored(values: np.ndarray, dtype: mx.Dtype) -> np.ndarray:
    return np.array(mx.array(values.astype(np.float32)).astype(dtype).astype(mx.float32))


def correlated_inputs(n: int, k: int, seed: int) -> np.ndarray:
    """X = Z @ A (+ a little noise): strongly correlated columns, where GPTQ has error to move around."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) @ (rng.normal(size=(k, k)) / np.sqrt(k)) + 0.1 * rng.normal(size=(n, k))


def integers(packed, spec: QuantSpec) -> np.ndarray:
    """The stored integers, read back through a unit grid."""
    ones = mx.ones(packed[1].shape, mx.float32)
    return np.array(dequantize_matrix(packed[0], ones, mx.zeros_like(ones), spec))


def output_error(w: np.ndarray, packed, spec: QuantSpec, x: np.ndarray) -> float:
    """||(W - Wq) X^T||: the layer's output error on its calibration inputs."""
    return float(np.linalg.norm((w - np.array(dequantize_matrix(*packed, spec))) @ x.T))


CASES = [(96, 256, 3, 32, "float16"), (96, 256, 3, 64, "float16"), (96, 256, 4, 32, "float16"),
         (96, 256, 4, 64, "float16"), (64, 320, 4, 64, "bfloat16")]  # the last: a partial last block


@pytest.mark.parametrize("rows,k,bits,group,scale_dtype", CASES)
def test_mlx_sweep_matches_the_numpy_reference_and_beats_round_to_nearest(rows, k, bits, group, scale_dtype):
    spec = QuantSpec(bits, group, scale_dtype=scale_dtype).validated()
    x = correlated_inputs(2048, k, seed=bits * group)
    w = np.random.default_rng(k + bits).normal(size=(rows, k)).astype(np.float32)
    hessian = x.T @ x / len(x)
    ours = gptq_matrix(mx.array(w), mx.array(hessian.astype(np.float32)), spec)
    reference = reference_gptq(mx.array(w), hessian, spec)
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype and a.shape == b.shape
    assert np.mean(integers(ours, spec) == integers(reference, spec)) >= 0.99
    rtn = quantize_matrix(mx.array(w), spec)
    errors = {name: output_error(w, packed, spec, x) for name, packed in (("ours", ours), ("reference", reference),
                                                                          ("rtn", rtn))}
    assert errors["ours"] == pytest.approx(errors["reference"], rel=0.01), errors
    assert errors["ours"] < 0.9 * errors["rtn"], errors


def test_dead_columns_and_a_numpy_hessian_match_the_reference():
    """Columns that never see input (zero Hessian rows, as padding gives) are quantized as is, as before; a
    NumPy float64 Hessian is taken as well as an mx.array."""
    spec = QuantSpec(4, 32).validated()
    x = correlated_inputs(1024, 128, seed=5)
    x[:, 96:] = 0
    w = mx.array(np.random.default_rng(6).normal(size=(48, 128)).astype(np.float32))
    hessian = x.T @ x / len(x)
    ours, reference = gptq_matrix(w, hessian, spec), reference_gptq(w, hessian, spec)
    assert np.mean(integers(ours, spec) == integers(reference, spec)) >= 0.99
    assert all(np.isfinite(np.array(a.astype(mx.float32))).all() for a in ours[1:])
    dead = np.array(dequantize_matrix(*ours, spec))[:, 96:]
    rtn = np.array(dequantize_matrix(*quantize_matrix(w[:, 96:], spec), spec))
    assert np.array_equal(dead, rtn)  # nothing flows into them: their own errors go nowhere either


def test_the_blocked_inverse_factor_equals_the_direct_one(monkeypatch):
    """Large Hessians are factored by blocks (products on the device); the factor is the same."""
    from core.quant import hessian

    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 300)).astype(np.float32) @ rng.standard_normal((300, 300)).astype(np.float32)
    h = mx.array(x.T @ x / 600)
    direct = hessian.inverse_factor(h)
    monkeypatch.setattr(hessian, "FACTOR_BLOCK", 64)
    monkeypatch.setattr(hessian, "_direct_up_to", lambda: 64)
    blocked = hessian.inverse_factor(h)
    assert blocked.shape == (300, 300)
    np.testing.assert_allclose(np.array(blocked), np.array(direct), rtol=1e-3, atol=1e-4 * float(mx.abs(direct).max()))


def test_layers_fed_the_same_input_share_one_hessian_and_give_what_their_own_would(monkeypatch):
    """q, k, v (and gate, up) read one input: gptq_block computes its X^T X and inverse factor once for them, and
    every layer's integers are those of a sweep on its own Hessian. One sequence a batch: once the first batches
    have run, the last layer (down_proj) is not run, and its Hessian still counts every batch."""
    from core.quant import footprint
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.models.llama import ModelArgs, TransformerBlock

    from core.models.synthetic import shape_config
    from core.quant.gptq import gptq_block
    from core.quant.hessian import HessianCatcher
    from core.quant.layers import module_at, swap

    mx.random.seed(3)
    args = ModelArgs.from_dict({**shape_config("tiny"), "model_type": "llama"})
    block, spec = TransformerBlock(args), QuantSpec(4, 64).validated()
    x = mx.random.normal((4, 32, args.hidden_size))
    mask = create_attention_mask(x, None)
    paths = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    own = {p: HessianCatcher(module_at(block, p), lambda v: v.reshape(-1, v.shape[-1])) for p in paths}
    for p, c in own.items():
        swap(block, p, c)
    for i in range(4):
        mx.eval(block(x[i:i + 1], mask))
    for p, c in own.items():
        swap(block, p, c.layer)
    hessians = {p: c.hessian() for p, c in own.items()}
    weights = {p: module_at(block, p).weight for p in paths}
    monkeypatch.setattr(footprint, "MAX_CALIBRATION_BATCH", 1)
    packed = gptq_block(block, "b.", x, mask, spec, set())
    for p in paths:  # one pass over the float block gives every Hessian, so all seven compare
        for ours, theirs in zip(packed["b." + p], gptq_matrix(weights[p], hessians[p], spec)):
            assert mx.array_equal(ours, theirs), p


def test_wide_inputs_get_their_hessian_by_symmetric_tiles(monkeypatch):
    """Inputs at least two tiles wide: X^T X from the tiles on and above the diagonal, the rest mirrored, summed
    over batches: equal to the whole product (ragged last tile included)."""
    from core.quant import hessian

    monkeypatch.setattr(hessian, "GRAM_TILE", 16)
    catcher = hessian.HessianCatcher(nn.Linear(40, 3), lambda v: v)
    rows = mx.random.normal((50, 40), key=mx.random.key(5))
    catcher(rows[:20]), catcher(rows[20:])
    assert len(catcher._tiles) == 6  # tiles at 0, 16, 32: three on the diagonal, three above
    expected = np.array(rows.T @ rows) / 50
    np.testing.assert_allclose(np.array(catcher.hessian()), expected, rtol=1e-5, atol=1e-5)
