"""A training run: its configuration (the recipe of core.models.train plus where to write and how often to test),
validated once, and `run_train`, the one call the command line and the jobs make."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from core.errors import LabError
from core.models.resnet import DEPTHS
from core.options import option, positive_int


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; the fields before `eval_every` are the recipe (core.models.train's
    Recipe, which a resumed run must match)."""

    model: str = option("resnet20", "resnet20 (default), resnet32, resnet44 or resnet56")
    epochs: int = option(200, None, parse=positive_int)  # epochs to train
    batch_size: int = option(128, None, parse=positive_int)  # images per step
    lr: float = option(0.1, "peak learning rate (cosine schedule)")
    momentum: float = option(0.9, "SGD (Nesterov) momentum", cli=False)
    weight_decay: float = option(5e-4, None)
    warmup_epochs: int = option(1, "epochs of linear warm-up", cli=False)
    seed: int = option(0, None)  # the initial weights, the augmentation, the subset
    limit: int | None = option(None, "train on N images (smoke tests)", parse=positive_int)
    eval_every: int = option(1, "test accuracy every N epochs (curve)", parse=positive_int)
    out: str = option("cache/train/resnet20", "checkpoints, history.json and curve.html")

    def validated(self) -> "TrainConfig":
        """The same config, or a LabError that says in words what is wrong."""
        if self.model not in DEPTHS:
            raise LabError(f"Can only train {', '.join(DEPTHS)}, not {self.model!r}.", "model", self.model)
        for name, what in (("epochs", "The number of epochs"), ("batch_size", "The batch size"),
                           ("eval_every", "The test interval (epochs)")):
            if getattr(self, name) < 1:
                raise LabError(f"{what} must be a positive number, not {getattr(self, name)}.", name,
                               getattr(self, name))
        if self.limit is not None and self.limit < 1:
            raise LabError(f"The training subset must be a positive number of images, not {self.limit}.", "limit",
                           self.limit)
        if not 0 < self.lr < 10:
            raise LabError(f"The learning rate must be between 0 and 10, not {self.lr:g}.", "lr", self.lr)
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or self.warmup_epochs < 0:
            raise LabError("Weight decay must be at least 0, momentum in [0, 1) and the warm-up at least 0 epochs.",
                           "weight_decay", self.weight_decay)
        if not str(self.out).strip():
            raise LabError("Say where to write the checkpoints and the history (a folder).", "out")
        return self

    def recipe(self):
        """The training recipe (core.models.train.Recipe): the fields that decide the weights."""
        from core.models.train import Recipe

        return Recipe(**{f.name: getattr(self, f.name) for f in fields(Recipe)})


def run_train(config: TrainConfig, progress=None) -> list[dict]:
    """Train (or resume) into `config.out`; the per-epoch history. A cancelled run resumes from its last finished
    epoch."""
    from core.models.train import train

    cfg = config.validated()
    return train(cfg.recipe(), Path(cfg.out), progress=progress, eval_every=cfg.eval_every)


def train_summary(config: TrainConfig, history: list[dict]) -> dict:
    """What a job records of a training run."""
    return {"final_top1": history[-1]["test_top1"], "epochs": len(history), "out": str(config.out)}
