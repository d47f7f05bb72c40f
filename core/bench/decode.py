"""The `decode` and `decode-ceiling` bench sections: the lab's generation path against mlx-lm's on the same model
and prompt (tokens/s, trials alternated), and per compute dtype next to the memory-bandwidth ceiling."""
from __future__ import annotations

import time

import mlx.core as mx

from core import runtime
from core.bench.rows import BenchRow
from core.deploy import fastdecode, generate, prompts
from core.deploy.ids import load_deployed, parse_model_id
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.layers import size_bytes
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


def memory_bandwidth() -> float | None:
    device = runtime.describe()["device"]
    return next((bw for name, bw in MEMORY_BANDWIDTH.items() if name in device), None)


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

    bandwidth = memory_bandwidth()
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
