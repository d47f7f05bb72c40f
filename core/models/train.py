"""Training a CIFAR-10 ResNet from scratch in MLX: the recipe behind the built-in `resnet20-mlxq`.

Recipe (He et al. 2016 with the now-common cosine schedule): SGD with Nesterov momentum 0.9, weight decay 5e-4,
batch 128, learning rate 0.1 warmed up linearly over the first epoch then cosine-annealed to 0; augmentation is a
random 32x32 crop of the 4-pixel zero-padded image and a horizontal flip. Everything random derives from one seed,
per epoch, so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from core.models import resnet
from core.data import load_cifar10, stratified_indices
from core.errors import LabError

CHECKPOINT = "checkpoint.safetensors"
OPTIMIZER = "optimizer.safetensors"
HISTORY = "history.json"


@dataclass(frozen=True)
class Recipe:
    model: str = "resnet20"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    seed: int = 0
    limit: int | None = None  # train on a stratified subset (for smoke tests); None = all 50,000 images
    # Checked by core.models.train_config.TrainConfig.validated, which every run (command, job) goes through.


def new_model(name: str, seed: int) -> nn.Module:
    """A freshly initialised ResNet: the seed fixes every initial weight (the linear layer's default init too)."""
    mx.random.seed(seed)
    model = resnet.CifarResNet(resnet.DEPTHS[name])
    init_weights(model)
    return model


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolution kernels, as in the paper; MLX's default uniform init trains worse."""
    def he_fan_out(w: mx.array) -> mx.array:  # OHWI kernel: fan-out = out channels x kh x kw
        return mx.random.normal(w.shape) * (2.0 / (w.shape[0] * w.shape[1] * w.shape[2])) ** 0.5

    model.update(tree_unflatten([(k, he_fan_out(v) if v.ndim == 4 else v)
                                 for k, v in tree_flatten(model.parameters())]))


def augment(padded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 crops of 40x40 zero-padded uint8 images, each flipped left-right with probability 1/2."""
    n = len(padded)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32), axis=(1, 2))  # [N, 9, 9, 3, 32, 32]
    dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
    crops = windows[np.arange(n), dy, dx].transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    flip = rng.random(n) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    return crops


def normalise(images: mx.array) -> mx.array:
    return (images.astype(mx.float32) / 255.0 - mx.array(resnet.MEAN)) / mx.array(resnet.STD)


def schedule(recipe: Recipe, steps_per_epoch: int):
    warmup = max(1, recipe.warmup_epochs * steps_per_epoch)
    total = recipe.epochs * steps_per_epoch
    return optim.join_schedules(
        [optim.linear_schedule(recipe.lr / warmup, recipe.lr, warmup),
         optim.cosine_decay(recipe.lr, max(1, total - warmup), 0.0)], [warmup])


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(normalise(mx.array(images[start:start + batch])))
        correct += int((logits.argmax(axis=1) == mx.array(labels[start:start + batch])).sum())
    model.train()
    return 100.0 * correct / len(images)


def _save(out: Path, model: nn.Module, optimizer: optim.Optimizer, history: list[dict], recipe: Recipe) -> None:
    """Weights, optimizer state and history, each written whole then renamed: a kill never leaves half a file."""
    out.mkdir(parents=True, exist_ok=True)
    for name, arrays in ((CHECKPOINT, dict(tree_flatten(model.parameters()))),
                         (OPTIMIZER, dict(tree_flatten(optimizer.state)))):
        tmp = out / f".{name}.tmp.safetensors"
        mx.save_safetensors(str(tmp), arrays)
        tmp.replace(out / name)
    tmp = out / f".{HISTORY}.tmp"
    from core.runtime import describe

    tmp.write_text(json.dumps({"recipe": asdict(recipe), "environment": describe(), "epochs": history}, indent=1))
    tmp.replace(out / HISTORY)


def _resume(out: Path, model: nn.Module, optimizer: optim.Optimizer, recipe: Recipe) -> list[dict]:
    if not (out / HISTORY).is_file():
        return []
    saved = json.loads((out / HISTORY).read_text())
    if saved["recipe"] != asdict(recipe):
        raise LabError(f"{out} holds a run with another recipe ({saved['recipe']}); use a fresh --out folder.")
    model.load_weights(str(out / CHECKPOINT))
    optimizer.state = tree_unflatten(list(mx.load(str(out / OPTIMIZER)).items()))
    return saved["epochs"]


def _split(recipe: Recipe, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 `split`, or its class-stratified subset of `limit` images."""
    images, labels = load_cifar10(split)
    if limit is None:
        return images, labels
    keep = stratified_indices(labels, limit, recipe.seed)
    return images[keep], labels[keep]


def train(recipe: Recipe, out: Path, progress=None, eval_every: int = 1, test_limit: int | None = None) -> list[dict]:
    """Train (or resume) into `out`; returns the per-epoch history. progress(fraction, message) is optional;
    test_limit evaluates the curve on a stratified subset of the test set (smoke tests only)."""
    (x_train, y_train), (x_test, y_test) = _split(recipe, "train", recipe.limit), _split(recipe, "test", test_limit)
    padded = np.pad(x_train, ((0, 0), (4, 4), (4, 4), (0, 0)))
    steps = len(x_train) // recipe.batch_size  # the last partial batch is dropped (BatchNorm needs real batches)
    if steps == 0:
        raise LabError(f"{len(x_train)} training images are fewer than one batch of {recipe.batch_size}.")

    model = new_model(recipe.model, recipe.seed)
    model.train()
    optimizer = optim.SGD(learning_rate=schedule(recipe, steps), momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=True)
    optimizer.init(model.trainable_parameters())
    history = _resume(out, model, optimizer, recipe)
    mx.eval(model.parameters(), optimizer.state)

    def loss_fn(x, y):
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(images, labels):
        loss, grads = nn.value_and_grad(model, loss_fn)(normalise(images), labels)
        optimizer.update(model, grads)
        return loss

    for epoch in range(len(history), recipe.epochs):
        began = time.perf_counter()
        rng = np.random.default_rng([recipe.seed, epoch])
        order = rng.permutation(len(x_train))
        images, labels = mx.array(augment(padded[order], rng)), mx.array(y_train[order].astype(np.int32))
        losses = []
        for i in range(steps):
            batch = slice(i * recipe.batch_size, (i + 1) * recipe.batch_size)
            loss = step(images[batch], labels[batch])
            mx.async_eval(loss, state)  # keeps the device busy while the next batch is sliced
            losses.append(loss)
            if progress and i % 20 == 0:
                progress((epoch + i / steps) / recipe.epochs, f"epoch {epoch + 1}/{recipe.epochs}")
        train_loss = float(mx.stack(losses).mean())
        seconds = time.perf_counter() - began
        last = epoch + 1 == recipe.epochs
        accuracy = evaluate(model, x_test, y_test) if last or (epoch + 1) % eval_every == 0 else None
        history.append({"epoch": epoch + 1, "train_loss": round(train_loss, 5), "test_top1": accuracy,
                        "lr": float(optimizer.learning_rate), "seconds": round(seconds, 2)})
        _save(out, model, optimizer, history, recipe)
        if progress:
            acc = f", test {accuracy:.2f} %" if accuracy is not None else ""
            progress((epoch + 1) / recipe.epochs, f"epoch {epoch + 1}: loss {train_loss:.3f}{acc}, {seconds:.1f} s")
    return history


def curve_figure(history: list[dict]):
    """Training loss and test accuracy per epoch, one Plotly figure with two y axes."""
    import plotly.graph_objects as go

    epochs = [h["epoch"] for h in history]
    tested = [h for h in history if h["test_top1"] is not None]
    fig = go.Figure()
    fig.add_scatter(x=epochs, y=[h["train_loss"] for h in history], name="training loss", yaxis="y")
    fig.add_scatter(x=[h["epoch"] for h in tested], y=[h["test_top1"] for h in tested],
                    name="test top-1 %", yaxis="y2")
    fig.update_layout(xaxis_title="epoch", yaxis=dict(title="training loss (cross-entropy)"),
                      yaxis2=dict(title="CIFAR-10 test top-1 %", overlaying="y", side="right"),
                      legend=dict(orientation="h"), margin=dict(t=30))
    return fig


def write_curve(out: Path) -> Path | None:
    """curve.html beside the history; None where plotly is not installed (a bare GPU host)."""
    try:
        figure = curve_figure(json.loads((out / HISTORY).read_text())["epochs"])
    except ImportError:
        return None
    path = out / "curve.html"
    figure.write_html(str(path), include_plotlyjs="cdn")
    return path


def load_history(folder: Path) -> dict:
    return json.loads((folder / HISTORY).read_text())
