"""Recipes that combine: mixed precision whose layers are quantized by AWQ or GPTQ at the widths the allocation
gave them (core/quant/mixed.py with MixedSettings.layers), on the first two real SmolLM2 blocks."""
import mlx.core as mx
import numpy as np
import pytest

from conftest import mean_kl, needs_mirror, truncated_smollm2
from core.errors import LabError
from core.quant.calibration import (AwqSettings, CalibrationData, GptqSettings, MixedSettings, RtnSettings,
                                   default_size)
from core.quant.config import QuantConfig
from core.quant.layers import bits_per_weight
from core.quant.methods import apply_method
from core.quant.spec import QuantSpec


@needs_mirror
@pytest.mark.parametrize("layers", ["awq", "gptq"])
def test_mixed_with_calibrated_layers_keeps_the_allocation_and_the_bits(smollm2_dir, layers):
    """Same sensitivity table, same budget: the same width per layer as plain mixed and the same stored bits. On
    two blocks the tied 3-bit embedding (rounded to nearest by every method) dominates the loss, so the KL only has
    to stay near plain mixed here; what the combination gains on the whole model is the frontier bench's to say."""
    from core import data

    full, tokenizer = truncated_smollm2(2)
    test = tokenizer.encode(data.load_wikitext2_test()[:20000], add_special_tokens=False)[:512]
    test = mx.array(np.asarray(test, dtype=np.int32).reshape(2, 256))
    reference = full(test)
    spec = QuantSpec(3, 64).validated()
    kl, widths, bpw = {}, {}, {}
    for name in ("rtn", layers):
        model, _ = truncated_smollm2(2)
        per_layer = {"rtn": RtnSettings(), "gptq": GptqSettings(CalibrationData(default_size("gptq", "lm"), 128)),
                     "awq": AwqSettings(CalibrationData(default_size("awq", "lm"), 128))}[name]
        settings = MixedSettings(CalibrationData(2, 128), target_bpw=4.0, layers=per_layer)
        report = apply_method(model, tokenizer, "lm", spec, set(), settings)
        kl[name], widths[name], bpw[name] = mean_kl(reference, model(test)), report.layer_bits, bits_per_weight(model)
    assert widths[layers] == widths["rtn"] and len(set(widths["rtn"].values())) > 1
    assert bpw[layers] == pytest.approx(bpw["rtn"], abs=1e-9) and bpw["rtn"] <= 4.0 + 0.01
    assert kl[layers] == pytest.approx(kl["rtn"], rel=0.1), kl


@needs_mirror
def test_awq_at_one_width_per_layer_equals_mlx_lm_search(smollm2_dir):
    """The per-layer scale and clip search (used when layers have their own widths) given one width everywhere is
    mlx-lm's search_best_scale / clip_block exactly."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from core.quant.awq import awq_lm
    from core.quant.calibration import calibration_tokens

    spec = QuantSpec(3, 64).validated()
    models = [truncated_smollm2(2) for _ in range(2)]
    tokens = calibration_tokens(models[0][1], 4, 128)
    awq_lm(models[0][0], spec, tokens, lambda f, m: None)
    specs = {f"model.layers.{i}.{p}": spec for i, block in enumerate(models[1][0].layers)
             for p, m in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module) if isinstance(m, nn.Linear)}
    awq_lm(models[1][0], spec, tokens, lambda f, m: None, specs=specs)
    first, second = (dict(tree_flatten(m.parameters())) for m, _ in models)
    assert first.keys() == second.keys() and all(mx.array_equal(first[k], second[k]) for k in first)


def test_mixed_layers_flag_is_validated_and_named_in_the_tag():
    cfg = QuantConfig("smollm2-135m-instruct", bits=3, method="mixed", target_bpw=4.0, mixed_layers="awq").validated()
    assert cfg.tag == "mixed4-g64-awq" and cfg.mixed_layers == "awq"
    assert QuantConfig("smollm2-135m-instruct", bits=3, method="mixed", target_bpw=4.0).validated().mixed_layers == "rtn"
    distilled = QuantConfig("smollm2-135m-instruct", bits=3, method="dwq", dwq_from="mixed", target_bpw=4.0,
                            mixed_layers="gptq").validated()
    assert distilled.tag == "mixed4-g64-gptq-dwq"
    for bad, message in ((dict(method="rtn", mixed_layers="awq"), "applies to method mixed"),
                         (dict(method="mixed", target_bpw=4.0, mixed_layers="dwq"), "quantizes its layers with rtn, gptq, awq")):
        with pytest.raises(LabError, match=message):
            QuantConfig("smollm2-135m-instruct", bits=3, **bad).validated()
    with pytest.raises(LabError, match="AWQ is for language models"):
        QuantConfig("resnet20", bits=3, method="mixed", target_bpw=4.0, mixed_layers="awq").validated()
