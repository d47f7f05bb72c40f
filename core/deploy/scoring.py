"""Scoring text a model did not generate: the log-probability of every prompt token given the ones before it
(what `echo` with `logprobs` returns, and how lm-evaluation-harness scores log-likelihoods), and the text and
exact bytes of a token for the API's log-probability payloads."""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

from core.deploy.sampling import TokenLogprob
from core.models.lm import CHAIN_MODULES, output_head

HEAD_ROWS = 256  # prompt positions turned into logits at a time


def score_prompt(model, tokens: list[int], top: int = 0) -> list[TokenLogprob | None]:
    """One forward pass over `tokens`; entry i is token i's log-probability (in float32) given tokens before it,
    with the `top` most likely alternatives. Entry 0 is None: nothing predicts the first token."""
    if len(tokens) < 2:
        return [None] * len(tokens)
    entries: list[TokenLogprob | None] = [None]
    for start, logits in _logits_in_slices(model, tokens):
        entries += _score_slice(logits, tokens[start + 1:start + 1 + logits.shape[0]], top)
    return entries


def _logits_in_slices(model, tokens: list[int]):
    """(start, logits [n, vocab] in float32 predicting tokens start+1 ...): the head applied HEAD_ROWS positions
    at a time for the architectures whose logits are their head on the final hidden states (core.models.lm; a
    vocabulary of 128k in float32 is 0.5 MB a position), all at once for any other."""
    inner = getattr(model, "model", None)
    if type(inner).__module__ not in CHAIN_MODULES:
        yield 0, model(mx.array(tokens)[None])[0, :-1].astype(mx.float32)
        return
    hidden = inner(mx.array(tokens)[None])[0, :-1]
    mx.eval(hidden)
    head = output_head(model)
    for start in range(0, hidden.shape[0], HEAD_ROWS):
        yield start, head(hidden[start:start + HEAD_ROWS]).astype(mx.float32)


def _score_slice(logits: mx.array, targets_list: list[int], top: int) -> list[TokenLogprob]:
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    targets = mx.array(targets_list)
    chosen = mx.take_along_axis(logprobs, targets[:, None], axis=-1)[:, 0]
    tops: list = [()] * len(targets_list)
    if top > 0:
        best = mx.argpartition(-logprobs, top - 1, axis=-1)[:, :top]
        values = mx.take_along_axis(logprobs, best, axis=-1)
        order = mx.argsort(-values, axis=-1)
        best, values = mx.take_along_axis(best, order, axis=-1), mx.take_along_axis(values, order, axis=-1)
        tops = [tuple(zip(ids, vals)) for ids, vals in zip(best.tolist(), values.tolist())]
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(targets_list, chosen.tolist(), tops)]


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): each byte is written as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenNames:
    """Token id -> (text, bytes): the exact bytes of byte-level BPE tokens (a token can hold part of a
    character), the decoded text otherwise."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.name = lru_cache(maxsize=65536)(self._name)

    def _name(self, token: int) -> tuple[str, bytes]:
        piece = self.tokenizer.convert_ids_to_tokens(int(token))
        decoder = byte_decoder()
        if isinstance(piece, str) and piece and all(c in decoder for c in piece):
            raw = bytes(decoder[c] for c in piece)
            return raw.decode("utf-8", errors="replace"), raw
        text = self.tokenizer.decode([int(token)])
        return text, text.encode("utf-8")
