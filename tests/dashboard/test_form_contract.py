"""The dashboard's forms and the run configs agree: every mode, width, group size and method the Quantize page
offers (with the settings the form starts from) builds evaluation configs that validate, and export configs in every
format it offers; so does every choice of the Sensitivity page. The choices are read from the pages' own functions
(the pages run only under Streamlit, so importing them draws nothing), never copied here. No data, no model: only
configs are built and validated. What a page shows of a refused config is in words, never a command-line flag."""
import pytest

from core.errors import LabError
from core.quant.spec import FLOAT_MODES
from views import quantize, sensitivity

MODELS = {"vision": "resnet20-mlxq", "lm": "smollm2-135m-instruct"}  # one built-in model of each kind


def quantize_choices():
    """(kind, model, mode, method, distillation's start) for every choice the Quantize page offers."""
    for kind, name in MODELS.items():
        for mode in quantize.MODES:
            for method in quantize.methods(kind, mode):
                for start in quantize.dwq_starts(kind) if method == "dwq" else [None]:
                    yield kind, name, mode, method, start


@pytest.mark.parametrize("kind,name,mode,method,start", list(quantize_choices()))
def test_every_choice_of_the_quantize_page_validates(kind, name, mode, method, start):
    settings = quantize.calibrated_defaults(name, kind, method, start)
    offered = quantize.widths(mode)
    for group in quantize.group_sizes(mode):
        configs = quantize.eval_configs(name, offered, group_size=group, mode=mode, method=method, limit=None,
                                        keep_first=False, keep_last=False, bench=True, dtype=None, **settings)
        assert configs[0].spec.full_precision and len(configs) == 1 + len(offered)
        if mode in FLOAT_MODES:  # the config gives a float mode its own width (mxfp8: 8 bits, not 4)
            assert [(c.bits, c.group_size) for c in configs[1:]] == [FLOAT_MODES[mode]]
        else:
            assert [c.bits for c in configs[1:]] == offered and {c.group_size for c in configs[1:]} == {group}
        assert {c.method for c in configs[1:]} == {method}
        for form in quantize.formats_for(kind):
            for bits in offered:
                exported = quantize.export_config(name, bits, "exports/x", form, False, group_size=group, mode=mode,
                                                  method=method, limit=100, bench=False, **settings)
                assert exported.format == form and exported.tag == configs[1 + offered.index(bits)].tag


def test_every_dtype_and_the_form_defaults_validate():
    for kind, name in MODELS.items():
        for dtype in quantize.runtime.DTYPES:
            assert quantize.eval_configs(name, quantize.FORM_WIDTHS, dtype=dtype, limit=quantize.FORM_LIMIT[kind])
        assert set(quantize.FORM_WIDTHS) <= set(quantize.widths("affine"))
        assert quantize.DEFAULT_GROUP_SIZE in quantize.group_sizes("affine")


def sensitivity_choices():
    for kind, name in MODELS.items():
        for group in sensitivity.GROUP_SIZES:
            for ctx in sensitivity.contexts(kind):
                yield name, group, ctx


@pytest.mark.parametrize("name,group,ctx", list(sensitivity_choices()))
def test_every_choice_of_the_sensitivity_page_validates(name, group, ctx):
    start = sensitivity.defaults(name)
    assert set(start.bits) <= set(sensitivity.WIDTHS) and start.group_size in sensitivity.GROUP_SIZES
    assert start.ctx in sensitivity.contexts("lm")
    for widths in [[b] for b in sensitivity.WIDTHS] + [sensitivity.WIDTHS]:
        config = sensitivity.sensitivity_config(name, widths, group, start.calib, ctx)
        assert config.bits == tuple(sorted(widths)) and config.group_size == group and config.calib == start.calib


@pytest.mark.parametrize("build", [
    lambda: quantize.eval_configs("resnet20-mlxq", []),
    lambda: quantize.eval_configs("resnet20-mlxq", [7]),
    lambda: quantize.eval_configs("resnet20-mlxq", [None]),
    lambda: quantize.eval_configs("resnet20-mlxq", [4], mode="mxfp8", group_size=None),
    lambda: quantize.eval_configs("resnet20-mlxq", [None], mode="nvfp4", group_size=32),
    lambda: quantize.eval_configs("resnet20-mlxq", [4], group_size=48),
    lambda: quantize.eval_configs("resnet20-mlxq", [4], limit=-1),
    lambda: quantize.export_config("resnet20-mlxq", 4, " ", "mlx", False),
    lambda: quantize.export_config("resnet20-mlxq", 4, "x", "onnx", False),
    lambda: sensitivity.sensitivity_config("resnet20-mlxq", [], 64, 16, 512),
    lambda: sensitivity.sensitivity_config("resnet20-mlxq", [16], 64, 16, 512),
    lambda: sensitivity.sensitivity_config("resnet20-mlxq", [4], 64, 0, 512),
])
def test_a_refused_form_says_why_in_words(build):
    with pytest.raises(LabError) as refused:
        build()
    assert "--" not in str(refused.value) and refused.value.setting  # the command line adds the flag
