"""Per-request sampling for batched generation: each request draws from its own random key, so a seeded request
gives the same tokens whether it runs alone or inside a batch of strangers; mlx-lm's logits processors for
penalties and logit bias; and the log-probabilities a request asked to see."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p, make_logits_processors

MAX_TOP_LOGPROBS = 20  # the OpenAI limit


@dataclass(frozen=True)
class SamplingSettings:
    """How one request samples. temperature 0 is greedy (then seed and top_p change nothing)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    penalty_context: int = 512  # how many earlier generated tokens the penalties look at


class KeyedSampler:
    """Samples one row of log-probabilities with a key of its own, split once per token (never the global
    random state other requests share)."""

    def __init__(self, temperature: float, top_p: float, seed: int | None):
        self.inverse_temperature = 1.0 / temperature
        self.top_p = top_p
        self.key = mx.random.key(seed if seed is not None else secrets.randbits(63))

    def __call__(self, logprobs: mx.array) -> mx.array:
        if self.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        self.key, draw = mx.random.split(self.key)
        return mx.random.categorical(logprobs * self.inverse_temperature, key=draw)


def sampler_for(settings: SamplingSettings) -> KeyedSampler | None:
    """None means greedy: mlx-lm's BatchGenerator then takes one batched argmax for every greedy row."""
    if settings.temperature == 0:
        return None
    return KeyedSampler(settings.temperature, settings.top_p, settings.seed)


def processors_for(settings: SamplingSettings) -> list:
    return make_logits_processors(logit_bias=settings.logit_bias or None,
                                  presence_penalty=settings.presence_penalty or None,
                                  presence_context_size=settings.penalty_context,
                                  frequency_penalty=settings.frequency_penalty or None,
                                  frequency_context_size=settings.penalty_context)


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its log-probability, and the `top` most likely alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logprobs: mx.array, token: int, top: int) -> TokenLogprob:
    """From one row of log-probabilities (over the vocabulary) for the token chosen there."""
    chosen = float(logprobs[token].item())
    if top <= 0:
        return TokenLogprob(token, chosen)
    best = mx.argpartition(-logprobs, top - 1)[:top]
    values = logprobs[best]
    order = mx.argsort(-values)
    ids, vals = best[order].tolist(), values[order].tolist()
    return TokenLogprob(token, chosen, tuple(zip(ids, (float(v) for v in vals))))
