"""`python -m core bench`: the performance comparison, every figure measured side by side in one run, written as
CSV plus a markdown report (docs/bench/) that names the command, versions and machine."""
from __future__ import annotations

import csv
import re
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import numpy as np

from core import data, runtime, settings
from core.deploy import fastdecode, generate, prompts
from core.deploy.ids import load_deployed, parse_model_id
from core.eval import quality
from core.eval.bench_rows import BenchRow, best_of
from core.eval.frontier.section import SECTIONS as FRONTIER_SECTIONS
from core.eval.blas_bench import blas_eval_speed
from core.eval.eval_speed_bench import eval_command_speed, ppl_eval_speed, ppl_kl_speed, resnet_eval_speed
from core.eval.scale_bench import scale_out, scale_out_lm
from core.eval.size_bench import SECTIONS as SCALE_SECTIONS
from core.eval.speed import bench_generation
from core.eval.llamacpp_peer import llama_perplexity
from core.models import resnet
from core.models.gguf import find_or_fetch_smollm2_gguf
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.layers import dequantize_model, size_bytes
from core.quant.spec import QuantSpec


def decode_speed(tags=("fp", "q8", "q4g64"), new_tokens: int = 64, trials: int = 3) -> list[BenchRow]:
    """Decode tokens/s of mlx_lm.generate against the project's generation path (playground and API), same
    model, prompt and greedy decoding, trials alternated so both see the same machine state."""
    from mlx_lm import generate as mlx_lm_generate

    rows = []
    for tag in tags:
        d = load_deployed(*parse_model_id(f"smollm2-135m-instruct@{tag}"))
        prompt = prompts.chat_prompt_tokens(d.tokenizer, [{"role": "user", "content": "Tell me about the sea."}])
        theirs, ours = [], []
        for _ in range(trials + 1):
            start = time.perf_counter()
            mlx_lm_generate(d.model, d.tokenizer, prompt, max_tokens=new_tokens)
            theirs.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _chunk in generate.stream_chat(d.model, d.tokenizer, prompt, new_tokens, 0.0):
                pass
            ours.append(time.perf_counter() - start)
        # prompt processing is in both; the ratio of whole-request times bounds the decode ratio from below
        t_theirs, t_ours = min(theirs[1:]), min(ours[1:])
        rows += [BenchRow("decode", f"smollm2 {tag}", "mlx_lm.generate", new_tokens / t_theirs, "tokens/s",
                          f"{new_tokens} tokens, greedy, prompt {len(prompt)} tokens, best of {trials}"),
                 BenchRow("decode", f"smollm2 {tag}", "project (core.deploy.generate.stream_chat)", new_tokens / t_ours,
                          "tokens/s", f"{t_theirs / t_ours:.3f}x of mlx_lm.generate")]
    return rows


# Peak memory bandwidth by device name, for the decode ceiling (size of the weights read per token).
MEMORY_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "M1": 68e9, "M2": 100e9, "M3": 100e9,
                    "M4": 120e9}


def _bandwidth() -> float | None:
    device = runtime.describe()["device"]
    return next((bw for name, bw in MEMORY_BANDWIDTH.items() if name in device), None)


def full_eval_speed(names=tuple(resnet.DEPTHS), bits=(16, 8, 6, 5, 4, 3), lm_bits=(16, 8, 4)) -> list[BenchRow]:
    """Wall time of a full test-set evaluation with the deployed (quantized-kernel) model in the backend's
    compute dtype, load excluded:
    every ResNet on the 10,000 CIFAR-10 test images, SmolLM2 perplexity on all 592 WikiText-2 chunks."""
    images, labels = data.load_cifar10("test")
    x = resnet.preprocess(images)
    rows = []
    for name in names:
        for b in bits:
            spec = QuantSpec(b).validated()
            d = load_deployed(resolve(name), spec)
            model = d.model
            t, logits = best_of(lambda: quality.classify_batches(model, x, batch_size=2500), 2,
                                 warmup=lambda: quality.classify_batches(model, x[:2500], batch_size=2500))
            acc = quality.accuracy(logits, labels)
            rows.append(BenchRow("full-eval", f"{name} {spec.tag}, {d.dtype}", f"CIFAR-10 test, {len(x):,} images", t, "s",
                                 f"{len(x) / t:,.0f} images/s; top-1 {100 * acc.top1:.2f} %"))
    info = resolve("smollm2-135m-instruct")
    for b in lm_bits:
        spec = QuantSpec(b).validated()
        d = load_deployed(info, spec)
        model, tokenizer = d.model, d.tokenizer
        tokens = quality.wikitext_tokens(info.name, tokenizer)
        windows = quality.chunk_windows(tokens, 512, None)
        t, result = best_of(lambda: quality.perplexity(model, windows, batch_size=16), 1,
                             warmup=lambda: quality.perplexity(model, windows[:16], batch_size=16))
        rows.append(BenchRow("full-eval", f"smollm2 {spec.tag}, {d.dtype}", "WikiText-2 test, 592 chunks", t, "s",
                             f"{windows.size / t:,.0f} tokens/s; PPL {result.ppl:.3f} ± {result.stderr:.3f}"))
    return rows


def mlx_lm_quantized(tag: str, dtype: str):
    """(model, tokenizer): SmolLM2's full-precision weights (the lab's baseline) cast to `dtype` and quantized by
    mlx-lm's own route (nn.quantize, mx.quantize's grid, scales in the model's dtype), the peer's deployment."""
    import mlx.nn as nn

    spec = QuantSpec.from_tag(tag)
    model, tokenizer = load_baseline(resolve("smollm2-135m-instruct"))
    model.set_dtype(runtime.DTYPES[dtype])
    if not spec.full_precision:
        nn.quantize(model, group_size=spec.group_size, bits=spec.bits, mode=spec.mode)
    mx.eval(model.parameters())
    return model, tokenizer


def decode_ceiling(tags=("fp", "q8", "q4g64"), dtypes=("float32", "bfloat16"), prompt_tokens: int = 512,
                   new_tokens: int = 128, trials: int = 3) -> list[BenchRow]:
    """Prefill and decode tokens/s per compute dtype: the lab's deployed model through its generation path
    (generate.stream_chat, engine as `decode_engine` picks it) and through the opt-in compiled decode step,
    against mlx-lm's stream_generate on mlx-lm's own quantization of the same weights in the same dtype;
    alternated, best of `trials`, next to the memory-bandwidth ceiling (bandwidth / bytes of weights)."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    bandwidth = _bandwidth()
    greedy = make_sampler(temp=0.0)
    rows = []
    for dtype in dtypes:
        for tag in tags:
            d = load_deployed(*parse_model_id(f"smollm2-135m-instruct@{tag}"), dtype=dtype)
            peer, _ = mlx_lm_quantized(tag, dtype)
            prompt = d.tokenizer.encode("The history of the sea is long and " * 100)[:prompt_tokens]
            runs = {"mlx-lm": [], "project": [], "compiled": []}
            for _ in range(trials + 1):  # the first round warms all up (kernel compilation, tracing)
                *_, last = stream_generate(peer, d.tokenizer, prompt, max_tokens=new_tokens, sampler=greedy)
                runs["mlx-lm"].append((last.prompt_tps, last.generation_tps))
                *_, chunk = generate.stream_chat(d.model, d.tokenizer, prompt, new_tokens, 0.0)
                runs["project"].append((chunk.prompt_tokens_per_s, chunk.tokens_per_s))
                *_, last = fastdecode.stream_generate(d.model, d.tokenizer, prompt, new_tokens, greedy)
                runs["compiled"].append((last.prompt_tps, last.generation_tps))
            best = {k: (max(p for p, _ in v[1:]), max(g for _, g in v[1:])) for k, v in runs.items()}
            ceiling = f"ceiling {bandwidth / d.size_bytes:,.0f} tokens/s" if bandwidth else "ceiling unknown"
            common = (f"{d.size_bytes / 1e6:,.0f} MB of weights (mlx-lm's: {size_bytes(peer) / 1e6:,.0f} MB), "
                      f"{ceiling}; prompt {len(prompt)}, {new_tokens} greedy tokens, best of {trials}")
            subject = f"smollm2 {tag}, {dtype}"
            variants = (("mlx-lm stream_generate, mlx-lm's quantization", "mlx-lm"),
                        (f"project ({generate.decode_engine(d.model)} engine)", "project"),
                        ("compiled decode step (core.deploy.fastdecode, opt-in)", "compiled"))
            for label, key in variants:
                for phase, index in (("prefill", 0), ("decode", 1)):
                    tps, base = best[key][index], best["mlx-lm"][index]
                    ratio = "" if key == "mlx-lm" else f"; {tps / base:.2f}x mlx-lm"
                    rows.append(BenchRow("decode-ceiling", subject, f"{label}: {phase}", tps, "tokens/s",
                                         common + ratio))
    return rows


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


def _number(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def serving() -> list[BenchRow]:
    """The project's server against mlx_lm.server (core.eval.serving_bench)."""
    from core.eval.serving_bench import GPU_LM_ROUNDS, LM_ROUNDS, serving_speed

    rounds = LM_ROUNDS if runtime.backend() == "cpu" else GPU_LM_ROUNDS
    return [BenchRow(*row) for row in serving_speed(rounds, bandwidth=_bandwidth())]


SECTIONS = {"resnet": resnet_eval_speed, "eval-command": eval_command_speed, "blas-eval": blas_eval_speed, "ppl": ppl_eval_speed, "ppl-kl": ppl_kl_speed, "decode": decode_speed, "llama-cpp": llama_cpp_peer,
            "full-eval": full_eval_speed, "decode-ceiling": decode_ceiling, "serving": serving, "scale-out": scale_out,
            "scale-out-lm": scale_out_lm, **SCALE_SECTIONS,
            **FRONTIER_SECTIONS}


def report_stem() -> str:
    """The reports' file name on this machine, <backend>-<device> in plain characters (cuda-nvidia_h200)."""
    env = runtime.describe()
    return f"{env['backend']}-{re.sub(r'[^a-z0-9]+', '_', env['device'].lower()).strip('_')}"


def run_bench(sections: list[str], out_dir: Path, command: str, quick: bool = False, chunks: int | None = None,
              compare: int | None = None, time_limit: float | None = None) -> Path:
    """Run `sections`, write <backend>-<device>.csv and .md into `out_dir`; frontier sections measure `chunks`
    WikiText-2 test chunks (all by default, 2 with `quick`), also `compare` spread ones, and keep a journal
    beside the report."""
    rows: list[BenchRow] = []
    env = runtime.describe()
    stem = report_stem()
    for name in sections:
        print(f"bench: {name}", file=sys.stderr, flush=True)
        fn = SECTIONS[name]
        if quick and name in ("resnet", "eval-command", "blas-eval"):
            rows += fn(limit=1000)
        elif quick and name == "ppl":
            rows += fn(chunks=2)
        elif name.startswith("scale"):
            rows += fn(quick=quick)
        elif name in FRONTIER_SECTIONS:
            rows += fn(chunks=2 if quick else chunks, journal=out_dir / f"{stem}-{name}.jsonl", compare=compare,
                       time_limit=time_limit)
        else:
            rows += fn()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    lines = [f"# Benchmark: {env['backend']} ({env['device']})", "",
             f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "| section | subject | variant | value | unit | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.section} | {r.subject} | {r.variant} | {_number(r.value)} | {r.unit} | {r.note} |" for r in rows]
    report = out_dir / f"{stem}.md"
    report.write_text("\n".join(lines) + "\n")
    return report
