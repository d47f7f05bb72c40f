"""The `frontier` bench section: the lab's quantized models against llama.cpp's own types on the same model, the
same token windows and the same full-precision reference: perplexity, KL(full precision || quantized) and the
bits per weight each stores.

llama.cpp's types are made by llama.cpp's quantizer (llama-cpp-python) from an F32 GGUF of the lab's
full-precision baseline that the lab's exporter writes, and scored by llama.cpp's own forward pass; its bits per
weight are read from each file. The lab's rows are scored by the lab's evaluator on the de-quantized weights."""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from core import data, runtime
from core.eval import quality
from core.eval.bench_rows import BenchRow
from core.eval.llamacpp_peer import llama_quality
from core.quant.config import QuantConfig
from core.quant.layers import bits_per_weight, dequantize_model
from core.quant.recipe import quantize

MODEL = "smollm2-135m-instruct"
LLAMA_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q3_K_S", "Q2_K")
LAB_RECIPES = ((8, 32), (6, 64), (5, 64), (4, 32), (4, 64), (3, 64))  # round to nearest: (bits, group)


def frontier(chunks: int = 8) -> list[BenchRow]:
    try:
        import llama_cpp
    except ImportError:
        return [BenchRow("frontier", "llama.cpp", "not measured", float("nan"), "",
                         "llama-cpp-python is not installed (./lab setup --peers)")]
    from core.deploy.gguf_export import file_bits_per_weight, llama_cpp_quantize, write_gguf

    baseline = quantize(QuantConfig(MODEL, bits=16))
    reference = dequantize_model(baseline.model)
    tokens = quality.wikitext_tokens(MODEL, baseline.tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)[data.spread_indices(len(tokens) // 512, chunks)]
    where = (f"{chunks} of {len(tokens) // 512} WikiText-2 test chunks of 512 evenly spread, second half scored, "
             f"the lab's tokens; KL against the lab's float32 baseline; {runtime.backend()}")
    first = windows.shape[1] // 2
    reference_logp = [np.array(quality.scored_logprobs(reference, mx.array(w[None]), first)[0], dtype=np.float64)
                      for w in windows]
    rows = []
    for bits, group in LAB_RECIPES:
        q = quantize(QuantConfig(MODEL, bits=bits, group_size=group))
        bpw = bits_per_weight(q.model)  # before de-quantizing (in place) for the evaluator
        result = quality.perplexity(dequantize_model(q.model), windows, reference=reference)
        rows += _rows(f"lab {q.config.tag} (rtn)", bpw, result.ppl, result.stderr,
                      result.kl_mean, result.kl_stderr, where)
    threads = runtime.usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        f32 = write_gguf(baseline, Path(tmp) / "f32.gguf").path
        for type_name in LLAMA_TYPES:
            path = Path(tmp) / f"{type_name}.gguf"
            llama_cpp_quantize(f32, path, type_name)
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=threads,
                                  n_threads_batch=threads, logits_all=True, verbose=False)
            measured = llama_quality(llm, windows, reference_logp)
            rows += _rows(f"llama.cpp {type_name}", file_bits_per_weight(path), measured["ppl"],
                          measured["ppl_stderr"], measured["kl"], measured["kl_stderr"], where)
            del llm
            path.unlink()
    return rows


def _rows(subject: str, bpw: float, ppl: float, ppl_se: float, kl: float, kl_se: float, where: str) -> list[BenchRow]:
    return [BenchRow("frontier", subject, "bits/weight", bpw, "bits", "every weight matrix as stored"),
            BenchRow("frontier", subject, "perplexity", ppl, "PPL", f"± {ppl_se:.3f}; {where}"),
            BenchRow("frontier", subject, "KL", kl, "nats/token", f"± {kl_se:.4f}; {where}")]
