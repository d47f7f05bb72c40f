"""Random-weight language models of real shapes, for measuring speed and memory at real sizes.

Speed and memory do not depend on the weights' values, so a folder mlx-lm loads (config.json, bfloat16
safetensors shards, SmolLM2's tokenizer and vocabulary) with weights ~ N(0, 0.02) and unit norms stands in for a
checkpoint the hub would give. Perplexity of such a model means nothing; quality numbers stay on SmolLM2.
Tensors are made and written one shard at a time, so making an 8B shape needs about one shard of memory."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlx.core as mx

from core.errors import LabError

# The published shapes (hidden, layers, MLP, heads / KV heads), with SmolLM2's vocabulary of 49,152.
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192, num_attention_heads=24,
                         num_key_value_heads=8, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=False),
    # Small enough for tests: the same structure (GQA, tied head) at a fraction of the size.
    "small": dict(hidden_size=1024, num_hidden_layers=4, intermediate_size=4096, num_attention_heads=16,
                  num_key_value_heads=4, tie_word_embeddings=True),
    "tiny": dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
VOCAB = 49_152
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SHARD_BYTES = 1 << 30


def shape_config(shape: str) -> dict:
    """config.json of a llama model of `shape` (a name in SHAPES)."""
    if shape not in SHAPES:
        raise LabError(f"Unknown shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    dims = SHAPES[shape]
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], **dims,
                head_dim=dims["hidden_size"] // dims["num_attention_heads"], vocab_size=VOCAB, rms_norm_eps=1e-5,
                rope_theta=500000.0, max_position_embeddings=8192, attention_bias=False, mlp_bias=False,
                bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16",
                mlxq_source=dict(shape=shape, note="random weights N(0, 0.02), unit norms: for speed and memory only"))


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor a llama checkpoint of `config` stores, in the usual order."""
    h, m, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    names = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (q, h)),
                  (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                  (p + "self_attn.o_proj.weight", (h, q)), (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (m, h)), (p + "mlp.up_proj.weight", (m, h)),
                  (p + "mlp.down_proj.weight", (h, m))]
    names.append(("model.norm.weight", (h,)))
    if not config["tie_word_embeddings"]:
        names.append(("lm_head.weight", (v, h)))
    return names


def make_random_lm(shape: str, out: Path, tokenizer_dir: Path, seed: int = 0,
                   shard_bytes: int = SHARD_BYTES) -> Path:
    """Write a random-weight model of `shape` to the folder `out` (replaced), with the tokenizer files of
    `tokenizer_dir` (an mlx-lm folder of SmolLM2 or any model of the same vocabulary). Returns `out`."""
    config = shape_config(shape)
    missing = [f for f in TOKENIZER_FILES[:1] if not (Path(tokenizer_dir) / f).is_file()]
    if missing:
        raise LabError(f"{tokenizer_dir} has no {missing[0]}: give a model folder with SmolLM2's tokenizer.")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mx.random.seed(seed)
    shards, current, size = [], [], 0
    for name, dims in tensor_shapes(config):
        nbytes = 2 * math.prod(dims)
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, dims))
        size += nbytes
    shards.append(current)
    for n, tensors in enumerate(shards, start=1):
        arrays = {name: (mx.ones(dims, mx.bfloat16) if len(dims) == 1 else
                         (0.02 * mx.random.normal(dims)).astype(mx.bfloat16)) for name, dims in tensors}
        mx.save_safetensors(str(out / f"model-{n:05d}-of-{len(shards):05d}.safetensors"), arrays,
                            metadata={"format": "mlx"})
        del arrays
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    return out


def parameter_count(config: dict) -> int:
    return sum(math.prod(dims) for _, dims in tensor_shapes(config))
