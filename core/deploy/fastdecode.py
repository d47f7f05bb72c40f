"""A compiled decode step for LLaMA-family mlx-lm models: one `mx.compile`d graph per generated token.

mlx-lm's loop rebuilds the graph of every decode step in Python (~15 ops per layer) and grows its KV cache by
concatenation, so a small model's decode is bound by per-token overhead, not by memory bandwidth (the bench's
decode-ceiling section measures how far). Here the cache is a fixed-capacity buffer per layer, written with
`mx.slice_update` at the position given as an array, and attention reads the whole buffer under a mask of the
filled positions, so every step has the same shapes and the traced, fused graph is reused for every token. The prompt is processed by the model itself (mlx-lm's cache), then copied
into the buffers.

`stream_generate` yields mlx-lm's own GenerationResponse objects (same detokenizer, EOS and finish-reason
rules as `mlx_lm.stream_generate`), so callers can switch engines freely; tests/deploy/test_fastdecode.py
checks that greedy decoding gives mlx-lm's tokens."""
from __future__ import annotations

import time
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn

from core.models.lm import output_head

CAPACITY_STEP = 1024  # buffer sizes are multiples of this: few distinct shapes, few traces


def supports(model: nn.Module) -> bool:
    """LLaMA-style blocks (q/k/v/o projections with RoPE, gated MLP, two RMSNorms) without sliding windows."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not layers or not hasattr(inner, "embed_tokens") or not hasattr(inner, "norm"):
        return False
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "rope", "n_heads", "n_kv_heads", "scale")
    return all(all(hasattr(layer.self_attn, n) for n in needed) and hasattr(layer, "mlp")
               and hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
               and not getattr(layer, "use_sliding", False) for layer in layers)


class CompiledDecoder:
    def __init__(self, model: nn.Module):
        if not supports(model):
            raise ValueError("the compiled decoder handles LLaMA-family mlx-lm models only")
        self.model, self.inner = model, model.model
        self._step = mx.compile(self._step_graph)

    def _step_graph(self, token: mx.array, position: mx.array, keys: list, values: list):
        """token [1, 1] int32, position [] int32 (where the token sits) -> logits [1, vocab], updated buffers."""
        capacity = keys[0].shape[2]
        filled = (mx.arange(capacity) <= position)[None, None, None, :]
        start = position.reshape(1)
        h = self.inner.embed_tokens(token)
        new_keys, new_values = [], []
        for layer, k_buf, v_buf in zip(self.inner.layers, keys, values):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).reshape(1, 1, attn.n_heads, -1).transpose(0, 2, 1, 3)
            k = attn.k_proj(x).reshape(1, 1, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
            v = attn.v_proj(x).reshape(1, 1, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
            q, k = attn.rope(q, offset=position), attn.rope(k, offset=position)
            k_buf = mx.slice_update(k_buf, k.astype(k_buf.dtype), start, axes=(2,))
            v_buf = mx.slice_update(v_buf, v.astype(v_buf.dtype), start, axes=(2,))
            out = mx.fast.scaled_dot_product_attention(q, k_buf, v_buf, scale=attn.scale, mask=filled)
            h = h + attn.o_proj(out.transpose(0, 2, 1, 3).reshape(1, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            new_keys.append(k_buf)
            new_values.append(v_buf)
        return output_head(self.model)(self.inner.norm(h))[:, -1, :], new_keys, new_values

    def _prefill(self, prompt: mx.array, capacity: int):
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model)
        logits = self.model(prompt[None], cache=cache)[:, -1, :]
        keys, values = [], []
        for c in cache:
            for buffers, prompt_part in zip((keys, values), c.state):  # [1, kv heads, prompt, head dim]
                free = capacity - prompt_part.shape[2]
                pad = mx.zeros((1, prompt_part.shape[1], free, prompt_part.shape[3]), prompt_part.dtype)
                buffers.append(mx.concatenate([prompt_part, pad], axis=2))
        return logits, keys, values

    def generate_tokens(self, prompt: mx.array, max_tokens: int,
                        sampler: Callable[[mx.array], mx.array]) -> Iterator[tuple[int, mx.array]]:
        """(token, logprobs) pairs like mlx_lm.generate_step; the next step is queued before a token is returned."""
        capacity = -(-(prompt.size + max_tokens + 1) // CAPACITY_STEP) * CAPACITY_STEP
        logits, keys, values = self._prefill(prompt, capacity)

        def pick(logits):
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            return sampler(logprobs), logprobs

        token, logprobs = pick(logits)
        mx.async_eval(token, logprobs)
        position = prompt.size
        for n in range(max_tokens):
            next_logits, keys, values = self._step(token.reshape(1, 1).astype(mx.int32),
                                                   mx.array(position, dtype=mx.int32), keys, values)
            next_token, next_logprobs = pick(next_logits)
            mx.async_eval(next_token, next_logprobs)
            yield int(token.item()), logprobs.squeeze(0)
            token, logprobs, position = next_token, next_logprobs, position + 1


def stream_generate(model, tokenizer, prompt_tokens: list[int], max_tokens: int,
                    sampler: Callable[[mx.array], mx.array]):
    """mlx_lm.stream_generate's contract (GenerationResponse per token) on the compiled decoder."""
    from mlx_lm.generate import GenerationResponse
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    if not isinstance(tokenizer, TokenizerWrapper):
        tokenizer = TokenizerWrapper(tokenizer)
    prompt = mx.array(prompt_tokens)
    decoder = _decoder(model)
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    tic = time.perf_counter()
    prompt_tps = 0.0
    token, logprobs, n = None, None, 0
    for n, (token, logprobs) in enumerate(decoder.generate_tokens(prompt, max_tokens, sampler)):
        if n == 0:
            prompt_tps = prompt.size / (time.perf_counter() - tic)
            tic = time.perf_counter()
        if token in tokenizer.eos_token_ids:
            break
        detokenizer.add_token(token)
        if n + 1 == max_tokens:
            break
        yield GenerationResponse(text=detokenizer.last_segment, token=token, logprobs=logprobs, from_draft=False,
                                 prompt_tokens=prompt.size, prompt_tps=prompt_tps, generation_tokens=n + 1,
                                 generation_tps=(n + 1) / (time.perf_counter() - tic),
                                 peak_memory=mx.get_peak_memory() / 1e9, finish_reason=None)
    detokenizer.finalize()
    yield GenerationResponse(text=detokenizer.last_segment, token=token, logprobs=logprobs, from_draft=False,
                             prompt_tokens=prompt.size, prompt_tps=prompt_tps, generation_tokens=n + 1,
                             generation_tps=(n + 1) / (time.perf_counter() - tic),
                             peak_memory=mx.get_peak_memory() / 1e9,
                             finish_reason="stop" if token in tokenizer.eos_token_ids else "length")


def _decoder(model) -> CompiledDecoder:
    """One decoder (and its traced graphs) per loaded model, kept on the model object itself."""
    decoder = getattr(model, "_mlxq_compiled_decoder", None)
    if decoder is None:
        decoder = CompiledDecoder(model)
        object.__setattr__(model, "_mlxq_compiled_decoder", decoder)
    return decoder
