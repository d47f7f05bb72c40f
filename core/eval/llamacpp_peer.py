"""llama.cpp (llama-cpp-python) measured by the lab's own protocol: perplexity over the same token windows."""
from __future__ import annotations

import numpy as np


def llama_perplexity(llm, windows: np.ndarray) -> float:
    """llama.cpp's perplexity over the second half of each window (the lab's protocol, the lab's tokens); `llm` is a
    llama_cpp.Llama made with logits_all=True and a context of at least one window."""
    nll = []
    for window in windows:
        llm.reset()
        llm.eval(window.tolist())
        logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        half = len(window) // 2
        nll += [-logp[i, window[i + 1]] for i in range(half - 1, len(window) - 1)]
    return float(np.exp(np.mean(nll)))
