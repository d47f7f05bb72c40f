"""llama.cpp (llama-cpp-python) measured by the lab's own protocol: perplexity and KL over the same token windows,
at the positions the lab's evaluator scores (core.eval.quality: tokens half+1 .. len-1 of each window). `llm` is a
llama_cpp.Llama made with logits_all=True and a context of at least one window."""
from __future__ import annotations

import numpy as np


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


def llama_quality(llm, windows: np.ndarray, reference_logp: list[np.ndarray]) -> dict:
    """llama.cpp's perplexity and mean per-token KL(reference || llama.cpp) over the second half of each window,
    with their standard errors; `reference_logp[i]` holds the reference's log-probabilities at the same positions
    of window i."""
    nll, kl = [], []
    for window, ref in zip(windows, reference_logp):
        logp = scored_logprobs(llm, window)
        nll.append(_token_losses(logp, window))
        kl.append((np.exp(ref) * (ref - logp)).sum(axis=1))
    nll, kl = np.concatenate(nll), np.concatenate(kl)
    ppl = float(np.exp(nll.mean()))
    return {"ppl": ppl, "ppl_stderr": ppl * float(nll.std(ddof=1)) / np.sqrt(nll.size),
            "kl": float(kl.mean()), "kl_stderr": float(kl.std(ddof=1)) / np.sqrt(kl.size), "tokens": int(nll.size)}
