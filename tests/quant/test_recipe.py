"""One path from a config to a model (core.quant.recipe), one source of calibration defaults, one tag format."""
import numpy as np
import pytest
from mlx.utils import tree_flatten

from core.deploy.export import export_model
from core.deploy.ids import load_deployed, parse_model_id
from core.errors import LabError
from core.eval.config import EvalConfig
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.calibration import (AwqSettings, CalibrationData, Distillation, GptqSettings, MixedSettings,
                                    RtnSettings, default_size)
from core.quant.config import QuantConfig
from core.quant.methods import methods_for
from core.quant.recipe import keep_set, quantize
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES, FLOAT_MODES, QuantSpec


def arrays(model) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def test_every_spec_tag_parses_back_to_its_spec():
    specs = [QuantSpec().validated()] + [QuantSpec(mode=m, bits=FLOAT_MODES[m][0]).validated() for m in FLOAT_MODES]
    specs += [QuantSpec(b, g).validated() for b in AFFINE_BITS for g in AFFINE_GROUP_SIZES]
    assert all(QuantSpec.from_tag(s.tag) == s for s in specs)
    assert QuantSpec.from_tag("q4") == QuantSpec(4, 64).validated()
    with pytest.raises(LabError, match="Unknown quantization 'q4x'"):
        QuantSpec.from_tag("q4x")


def test_calibration_defaults_come_from_one_place():
    for kind in ("vision", "lm"):
        assert EvalConfig("resnet20" if kind == "vision" else "smollm2-135m-instruct", bits=4,
                          method="gptq").validated().calib == default_size("gptq", kind)
        assert default_size("mixed", kind) == default_size("sensitivity", kind) < default_size("gptq", kind)
    mixed = EvalConfig("resnet20-mlxq", bits=3, method="mixed", target_bpw=4.5).validated()
    assert mixed.calib == default_size("mixed", "vision")
    assert EvalConfig("resnet20-mlxq", bits=8, act_bits=8).validated().calib == default_size("rtn", "vision")
    assert EvalConfig("resnet20-mlxq", bits=4).validated().calib is None  # round to nearest calibrates nothing


def test_each_method_gets_its_own_settings_with_every_default_filled_in():
    """QuantConfig.method_settings: what apply_method hands each method, and nothing else."""
    lm, vision = "smollm2-135m-instruct", "resnet20-mlxq"

    def settings(model, **fields):
        return QuantConfig(model, **fields).validated().method_settings()

    assert settings(vision, bits=4) == settings(vision) == RtnSettings()
    assert settings(vision, bits=4, method="gptq", calib=16, seed=3) == GptqSettings(CalibrationData(16, 512, 3))
    assert settings(lm, bits=4, method="awq", ctx=256) == AwqSettings(CalibrationData(32, 256))
    mixed = settings(lm, bits=3, method="mixed", target_bpw=4.5, mixed_layers="awq")
    assert mixed == MixedSettings(CalibrationData(2), 4.5, AwqSettings(CalibrationData(32)))
    distilled = settings(lm, bits=3, method="dwq", dwq_from="mixed", target_bpw=4.0, dwq_steps=7, seed=1)
    assert isinstance(distilled, Distillation) and distilled.data == CalibrationData(64, 512, 1)
    assert distilled.start == MixedSettings(CalibrationData(2, 512, 1), 4.0)  # its own default size
    assert (distilled.training.steps, distilled.training.lr, distilled.training.seed) == (7, 2e-4, 1)
    assert distilled.checkpoint.parent.name == "dwq"


def test_methods_per_kind():
    assert "awq" in methods_for("lm") and "awq" not in methods_for("vision")
    assert set(methods_for("vision")) | {"awq"} == set(methods_for("lm"))
    with pytest.raises(LabError, match="AWQ is for language models"):
        QuantConfig("resnet20-mlxq", bits=4, method="awq").validated()


def test_the_server_and_an_evaluation_get_the_same_quantized_model():
    deployed = load_deployed(*parse_model_id("resnet20-mlxq@q4g32"))
    evaluated = quantize(EvalConfig("resnet20-mlxq", bits=4, group_size=32, limit=10))
    ours, theirs = arrays(deployed.model), arrays(evaluated.model)
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert deployed.report.quantized == evaluated.report.quantized and len(ours) > 20


def test_keep_last_of_a_tied_head_keeps_the_embedding(smollm2_dir):
    model, _ = load_baseline(resolve("smollm2-135m-instruct"))
    assert keep_set(model, QuantConfig("smollm2-135m-instruct", keep_last=True)) == {"model.embed_tokens"}
    both = keep_set(model, QuantConfig("smollm2-135m-instruct", keep_first=True, keep_last=True))
    assert both == {"model.embed_tokens"}  # the input layer is the output layer
    resnet, _ = load_baseline(resolve("resnet20-mlxq"))
    assert keep_set(resnet, QuantConfig("resnet20-mlxq", keep_first=True, keep_last=True)) == {"conv1", "linear"}


def test_export_refuses_simulated_activations(tmp_path):
    with pytest.raises(LabError, match="act-bits"):
        export_model(QuantConfig("resnet20-mlxq", bits=8, act_bits=8), tmp_path / "out")
    assert not (tmp_path / "out").exists()
