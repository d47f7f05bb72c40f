"""Quality metrics: CIFAR-10 top-1/top-5 accuracy and WikiText-2 perplexity (llama.cpp protocol) with KL divergence."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core import data, runtime
from core.cache import Memo
from core.parallel import map_batches
from core.models.lm import output_head
from core.quant.precision import activation_dtype

Progress = Callable[[float, str], None]  # fraction done, message; may raise to cancel


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@dataclass
class Accuracy:
    top1: float
    top5: float
    n: int
    ci95: tuple[float, float]
    predictions: np.ndarray  # top-1 class per image, for agreement with another model


def classify_batches(model: nn.Module, inputs: mx.array, batch_size: int = 500,
                     progress: Progress | None = None) -> np.ndarray:
    """Logits for every input row, computed batch by batch in the model's dtype."""
    dtype, out = activation_dtype(model), []
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start:start + batch_size]
        logits = model(batch if batch.dtype == dtype else batch.astype(dtype))
        mx.eval(logits)
        out.append(np.array(logits.astype(mx.float32)))
        if progress:
            progress(min(1.0, (start + batch_size) / inputs.shape[0]), "classifying")
    return np.concatenate(out)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> Accuracy:
    top5 = np.argsort(-logits, axis=1)[:, :5]
    hit1 = int((top5[:, 0] == labels).sum())
    hit5 = int((top5 == labels[:, None]).any(axis=1).sum())
    n = len(labels)
    return Accuracy(hit1 / n, hit5 / n, n, wilson_interval(hit1, n), top5[:, 0])


# ---- perplexity ---------------------------------------------------------------------------------------------------

PPL_PROTOCOL = ("llama.cpp protocol: non-overlapping {ctx}-token chunks of the whole tokenized text, {bos} "
                "first (as the tokenizer says), the second half of each chunk scored")


@dataclass
class Perplexity:
    ppl: float
    stderr: float  # of the perplexity, llama.cpp's formula (token losses treated as independent)
    n_tokens: int
    n_chunks: int
    kl_mean: float | None = None
    kl_stderr: float | None = None
    reference_ppl: float | None = None  # the reference model's perplexity on the same tokens, if one was given


def chunk_windows(tokens: np.ndarray, ctx: int, bos_id: int | None) -> np.ndarray:
    """[n_chunks, ctx] non-overlapping windows; with a BOS id, it replaces each window's first token (llama.cpp)."""
    n_chunks = len(tokens) // ctx
    windows = np.array(tokens[: n_chunks * ctx], dtype=np.int32).reshape(n_chunks, ctx)
    if bos_id is not None:
        windows[:, 0] = bos_id
    return windows


def scored_logprobs(model: nn.Module, batch: mx.array, first: int) -> mx.array:
    """Log-probabilities at positions first..ctx-2 (which predict tokens first+1..ctx-1), float32.

    For mlx-lm models with the usual `model.model` + head split, the vocabulary projection (a fifth of
    a small LLM's work) is applied to the scored half only."""
    inner = getattr(model, "model", None)
    if inner is not None and callable(inner):
        logits = output_head(model)(inner(batch)[:, first:-1])
    else:
        logits = model(batch)[:, first:-1]
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


SCORE_NAMES = ("loss", "kl", "reference_loss")
DEFAULT_BATCH = {"cpu": 2}  # windows per scoring batch: on a CPU 2 per stream measured fastest; 8 elsewhere


def token_losses(logp: mx.array, targets: mx.array, ref_logp: mx.array | None = None) -> tuple[mx.array, ...]:
    """From log-probabilities over the vocabulary and the targets ([..., 1] indices): the negative log-likelihood
    of each target, and with the reference's log-probabilities also KL(reference || model) and the reference's
    own negative log-likelihood (SCORE_NAMES, in that order)."""
    loss = -mx.take_along_axis(logp, targets, axis=-1).squeeze(-1)
    if ref_logp is None:
        return (loss,)
    kl = (mx.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1)
    return loss, kl, -mx.take_along_axis(ref_logp, targets, axis=-1).squeeze(-1)


def token_scores(model: nn.Module, windows: np.ndarray, reference: nn.Module | None = None,
                 batch_size: int | None = None, progress: Progress | None = None,
                 ordered: bool = True) -> dict[str, np.ndarray]:
    """Per scored token, [n_windows, ctx - ctx // 2 - 1] float32 arrays: `loss` (negative log-likelihood of the
    target), and with `reference` also `kl` (KL(reference || model)) and `reference_loss`. Batches of windows run on
    one CPU stream per core (core.parallel). `ordered=False` leaves the two passes' order to the lazy graph
    (the bench's ppl-kl section measures both)."""
    n_chunks, ctx = windows.shape
    first = ctx // 2
    batch_size = batch_size or DEFAULT_BATCH.get(runtime.backend(), 8)

    def score(rows: np.ndarray) -> tuple[mx.array, ...]:
        batch = mx.array(rows)
        targets = batch[:, first + 1:, None]
        if reference is None:
            return token_losses(scored_logprobs(model, batch, first), targets)
        ref_logp = scored_logprobs(reference, batch, first)
        # The model's pass starts once the reference's is done: left to itself, the lazy graph interleaves the two
        # forward passes, and with both models' activations alive at once a CPU ran the pair far slower than one
        # after the other (the bench's ppl-kl section measures it).
        logp = scored_logprobs(model, mx.depends(batch, ref_logp) if ordered else batch, first)
        return token_losses(logp, targets, ref_logp)

    batches = [windows[start:start + batch_size] for start in range(0, n_chunks, batch_size)]
    scored = list(map_batches(score, batches, progress=progress, message="scoring chunks"))
    names = SCORE_NAMES[:1] if reference is None else SCORE_NAMES
    width = ctx - first - 1
    return {name: (np.concatenate([np.array(parts[i]) for parts in scored]) if scored else
                   np.zeros((0, width), np.float32)).astype(np.float32) for i, name in enumerate(names)}


def summarize(scores: dict[str, np.ndarray]) -> Perplexity:
    """Perplexity ± s.e. (and mean KL ± s.e., the reference's perplexity) from `token_scores`' arrays."""
    losses = scores["loss"].ravel().astype(np.float64)
    ppl, stderr = ppl_with_stderr(losses)
    result = Perplexity(ppl, stderr, losses.size, scores["loss"].shape[0])
    if "kl" in scores:
        kls = scores["kl"].ravel().astype(np.float64)
        result.kl_mean = float(kls.mean())
        result.kl_stderr = float(kls.std(ddof=1) / math.sqrt(kls.size)) if kls.size > 1 else 0.0
        result.reference_ppl = ppl_with_stderr(scores["reference_loss"].ravel().astype(np.float64))[0]
    return result


def perplexity(model: nn.Module, windows: np.ndarray, reference: nn.Module | None = None, batch_size: int | None = None,
               progress: Progress | None = None) -> Perplexity:
    """Perplexity over the second half of each window; with `reference`, also the mean per-token
    KL(reference || model), the reference's distribution taken as the truth."""
    return summarize(token_scores(model, windows, reference, batch_size, progress))


def ppl_with_stderr(losses: np.ndarray) -> tuple[float, float]:
    """exp(mean loss) and its standard error by the delta method, as llama.cpp's perplexity prints it."""
    mean = float(losses.mean())
    ppl = math.exp(mean)
    if losses.size < 2:
        return ppl, float("nan")
    return ppl, ppl * float(losses.std(ddof=1)) / math.sqrt(losses.size)


_TOKENS = Memo("the tokenized WikiText-2 test text per model name (tokenizing takes seconds)")


def wikitext_tokens(model_name: str, tokenizer) -> np.ndarray:
    """The whole WikiText-2 raw test split as `tokenizer` encodes it, without special tokens."""
    return _TOKENS.get(model_name, lambda: np.asarray(
        tokenizer.encode(data.load_wikitext2_test(), add_special_tokens=False), dtype=np.int32))


def chunk_bos(policy: str, tokenizer) -> int | None:
    """llama-perplexity puts BOS first in each chunk only when the model's tokenizer adds a BOS (SmolLM2's does
    not); 'always' and 'never' override that."""
    bos = tokenizer.bos_token_id
    if bos is None or policy == "never":
        return None
    if policy == "always":
        return bos
    return bos if tokenizer.encode("x")[:1] == [bos] else None
