"""DWQ, the lab's distilled quantization: held-out KL goes down while the stored integers stay put, a run stopped
midway resumes to the very same result, and the method's flags are checked like every other's."""
import copy

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import needs_mirror
from core.errors import LabError
from core.quant.config import QuantConfig
from core.quant.dwq import DwqSettings, distill, held_out_split
from core.quant.layers import quantize_model
from core.quant.spec import QuantSpec


class TinyLM(nn.Module):
    """Embedding, a norm, a gated MLP and the embedding as the output layer (a llama block in miniature)."""

    def __init__(self, vocab=256, dims=64, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dims)
        self.norm = nn.RMSNorm(dims)
        self.gate, self.up = nn.Linear(dims, hidden, bias=False), nn.Linear(dims, hidden, bias=False)
        self.down = nn.Linear(hidden, dims, bias=False)

    def __call__(self, tokens):
        h = self.embed(tokens)
        x = self.norm(h)
        return self.embed.as_linear(h + self.down(nn.silu(self.gate(x)) * self.up(x)))


def teacher_and_student(bits=3):
    mx.random.seed(0)
    teacher = TinyLM()
    teacher.embed.weight = 3 * teacher.embed.weight  # peaked outputs, as a trained model's are
    student = copy.deepcopy(teacher)
    quantize_model(student, QuantSpec(bits, 32).validated())
    tokens = mx.array(np.random.default_rng(0).integers(0, 256, (40, 24)))
    return teacher, student, tokens


def packed(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters()) if k.endswith("weight") and v.dtype == mx.uint32}


def test_distillation_lowers_the_held_out_kl_and_keeps_the_integers():
    teacher, student, tokens = teacher_and_student()
    before = packed(student)
    scale_dtypes = {k: v.dtype for k, v in tree_flatten(student.parameters()) if k.endswith("scales")}
    curve = distill(student, teacher, tokens, DwqSettings(steps=60, lr=1e-4, batch=4, held_out=8, eval_every=20))
    assert [p.step for p in curve] == [0, 20, 40, 60]
    assert curve[0].train_kl is None and all(p.train_kl > 0 for p in curve[1:])
    # the model keeps the best held-out state: at least a third below where it started
    best = min(p.held_out_kl for p in curve)
    assert best < 0.67 * curve[0].held_out_kl, [p.held_out_kl for p in curve]
    held_out, _ = held_out_split(tokens, 8)
    logp = nn.log_softmax(teacher(held_out), axis=-1)
    final = (mx.exp(logp) * (logp - nn.log_softmax(student(held_out), axis=-1))).sum(-1).mean().item()
    assert final == pytest.approx(best, rel=1e-4)
    after = packed(student)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert {k: v.dtype for k, v in tree_flatten(student.parameters()) if k.endswith("scales")} == scale_dtypes


class Interrupt(Exception):
    pass


def test_held_out_items_are_spread_over_inputs_in_class_order():
    """Calibration images come sorted by class: the held-out set must see every class, and no item is in both."""
    items = mx.arange(400)  # ten classes of 40, in order
    held_out, train = held_out_split(items, 50)
    assert len(held_out) == 50 and len(train) == 350
    assert set(np.array(held_out // 40).tolist()) == set(range(10))
    assert sorted(np.array(held_out).tolist() + np.array(train).tolist()) == list(range(400))


def test_a_stopped_run_resumes_to_the_same_result(tmp_path):
    settings = DwqSettings(steps=30, lr=1e-4, batch=4, held_out=8, eval_every=10)
    teacher, whole, tokens = teacher_and_student()
    whole_curve = distill(whole, teacher, tokens, settings)

    _, stopped, _ = teacher_and_student()

    def stop_at_step_25(fraction, message):
        if fraction >= 25 / 30:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill(stopped, teacher, tokens, settings, tmp_path / "ckpt", progress=stop_at_step_25)
    seen = []
    _, resumed, _ = teacher_and_student()
    resumed_curve = distill(resumed, teacher, tokens, settings, tmp_path / "ckpt",
                            progress=lambda f, m: seen.append(round(f * 30)))
    assert seen[0] == 21  # steps 1-20 were checkpointed; it went on from there
    assert [p.held_out_kl for p in resumed_curve] == [p.held_out_kl for p in whole_curve]
    for (name, a), (_, b) in zip(tree_flatten(whole.parameters()), tree_flatten(resumed.parameters())):
        assert np.array_equal(np.array(a), np.array(b)), name
    # other settings never pick up this checkpoint
    _, fresh, _ = teacher_and_student()
    other = distill(fresh, teacher, tokens, DwqSettings(steps=10, lr=1e-3, batch=4, held_out=8, eval_every=10),
                    tmp_path / "ckpt")
    assert [p.step for p in other] == [0, 10]


@pytest.mark.parametrize("overrides, fragment", [
    (dict(dwq_from="zzz"), "Distillation starts from rtn, gptq"),
    (dict(model="resnet20-mlxq", dwq_from="awq"), "AWQ is for language models"),
    (dict(dwq_from="mixed"), "from mixed needs a bits-per-weight budget"),
    (dict(dwq_lr=2.0), "learning rate must be between 0 and 1"),
    (dict(calib=3), "holds out 4 calibration items"),
    (dict(quantizer="symmetric"), "drop --q-quantizer symmetric"),
])
def test_bad_dwq_settings_say_what_is_wrong(overrides, fragment):
    config = dict(model="smollm2-135m-instruct", bits=4, method="dwq") | overrides
    with pytest.raises(LabError, match=fragment):
        QuantConfig(**config).validated()


def test_dwq_defaults_and_tags():
    lm = QuantConfig("smollm2-135m-instruct", bits=4, method="dwq").validated()
    assert (lm.dwq_from, lm.tag, lm.calib) == ("awq", "q4g64-awq-dwq", 64)
    vision = QuantConfig("resnet20-mlxq", bits=3, method="dwq").validated()
    assert (vision.dwq_from, vision.tag) == ("gptq", "q3g64-gptq-dwq")
    mixed = QuantConfig("smollm2-135m-instruct", bits=4, method="dwq", dwq_from="mixed", target_bpw=4.5).validated()
    assert mixed.tag == "mixed4.5-g64-dwq" and mixed.target_bpw == 4.5
    plain = QuantConfig("smollm2-135m-instruct", bits=4, dwq_steps=5).validated()
    assert plain.dwq_steps is None and plain.dwq_from is None  # only dwq keeps its settings (and cache keys)


@needs_mirror
def test_resnet_dwq_from_gptq_end_to_end():
    from core.quant.recipe import quantize

    q = quantize(QuantConfig("resnet20-mlxq", bits=3, method="dwq", calib=576, dwq_steps=16))
    curve = q.report.distillation
    assert [p.step for p in curve] == [0, 16]
    assert min(p.held_out_kl for p in curve) <= curve[0].held_out_kl
    assert q.config.tag == "q3g64-gptq-dwq" and len(q.report.quantized) == 20
