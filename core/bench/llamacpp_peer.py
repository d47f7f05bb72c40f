"""llama.cpp (llama-cpp-python) measured by the lab's own protocol: perplexity and KL over the same token windows,
at the positions the lab's evaluator scores (core.eval.quality: tokens half+1 .. len-1 of each window). `llm` is a
llama_cpp.Llama made with logits_all=True and a context of at least one window. The `llama-cpp` bench section
(`llama_cpp_peer`) sets its speed and perplexity beside the lab's deployed models."""
from __future__ import annotations

import time

import numpy as np

from core import data, runtime, settings
from core.bench.rows import BenchRow
from core.deploy.ids import load_deployed, parse_model_id
from core.eval import quality
from core.eval.speed import bench_generation
from core.models.gguf import find_or_fetch_smollm2_gguf
from core.models.registry import resolve
from core.quant.layers import dequantize_model
from core.quant.spec import QuantSpec


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


def llama_cpp_peer(chunks: int = 4, prompt_tokens: int = 512, new_tokens: int = 64,
                   tags=("fp", "q8", "q4g32")) -> list[BenchRow]:
    """llama.cpp (llama-cpp-python) on the very GGUF this project converts SmolLM2 from (Q4_1 linear layers,
    Q8_0 embedding), on the same CPU threads: prefill and greedy-decode tokens/s and perplexity on the same
    token windows (the project's tokenization, second half of each 512-token chunk scored), next to the project's
    deployed models at the closest widths, measured in the same run."""
    try:
        import llama_cpp
    except ImportError:
        return [BenchRow("peer", "llama.cpp", "not measured", float("nan"), "",
                         "llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36 builds it, ~10 min)")]
    info = resolve("smollm2-135m-instruct")
    gguf = find_or_fetch_smollm2_gguf(settings.cache_root() / "downloads")
    threads = runtime.usable_cpus()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max(512, prompt_tokens + new_tokens + 8), n_batch=512,
                          n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
    d = load_deployed(info, QuantSpec().validated())
    tokens = quality.wikitext_tokens(info.name, d.tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)[data.spread_indices(len(tokens) // 512, chunks)]
    prompt = tokens[:prompt_tokens]

    _llama_prefill_decode(llm, prompt, new_tokens)  # warm-up
    prefill_s, decode_s = min((_llama_prefill_decode(llm, prompt, new_tokens) for _ in range(2)),
                              key=lambda t: t[0] + t[1])
    where = f"{threads} threads, prompt {prompt_tokens} tokens, {new_tokens} greedy steps"
    rows = [BenchRow("peer", "llama.cpp GGUF (Q4_1, embedding Q8_0)", "prefill", prompt_tokens / prefill_s,
                     "tokens/s", where),
            BenchRow("peer", "llama.cpp GGUF (Q4_1, embedding Q8_0)", "decode", new_tokens / decode_s, "tokens/s",
                     where),
            BenchRow("peer", "llama.cpp GGUF (Q4_1, embedding Q8_0)", "perplexity", llama_perplexity(llm, windows), "PPL",
                     f"{len(windows)} WikiText-2 test chunks of 512, second half scored, project tokens")]
    for tag in tags:
        d = load_deployed(*parse_model_id(f"{info.name}@{tag}"))
        speed = bench_generation(d.model, prompt, decode_tokens=new_tokens)  # the deployed, quantized kernels
        subject = f"project smollm2 {tag} ({d.bits_per_weight:.2f} bpw)"
        ppl = quality.perplexity(dequantize_model(d.model), windows).ppl  # proven equal, BLAS speed on CPU
        rows += [BenchRow("peer", subject, "prefill", speed.extra["prefill_tokens_per_s"], "tokens/s", where),
                 BenchRow("peer", subject, "decode", speed.throughput, "tokens/s", where),
                 BenchRow("peer", subject, "perplexity", ppl, "PPL", f"the same {len(windows)} chunks")]
    return rows


def _llama_prefill_decode(llm, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """Seconds llama.cpp takes to prefill `prompt`, then to decode `new_tokens` greedy tokens."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt.tolist())
    prefill = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return prefill, time.perf_counter() - start
