"""llama.cpp (llama-cpp-python) measured by the lab's own protocol: perplexity over the same token windows."""
from __future__ import annotations

import numpy as np


def llama_perplexity(llm, windows: np.ndarray) -> float:
    """llama.cpp's perplexity over the second half of each window (the lab's protocol and positions: tokens
    half+1 .. len-1, the lab's tokens); `llm` is a llama_cpp.Llama made with logits_all=True and a context of at
    least one window."""
    nll = []
    for window in windows:
        llm.reset()
        llm.eval(window.tolist())
        logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        half = len(window) // 2
        nll += [-logp[i, window[i + 1]] for i in range(half, len(window) - 1)]
    return float(np.exp(np.mean(nll)))


def llama_quality(llm, windows: np.ndarray, reference_logp: list[np.ndarray]) -> dict:
    """llama.cpp's perplexity and mean per-token KL(reference || llama.cpp) over the second half of each window,
    with their standard errors; `reference_logp[i]` holds the reference's log-probabilities at positions
    half .. len-2 of window i, which predict tokens half+1 .. len-1 (the positions the lab's evaluator scores)."""
    nll, kl = [], []
    for window, ref in zip(windows, reference_logp):
        llm.reset()
        llm.eval(window.tolist())
        half = len(window) // 2
        logits = np.asarray(llm.scores[half: len(window) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        nll.append(-logp[np.arange(len(logp)), window[half + 1:]])
        kl.append((np.exp(ref) * (ref - logp)).sum(axis=1))
    nll, kl = np.concatenate(nll), np.concatenate(kl)
    ppl = float(np.exp(nll.mean()))
    return {"ppl": ppl, "ppl_stderr": ppl * float(nll.std(ddof=1)) / np.sqrt(nll.size),
            "kl": float(kl.mean()), "kl_stderr": float(kl.std(ddof=1)) / np.sqrt(kl.size), "tokens": int(nll.size)}
