"""Training from scratch (core/models/train.py) and the model it produced, resnet20-mlxq."""
import json

import numpy as np
import pytest

from conftest import REPO, needs_mirror
from core.models import registry as models
from core.models.train import Recipe, augment, load_history, train


def test_augment_crops_inside_the_padding_and_flips_about_half():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (400, 32, 32, 3), dtype=np.uint8)  # no zeros: padding is recognisable
    crops = augment(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))), np.random.default_rng(1))
    assert crops.shape == images.shape and crops.dtype == np.uint8
    flipped = 0
    for original, crop in zip(images, crops):
        found = [f for f in (False, True) if _is_shifted_crop(original[:, ::-1] if f else original, crop)]
        assert found, "a crop is not a shifted (and possibly flipped) copy of its image"
        flipped += found[0]
    assert 150 < flipped < 250  # p = 1/2, n = 400: outside this range has probability < 1e-4


def _is_shifted_crop(image: np.ndarray, crop: np.ndarray) -> bool:
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    return any(np.array_equal(padded[dy:dy + 32, dx:dx + 32], crop) for dy in range(9) for dx in range(9))


@needs_mirror
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    """Two epochs in one go, and one epoch, an interruption, then a resume: the same weights, to the bit."""
    import mlx.core as mx

    recipe = Recipe(epochs=2, batch_size=32, limit=96, seed=3)
    whole = train(recipe, tmp_path / "whole", test_limit=100)
    with pytest.raises(_Stop):
        train(recipe, tmp_path / "split", test_limit=100, progress=_stop_after_epoch(1))
    assert len(load_history(tmp_path / "split")["epochs"]) == 1
    resumed = train(recipe, tmp_path / "split", test_limit=100)
    a, b = (mx.load(str(tmp_path / run / "checkpoint.safetensors")) for run in ("whole", "split"))
    assert a.keys() == b.keys() and all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in a)
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in whole]
    assert whole[0]["test_top1"] is not None and 0 <= whole[-1]["test_top1"] <= 100


def test_a_resume_with_another_recipe_is_refused(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps({"recipe": {"epochs": 3}, "epochs": []}))
    with pytest.raises(Exception, match="another recipe"):
        train(Recipe(epochs=2, limit=64, batch_size=32), tmp_path)


class _Stop(Exception):
    pass


def _stop_after_epoch(n: int):
    def progress(fraction, message):
        if message.startswith(f"epoch {n}:"):
            raise _Stop
    return progress


@needs_mirror
def test_the_committed_resnet20_mlxq_scores_its_recorded_accuracy_on_the_full_test_set():
    """The weights in models/ reproduce, on this machine, the last epoch's test accuracy recorded while training
    on the GPU (within 3 of 10,000 images: GPU and CPU convolutions round differently), and pass 91.5 %."""
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    recorded = load_history(models.OWN_RESNET_DIR)["epochs"][-1]["test_top1"]
    result = run_eval(EvalConfig(models.OWN_RESNET, bits=16, bench=False), use_cache=False)
    assert result.n == 10_000
    assert abs(result.value - recorded) <= 0.03
    assert result.value >= 91.5
