"""llama.cpp (llama-cpp-python) measured by the lab's own protocol: perplexity and KL over the same token windows,
at the positions the lab's evaluator scores (core.eval.quality: tokens half+1 .. len-1 of each window). `llm` is a
llama_cpp.Llama made with logits_all=True and a context of at least one window."""
from __future__ import annotations

import numpy as np

from core.eval import quality


def scored_logprobs(llm, window: np.ndarray) -> np.ndarray:
    """llama.cpp's log-probabilities at positions half .. len-2 of `window` (float64)."""
    llm.reset()
    llm.eval(window.tolist())
    logits = np.asarray(llm.scores[len(window) // 2: len(window) - 1], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))


def _token_losses(logp: np.ndarray, window: np.ndarray) -> np.ndarray:
    return -logp[np.arange(len(logp)), window[len(window) // 2 + 1:]]


def llama_perplexity(llm, windows: np.ndarray) -> float:
    """llama.cpp's perplexity over the second half of each window."""
    return float(np.exp(np.concatenate([_token_losses(scored_logprobs(llm, w), w) for w in windows]).mean()))


def window_losses(llm, window: np.ndarray, reference_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's per-token losses and per-token KL(reference || llama.cpp) at the scored positions of one window;
    `reference_logp` holds the reference's log-probabilities at those positions."""
    logp = scored_logprobs(llm, window)
    return _token_losses(logp, window), (np.exp(reference_logp) * (reference_logp - logp)).sum(axis=1)


def summary(nll: list[np.ndarray], kl: list[np.ndarray]) -> dict:
    """Perplexity and mean KL over every scored token of the windows given, with their standard errors."""
    nll, kl = np.concatenate(nll), np.concatenate(kl)
    ppl, ppl_stderr = quality.ppl_with_stderr(nll)
    return {"ppl": ppl, "ppl_stderr": ppl_stderr, "kl": float(kl.mean()),
            "kl_stderr": float(kl.std(ddof=1)) / np.sqrt(kl.size), "tokens": int(nll.size)}


def llama_quality(llm, windows: np.ndarray, reference_logp: list[np.ndarray]) -> dict:
    """llama.cpp's perplexity and mean per-token KL(reference || llama.cpp) over the second half of each window,
    with their standard errors; `reference_logp[i]` holds the reference's log-probabilities at the same positions
    of window i."""
    losses = [window_losses(llm, window, ref) for window, ref in zip(windows, reference_logp)]
    return summary([nll for nll, _ in losses], [kl for _, kl in losses])
