"""Distilled quantization (DWQ), the lab's own: starting from another method's quantized model, learn the
quantization scales and biases, and the norms' parameters, so that the quantized model's outputs match the
full-precision model's on calibration data.

- The integers stay as the starting method chose them: the size and packed layout do not change, and export and
  serving treat the result like any other quantized model.
- Loss: KL(full precision || quantized) of the output distribution, per token (language models) or per image
  (ResNets) — the divergence the lab reports.
- What Adam moves is a float32 offset per trained array: a scale or grid bias moves in units of its own group's
  starting step size (|scale|), so one rate suits every layer and model (a grid bias shifts a whole group at once,
  and in a ResNet its effect grows with the sum of the group's inputs); a norm's parameter moves in its own units.
  The model sees the result cast to the stored dtype (16-bit scales) in every forward pass: what is learned is
  what is stored.
- A few calibration items, evenly spread, are held out: their KL after every `eval_every` steps is the curve, and the state with
  the lowest held-out KL is the one kept, so distillation never ends worse on held-out data than it started.
- Each evaluation also writes a checkpoint; a run interrupted and started again with the same settings resumes."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path, tree_unflatten

from core import data
from core.quant.kernels import use_measured_kernels

NORMS = (nn.RMSNorm, nn.LayerNorm, nn.BatchNorm)
CHECKPOINT_VERSION = 2  # 2: held-out items evenly spread (were the first ones)


@dataclass(frozen=True)
class DwqSettings:
    steps: int
    lr: float
    batch: int  # calibration items per step (chunks of tokens, or images)
    held_out: int  # calibration items kept for the held-out KL
    eval_every: int
    seed: int = 0


@dataclass
class DwqPoint:
    step: int
    train_kl: float | None  # mean over the steps since the last point (None at step 0)
    held_out_kl: float
    seconds: float  # training time so far


def trainable(model: nn.Module) -> dict:
    """Freeze everything but the affine quantized layers' scales and biases and the norms' parameters."""
    model.freeze()

    def pick(_, m):
        if hasattr(m, "bits") and getattr(m, "mode", None) == "affine" and "biases" in m:
            m.unfreeze(keys=["scales", "biases"], recurse=False)
        elif isinstance(m, NORMS):
            m.unfreeze(keys=[k for k in ("weight", "bias") if k in m], recurse=False)

    model.apply_to_modules(pick)
    return model.trainable_parameters()


def _step_units(arrays: dict) -> dict:
    """Per trained array, what one unit of its offset means: |scale| of its group for a quantized layer's scales
    and biases, 1 for anything else."""
    flat = dict(tree_flatten(arrays))

    def unit(path: str, value: mx.array) -> mx.array:
        prefix, _, name = path.rpartition(".")
        scales = flat.get(f"{prefix}.scales" if prefix else "scales")
        return mx.abs(scales) if name in ("scales", "biases") and scales is not None else mx.ones_like(value)

    return tree_map_with_path(unit, arrays)


def held_out_split(inputs: mx.array, held_out: int) -> tuple[mx.array, mx.array]:
    """(held-out items, training items): the held-out ones evenly spread over `inputs`, which may be ordered
    (calibration images come in class order: a prefix would hold out one or two classes and train on the rest)."""
    held = data.spread_indices(len(inputs), held_out)
    rest = np.setdiff1d(np.arange(len(inputs)), held)
    return inputs[mx.array(held)], inputs[mx.array(rest)]


def _log_softmax(logits: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _kl(target_logp: mx.array, logits: mx.array) -> mx.array:
    """Mean KL(target || model) over every position."""
    return (mx.exp(target_logp) * (target_logp - _log_softmax(logits))).sum(axis=-1).mean()


class _Student:
    """The quantized model seen through its trained offsets (see the module docstring), with the held-out set."""

    def __init__(self, student: nn.Module, teacher: nn.Module, held_out: mx.array, batch: int):
        self.model, self.batch, self.held_out = student, batch, held_out
        start = trainable(student)
        self.dtypes = tree_map(lambda a: a.dtype, start)
        self.start = tree_map(lambda a: a.astype(mx.float32), start)
        self.units = _step_units(self.start)
        self.targets = [_log_softmax(teacher(held_out[i:i + batch])) for i in range(0, len(held_out), batch)]
        mx.eval(self.targets)

    def zero_offsets(self) -> dict:
        return tree_map(mx.zeros_like, self.start)

    def set(self, offsets) -> None:
        self.model.update(tree_map(lambda a, unit, u, dtype: (a + unit * u).astype(dtype),
                                   self.start, self.units, offsets, self.dtypes))

    def loss(self, offsets, x: mx.array, target_logp: mx.array) -> mx.array:
        self.set(offsets)
        return _kl(target_logp, self.model(x))

    def held_out_kl(self, offsets) -> float:
        self.set(offsets)
        total = 0.0
        for i, target in zip(range(0, len(self.held_out), self.batch), self.targets):
            total += _kl(target, self.model(self.held_out[i:i + self.batch])).item() * len(target)
        return total / len(self.held_out)


def distill(student: nn.Module, teacher: nn.Module, inputs: mx.array, settings: DwqSettings,
            checkpoint: Path | None = None, progress=None) -> list[DwqPoint]:
    """Train `student` (quantized, in place) towards `teacher` (full precision) on `inputs` (token chunks or
    images); returns the held-out KL curve. The student ends with the lowest held-out KL state seen."""
    step_report = progress or (lambda fraction, message: None)
    teacher.eval()
    student.eval()  # BatchNorm on its running statistics: only its scale and shift learn
    use_measured_kernels(student)  # on a CPU, many rows run de-quantize + BLAS (and their gradients too)
    held_out, train = held_out_split(inputs, settings.held_out)
    run = _Student(student, teacher, held_out, settings.batch)
    params = run.zero_offsets()
    opt = optim.Adam(learning_rate=settings.lr)
    opt.init(params)
    grad_fn = mx.value_and_grad(run.loss)
    state = _resume(checkpoint, settings, params, opt)
    if state is None:
        state = {"step": 0, "curve": [asdict(DwqPoint(0, None, run.held_out_kl(params), 0.0))]}
        best = params
    else:
        params, best = state.pop("params"), state.pop("best_params")
    best_kl = min(p["held_out_kl"] for p in state["curve"])
    order = np.random.default_rng(settings.seed).permutation(
        np.resize(np.arange(len(train)), settings.steps * settings.batch))
    since, losses, start = state["curve"][-1]["seconds"], [], time.perf_counter()
    for step in range(state["step"], settings.steps):
        x = train[mx.array(order[step * settings.batch:(step + 1) * settings.batch])]
        loss, grads = grad_fn(params, x, mx.stop_gradient(_log_softmax(teacher(x))))
        params = opt.apply_gradients(grads, params)
        mx.eval(loss, params, opt.state)
        losses.append(loss.item())
        done = step + 1
        step_report(done / settings.steps, f"distilling: step {done}/{settings.steps}, KL {np.mean(losses[-10:]):.4f}")
        if done % settings.eval_every == 0 or done == settings.steps:
            kl = run.held_out_kl(params)
            state["curve"].append(asdict(DwqPoint(done, float(np.mean(losses)), kl,
                                                  since + time.perf_counter() - start)))
            losses = []
            if kl < best_kl:
                best_kl, best = kl, params
            state["step"] = done
            if checkpoint is not None:
                _save(checkpoint, settings, state, params, best, opt)
    run.set(best)
    mx.eval(student.parameters())
    use_measured_kernels(student, enabled=False)  # the model is deployed later with its own kernel choice
    return [DwqPoint(**p) for p in state["curve"]]


# ---- checkpoints -------------------------------------------------------------------------------------------------

def _save(folder: Path, settings: DwqSettings, state: dict, params, best, opt) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"params.{k}": v for k, v in tree_flatten(params)}
    arrays |= {f"best.{k}": v for k, v in tree_flatten(best)}
    arrays |= {f"opt.{k}": v for k, v in tree_flatten(opt.state)}
    mx.save_safetensors(str(folder / "state.part.safetensors"), arrays)
    (folder / "state.part.json").write_text(json.dumps({"version": CHECKPOINT_VERSION, "settings": asdict(settings),
                                                       "step": state["step"], "curve": state["curve"]}))
    # arrays first, then the description that points at them: a crash in between leaves the old pair valid
    (folder / "state.part.safetensors").replace(folder / "state.safetensors")
    (folder / "state.part.json").replace(folder / "state.json")


def _resume(folder: Path | None, settings: DwqSettings, params, opt) -> dict | None:
    """The saved state when `folder` holds a checkpoint of this very run, else None (start afresh)."""
    if folder is None:
        return None
    try:
        meta = json.loads((folder / "state.json").read_text())
        arrays = mx.load(str(folder / "state.safetensors"))
    except (OSError, ValueError, RuntimeError):
        return None
    if meta.get("version") != CHECKPOINT_VERSION or meta.get("settings") != asdict(settings):
        return None

    def part(prefix: str):
        return tree_unflatten([(k[len(prefix) + 1:], v) for k, v in arrays.items() if k.startswith(prefix + ".")])

    saved = part("params")
    if tree_map(lambda a: a.shape, saved) != tree_map(lambda a: a.shape, params):
        return None
    opt.state = part("opt")
    return {"step": meta["step"], "curve": meta["curve"], "params": saved, "best_params": part("best")}
