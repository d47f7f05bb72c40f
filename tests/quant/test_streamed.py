"""Language models quantized and scored one piece at a time (core.quant.streamed, core.eval.blockwise) agree with
the whole model in memory, on SmolLM2's real weights read from a folder."""
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import needs_mirror
from core import data
from core.eval import blockwise, quality
from core.eval.config import EvalConfig
from core.eval.pipeline import run_eval
from core.models.lm import Chain
from core.models.registry import resolve
from core.quant.baseline import LazyBaseline, load_baseline
from core.quant.calibration import AwqSettings, CalibrationData, GptqSettings, RtnSettings
from core.quant.layers import dequantize_model
from core.quant.methods import apply_method
from core.quant.recipe import quantize
from core.quant.config import QuantConfig
from core.quant.spec import QuantSpec

pytestmark = needs_mirror
CALIB = 4


def _whole(folder, method: str):
    """The same configuration the old way: the whole float32 model in memory, quantized in place."""
    model, tokenizer = load_baseline(resolve(str(folder)))
    spec = QuantSpec(4, 64).validated()
    settings = {"rtn": RtnSettings(), "gptq": GptqSettings(CalibrationData(CALIB, 512)),
                "awq": AwqSettings(CalibrationData(CALIB, 512))}[method]
    apply_method(model, tokenizer, "lm", spec, set(), settings)
    return model, tokenizer


def _windows(tokenizer, name: str, n: int = 2) -> np.ndarray:
    tokens = quality.wikitext_tokens(name, tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)
    return windows[data.spread_indices(len(windows), n)]


def test_round_to_nearest_from_the_folder_is_bit_for_bit_the_whole_models(smollm2_2blocks):
    streamed = quantize(QuantConfig(str(smollm2_2blocks), bits=4, group_size=64)).model
    whole, _ = _whole(smollm2_2blocks, "rtn")
    ours, theirs = dict(tree_flatten(streamed.parameters())), dict(tree_flatten(whole.parameters()))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype, name
        assert mx.array_equal(ours[name], value).item(), name


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_block_by_block_agree_with_the_whole_model(smollm2_2blocks, method):
    config = EvalConfig(str(smollm2_2blocks), bits=4, group_size=64, method=method, calib=CALIB, limit=2,
                        bench=False)
    row = run_eval(config, use_cache=False)
    whole, tokenizer = _whole(smollm2_2blocks, method)
    dequantize_model(whole)
    reference, _ = load_baseline(resolve(str(smollm2_2blocks)))
    expected = quality.perplexity(whole, _windows(tokenizer, str(smollm2_2blocks)), reference)
    assert row.value == pytest.approx(expected.ppl, rel=1e-4)
    assert row.kl_mean == pytest.approx(expected.kl_mean, rel=1e-4)
    assert row.kl_mean > 0


def test_blockwise_scores_equal_the_whole_forward_pass(smollm2_2blocks):
    """Loss, KL and the reference's loss per token, for a quantized model and for full precision."""
    name = str(smollm2_2blocks)
    q = quantize(QuantConfig(name, bits=3, group_size=64))
    baseline = LazyBaseline(resolve(name))
    windows = _windows(q.tokenizer, name, 3)
    ours = blockwise.token_scores(Chain(q.model), blockwise.ModelPieces(q.model, True), windows, baseline)
    full = blockwise.token_scores(Chain(q.model), baseline, windows)
    dequantize_model(q.model)
    reference, _ = load_baseline(resolve(name))
    theirs = quality.token_scores(q.model, windows, reference)
    for key in ("loss", "kl", "reference_loss"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(full["loss"], theirs["reference_loss"], rtol=1e-4, atol=1e-5)


def test_a_piece_is_read_when_asked_and_nothing_else(smollm2_2blocks):
    baseline = LazyBaseline(resolve(str(smollm2_2blocks)))
    skeleton = baseline.skeleton()
    block = baseline.piece("model.layers.1")
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(block.parameters()))
    assert Chain(skeleton).paths == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"]
