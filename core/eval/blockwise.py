"""Perplexity and KL against full precision with one piece of one model in memory at a time.

A group of windows goes through the reference model piece by piece (embedding, each block over every window of
the group, final norm), its pieces read from the checkpoint and dropped; then through the quantized model the
same way; then both heads score the group HEAD_ROWS positions at a time. What is held between pieces is the
group's hidden states, so the group size follows a memory budget. The numbers are those of a whole-model forward
pass (core.eval.quality.token_scores): the same operations in float32, the blocks on the same batches."""
from __future__ import annotations

import copy

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core import runtime
from core.parallel import map_batches
from core.eval.quality import DEFAULT_BATCH, SCORE_NAMES, Progress, token_losses
from core.models.lm import Chain
from core.quant.footprint import HEAD_ROWS, window_group
from core.quant.layers import float_copy, module_at


class ModelPieces:
    """The quantized model's pieces as evaluated: de-quantized to float32 copies (the CPU's path) or as they are."""

    def __init__(self, model: nn.Module, dequantize: bool):
        self.model, self.dequantize = model, dequantize

    def piece(self, path: str) -> nn.Module:
        module = module_at(self.model, path)
        return float_copy(copy.deepcopy(module)) if self.dequantize else module


def token_scores(chain: Chain, model, windows: np.ndarray, reference=None, batch_size: int | None = None,
                 progress: Progress | None = None) -> dict[str, np.ndarray]:
    """As core.eval.quality.token_scores, for `model` and `reference` given as pieces (`.piece(path)`, read when
    asked, freed when dropped) of the model `chain` describes."""
    n, ctx = windows.shape
    first = ctx // 2
    batch_size = batch_size or DEFAULT_BATCH.get(runtime.backend(), 8)
    per_group = window_group(ctx, chain.inner.norm.weight.shape[-1])
    step = progress or (lambda fraction, message: None)
    out: dict[str, list] = {}
    for start in range(0, n, per_group):
        rows = windows[start:start + per_group]
        done = lambda f, m, s=start: step((s + f * len(rows)) / max(n, 1), m)  # noqa: E731
        hidden = {"model": _final_hidden(chain, model, rows, first, batch_size,
                                         lambda f, m: done(f * (0.5 if reference else 0.9), m))}
        if reference is not None:
            hidden["reference"] = _final_hidden(chain, reference, rows, first, batch_size,
                                                lambda f, m: done(0.5 + 0.4 * f, f"reference: {m}"))
        for name, part in _score(chain, model, reference, hidden, rows[:, first + 1:]).items():
            out.setdefault(name, []).append(part)
        done(1.0, "scored")
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in out.items()}


def _final_hidden(chain: Chain, pieces, rows: np.ndarray, first: int, batch_size: int, progress) -> mx.array:
    """Hidden states after the final norm at the scored positions first..ctx-2, [len(rows), ctx-first-1, H]."""
    paths = [p for p in chain.paths if p != "lm_head"]
    h = None
    for n, path in enumerate(paths):
        piece = pieces.piece(path)
        if path == "model.embed_tokens":
            h = piece(mx.array(rows))
        elif path == "model.norm":
            h = piece(h[:, first:-1])
        else:
            mask = chain.mask(h[:batch_size], piece)
            h = mx.concatenate(list(map_batches(lambda b, piece=piece, mask=mask: piece(b, mask),
                                                [h[i:i + batch_size] for i in range(0, h.shape[0], batch_size)])))
        mx.eval(h)
        del piece
        progress((n + 1) / len(paths), path)
    return h


def _head(pieces, chain: Chain):
    if not chain.tied:
        return pieces.piece("lm_head")
    return pieces.piece("model.embed_tokens").as_linear


def _score(chain: Chain, model, reference, hidden: dict, targets: np.ndarray) -> dict:
    """Per-token loss (and KL, reference loss) from the final hidden states, HEAD_ROWS positions at a time: the
    vocabulary-wide arrays of a scoring step stay small whatever the model's size."""
    heads = {"model": _head(model, chain)}
    if reference is not None:
        heads["reference"] = _head(reference, chain)
    flat = {name: states.reshape(-1, states.shape[-1]) for name, states in hidden.items()}
    flat_targets = targets.reshape(-1)

    def logprobs(name: str, h: mx.array) -> mx.array:
        logits = heads[name](h).astype(mx.float32)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def score(i: int):
        target = mx.array(flat_targets[i:i + HEAD_ROWS])[:, None]
        ref_logp = None if reference is None else logprobs("reference", flat["reference"][i:i + HEAD_ROWS])
        return token_losses(logprobs("model", flat["model"][i:i + HEAD_ROWS]), target, ref_logp)

    names = SCORE_NAMES[:1] if reference is None else SCORE_NAMES
    scored = list(map_batches(score, range(0, flat_targets.size, HEAD_ROWS)))
    return {name: np.concatenate([np.array(parts[k]) for parts in scored]).reshape(targets.shape)
            for k, name in enumerate(names)}
