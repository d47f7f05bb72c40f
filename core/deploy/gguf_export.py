"""Export a language model to one GGUF file, the format llama.cpp, Ollama and LM Studio load.

Where a GGUF type holds the lab's grid exactly, the packed integers and their scales and biases are laid out again
bit for bit: affine 4- and 5-bit groups (any multiple of 32) become Q4_1 / Q5_1 blocks of 32 sharing their group's
scale and bias, and the symmetric quantizer's 4-, 5- and 8-bit groups become Q4_0 / Q5_0 / Q8_0. A layer no GGUF
type holds (2, 3 or 6 bits, 8-bit affine, the float modes) is written as Q8_0 from its de-quantized weights and
listed as re-quantized; layers kept in full precision are written as F32.

With `gguf_type` set to one of llama.cpp's types (Q4_K_M ...), the lab's de-quantized weights are written as F32
and llama.cpp's own quantizer (llama-cpp-python, installed by `./lab setup --peers`) makes that type from them.

The file is written next to its destination and renamed into place, so an interrupted export leaves nothing."""
from __future__ import annotations

import ctypes
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlx.nn as nn

from core.deploy.export import source_folder
from core.deploy.gguf_blocks import FILE_TYPES, encode_layer
from core.deploy.gguf_metadata import llama_hparams, tokenizer_fields
from core.errors import LabError
from core.models.registry import resolve
from core.quant.config import QuantConfig
from core.quant.layers import bits_per_weight
from core.quant.recipe import Quantized, quantize

MARKER_KEY = "mlxq.export"  # metadata that says the lab wrote the file (an earlier export may be replaced)
LLAMA_CPP_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
                   "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS")

# GGUF tensor names of a llama block -> the mlx-lm module path under model.layers.N
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


@dataclass
class GgufResult:
    path: Path
    tag: str
    gguf_type: str  # "exact" (the lab's grids) or the llama.cpp type asked for
    file_bytes: int
    bits_per_weight: float  # of the lab's model (the file's own is file_bits_per_weight)
    file_bits_per_weight: float  # every weight tensor's bytes in the file over its weight count
    tensor_types: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> GGML type
    requantized: list[str] = field(default_factory=list)  # layers no GGUF type holds exactly (written as Q8_0)


def export_gguf(config: QuantConfig, out: Path, force: bool = False, gguf_type: str | None = None,
                progress=None) -> GgufResult:
    """Quantize `config` (core.quant.recipe, as an evaluation does) and write it to the GGUF file `out`."""
    cfg = config.validated()  # bad flags fail before the destination is touched or any work is done
    _check_kind(resolve(cfg.model).kind)
    if cfg.act_bits:
        raise LabError("--act-bits simulates integer activations during evaluation; a GGUF holds the weights only.")
    gguf_type = _checked_type(gguf_type)
    check_gguf_destination(Path(os.path.abspath(out)), force)
    return write_gguf(quantize(cfg, progress), out, force, gguf_type)


def _check_kind(kind: str) -> None:
    if kind != "lm":
        raise LabError("GGUF holds language models; ResNets export to the lab's folder format (drop --format gguf).")


def _checked_type(gguf_type: str | None) -> str | None:
    if gguf_type is None or gguf_type.lower() == "exact":
        return None
    if gguf_type.upper() not in LLAMA_CPP_TYPES:
        raise LabError(f"--gguf-type {gguf_type!r} is not one this export makes: exact (the lab's own grids), or "
                       f"one of llama.cpp's {', '.join(LLAMA_CPP_TYPES)}.")
    try:
        import llama_cpp  # noqa: F401  (checked before any work: it is a separate install)
    except ImportError as cause:
        raise LabError(f"--gguf-type {gguf_type.upper()} uses llama.cpp's quantizer: install llama-cpp-python with "
                       "`./lab setup --peers` (it builds from source in about 12 minutes).") from cause
    return gguf_type.upper()


def write_gguf(q: Quantized, out: Path, force: bool = False, gguf_type: str | None = None) -> GgufResult:
    """Write the quantized language model `q` to the GGUF file `out` (see the module docstring)."""
    import gguf  # the gguf package (PyPI): imported here so the rest of the lab runs without it

    _check_kind(q.info.kind)
    gguf_type = _checked_type(gguf_type)
    out = Path(os.path.abspath(out))
    check_gguf_destination(out, force)
    config = _source_config(q)
    hparams = llama_hparams(config)
    tokenizer = tokenizer_fields(_source_folder(q), config["vocab_size"])
    q.deploy()
    staging = _staging_file(out)
    try:
        if gguf_type is None:
            types, requantized = _write(gguf, q, hparams, tokenizer, staging, dequantize_all=False)
        else:
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                f32 = Path(tmp) / "f32.gguf"
                _write(gguf, q, hparams, tokenizer, f32, dequantize_all=True)
                llama_cpp_quantize(f32, staging, gguf_type.upper())
            types, requantized = read_tensor_types(staging), []
        os.replace(staging, out)
    except OSError as cause:
        raise LabError(f"Could not write the GGUF to {out}: {cause}") from cause
    finally:
        staging.unlink(missing_ok=True)
    return GgufResult(out, q.config.tag, gguf_type.upper() if gguf_type else "exact", out.stat().st_size,
                      bits_per_weight(q.model), file_bits_per_weight(out), types, requantized)


# ---- the destination ---------------------------------------------------------------------------------------------

def check_gguf_destination(out: Path, force: bool) -> None:
    """A .gguf path that is new, an earlier export of the lab's, or (with force) any file."""
    if out.suffix.lower() != ".gguf":
        raise LabError(f"--out {out} should name a .gguf file for --format gguf (e.g. --out model-q4.gguf).")
    if out.is_dir():
        raise LabError(f"--out {out} is a folder; give the path of a .gguf file.")
    if out.exists() and not force and not written_by_lab(out):
        raise LabError(f"--out {out} is a file export did not write; give a new path, or pass --force to replace it.")


def written_by_lab(path: Path) -> bool:
    import gguf

    try:
        return MARKER_KEY in gguf.GGUFReader(str(path)).fields
    except Exception:  # any unreadable or foreign file: not ours
        return False


def _staging_file(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        os.close(handle)
    except OSError as cause:
        raise LabError(f"Cannot write to --out {out}: {cause}") from cause
    os.chmod(name, 0o644)
    return Path(name)


# ---- the model's description -------------------------------------------------------------------------------------

def _source_folder(q: Quantized) -> Path:
    return source_folder(q.info)


def _source_config(q: Quantized) -> dict:
    from mlx_lm.utils import load_config

    return load_config(_source_folder(q))


# ---- writing -----------------------------------------------------------------------------------------------------

def _module(model: nn.Module, path: str) -> nn.Module:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _write(gguf, q: Quantized, hp: dict, tok: dict, path: Path, dequantize_all: bool) -> tuple[dict, list]:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"{q.config.model} {q.config.tag}")
    writer.add_string(MARKER_KEY, json.dumps({"model": q.config.model, "tag": q.config.tag,
                                              "method": q.config.method}))
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_rope_freq_base(hp["rope_freq_base"])
    writer.add_vocab_size(len(tok["tokens"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    special_writers = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                       "padding": writer.add_pad_token_id, "unknown": writer.add_unk_token_id}
    for role, token_id in tok["special"].items():
        special_writers[role](token_id)
    writer.add_add_bos_token(tok["add_bos"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    types, requantized = {}, []
    tensors = [("token_embd", "model.embed_tokens", None)]
    for i in range(hp["block_count"]):
        for name, sub in _BLOCK_TENSORS.items():
            heads = hp["head_count"] if name == "attn_q" else hp["head_count_kv"] if name == "attn_k" else None
            tensors.append((f"blk.{i}.{name}", f"model.layers.{i}.{sub}", heads))
    tensors.append(("output_norm", "model.norm", None))
    if not hp["tied"]:
        tensors.append(("output", "lm_head", None))
    for gguf_name, module_path, heads in tensors:
        module = _module(q.model, module_path)
        data, qtype, exact = encode_layer(gguf, module, heads, dequantize_all)
        raw = None if qtype in ("F32",) else getattr(gguf.GGMLQuantizationType, qtype)
        writer.add_tensor(f"{gguf_name}.weight", data, raw_dtype=raw)
        types[f"{gguf_name}.weight"] = qtype
        if not exact:
            requantized.append(module_path)
    # the source holds most of its weights in this type: llama.cpp's general.file_type says so
    main = max(set(types.values()), key=lambda t: sum(1 for v in types.values() if v == t))
    writer.add_file_type(FILE_TYPES.get(main, 0))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types, requantized


# ---- llama.cpp's quantizer and reading back ----------------------------------------------------------------------

def llama_cpp_quantize(source: Path, out: Path, type_name: str) -> None:
    """llama.cpp's own quantizer (llama-cpp-python) from an F32 GGUF to `type_name`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{type_name}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise LabError(f"llama.cpp's quantizer failed to make {type_name} from {source.name}.")


def read_tensor_types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def file_bits_per_weight(path: Path) -> float:
    """Bits per weight of a GGUF's 2-D tensors as stored (norms excluded), the way llama.cpp's tables count."""
    import gguf

    tensors = [t for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) == 2]
    return 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)
