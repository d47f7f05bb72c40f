"""Single-stream text generation with a deployed language model (the benchmarks' decode measurements): tokens
streamed with their sampling settings and stop strings, by mlx-lm's loop or the opt-in compiled decode step.
Prompts are built by core.deploy.prompts; concurrent serving uses core.deploy.batching."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from core import settings
from core.deploy import fastdecode
from core.errors import LabError

MAX_NEW_TOKENS = 512


def check_generation_settings(max_tokens: int, temperature: float, top_p: float) -> None:
    if not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise LabError(f"max tokens must be between 1 and {MAX_NEW_TOKENS}, not {max_tokens}.")
    if not 0.0 <= temperature <= 2.0:
        raise LabError(f"temperature must be between 0 and 2, not {temperature}.")
    if not 0.0 <= top_p <= 1.0:
        raise LabError(f"top_p must be between 0 and 1, not {top_p}.")


@dataclass
class Chunk:
    text: str  # new text since the previous chunk
    tokens: int  # generated so far
    tokens_per_s: float
    prompt_tokens_per_s: float
    peak_memory_bytes: int
    finish_reason: str | None


DECODE_ENGINES = ("mlx-lm", "compiled")


def decode_engine(model) -> str:
    """'mlx-lm' (its own loop, the default: the compiled step measured slower, docs/bench) or 'compiled'
    (core.deploy.fastdecode), as MLXQ_DECODE_ENGINE says; models the compiled step cannot run use mlx-lm."""
    choice = settings.decode_engine()
    if choice not in DECODE_ENGINES:
        raise LabError(f"{settings.DECODE_ENGINE}={choice!r}: choose one of {', '.join(DECODE_ENGINES)}.")
    return choice if choice == "mlx-lm" or fastdecode.supports(model) else "mlx-lm"


def stream_chat(model, tokenizer, prompt_tokens: list[int], max_tokens: int = 128, temperature: float = 0.0,
                top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None) -> Iterator[Chunk]:
    """Generate one chunk per token with mlx-lm's loop or the compiled decode step (`decode_engine`), the same
    sampling either way; stops on EOS or a stop string."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    check_generation_settings(max_tokens, temperature, top_p)
    if seed is not None:
        mx.random.seed(seed)
    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
    if decode_engine(model) == "compiled":
        responses = fastdecode.stream_generate(model, tokenizer, prompt_tokens, max_tokens, sampler)
    else:
        responses = stream_generate(model, tokenizer, prompt_tokens, max_tokens=max_tokens, sampler=sampler)
    text, held = "", ""
    for response in responses:
        held += response.text
        finish = response.finish_reason
        if stop:
            text_so_far = text + held
            hit = min((text_so_far.find(s) for s in stop if s in text_so_far), default=-1)
            if hit >= 0:
                yield Chunk(text_so_far[len(text):hit], response.generation_tokens, response.generation_tps,
                            response.prompt_tps, int(response.peak_memory * 1e9), "stop")
                return
            # hold back text that could be the start of a stop string
            keep = max((len(s) - 1 for s in stop), default=0)
            emit, held = (held[:-keep], held[-keep:]) if keep and finish is None else (held, "")
        else:
            emit, held = held, ""
        text += emit
        yield Chunk(emit, response.generation_tokens, response.generation_tps, response.prompt_tps,
                    int(response.peak_memory * 1e9), finish)
