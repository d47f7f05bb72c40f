"""What a GGUF says besides its weights: the llama hyper-parameters and the tokenizer, from a model folder's
config.json, tokenizer.json and tokenizer_config.json."""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import LabError

_CONTROL, _NORMAL, _UNUSED = 3, 1, 5  # llama.cpp's token types


def llama_hparams(config: dict) -> dict:
    """GGUF's llama.* keys from an mlx-lm / Hugging Face config; other architectures are refused."""
    if config.get("model_type") != "llama":
        raise LabError(f"GGUF export writes LLaMA-architecture models; this one is {config.get('model_type')!r}.")
    if config.get("rope_scaling"):
        raise LabError("GGUF export does not write RoPE scaling yet; this model uses "
                       f"{config['rope_scaling'].get('rope_type', config['rope_scaling'].get('type'))!r}.")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise LabError("GGUF export writes llama layers without biases; this model has attention or MLP biases.")
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    return {
        "context_length": int(config.get("max_position_embeddings", 2048)),
        "embedding_length": int(config["hidden_size"]),
        "block_count": int(config["num_hidden_layers"]),
        "feed_forward_length": int(config["intermediate_size"]),
        "head_count": heads,
        "head_count_kv": int(config.get("num_key_value_heads", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "rope_freq_base": float(config.get("rope_theta", 10000.0)),
        "vocab_size": int(config["vocab_size"]),
        "tied": bool(config.get("tie_word_embeddings", False)),
    }


def _pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer: the known one it serializes to."""
    from tokenizers import Tokenizer, models

    from core.models.gguf import PRE_TOKENIZERS

    for name, build in PRE_TOKENIZERS.items():
        probe = Tokenizer(models.BPE())
        probe.pre_tokenizer = build()
        if json.loads(probe.to_str())["pre_tokenizer"] == pre_tokenizer:
            return name
    raise LabError("GGUF export knows the byte-level BPE pre-tokenizers "
                   f"{', '.join(PRE_TOKENIZERS)}; this model's tokenizer splits text another way.")


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def tokenizer_fields(folder: Path, vocab_size: int) -> dict:
    """The tokenizer.* keys llama.cpp reads, from a folder's tokenizer.json and tokenizer_config.json (byte-level
    BPE only). The vocabulary is padded to the model's embedding rows with unused tokens, as llama.cpp's
    converter does."""
    try:
        spec = json.loads((folder / "tokenizer.json").read_text())
        tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError) as cause:
        raise LabError(f"GGUF export needs the model's tokenizer.json and tokenizer_config.json: {cause}") from cause
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise LabError(f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')!r}.")
    by_id = {int(i): t for t, i in model["vocab"].items()}
    control = set()
    for added in spec.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        if added.get("special"):
            control.add(int(added["id"]))
    count = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(count)]
    types = [_CONTROL if i in control else _NORMAL if i in by_id else _UNUSED for i in range(count)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {t: i for i, t in enumerate(tokens)}
    special = {}
    for role, key in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"), ("unknown", "unk_token")):
        text = _token_text(tok_config.get(key))
        if text in ids:
            special[role] = ids[text]
    template = tok_config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    return {"pre": _pre_tokenizer_name(spec.get("pre_tokenizer")), "tokens": tokens, "types": types,
            "merges": merges, "special": special, "add_bos": bool(tok_config.get("add_bos_token", False)),
            "chat_template": template if isinstance(template, str) else None}
