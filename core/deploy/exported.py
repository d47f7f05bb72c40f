"""Reading an export folder back (core.deploy.export writes them): the model holding exactly the arrays written.
Also any other mlx-lm model folder, for the server: `describe_folder` checks a folder at start-up without reading
its weights, `load_folder` loads it holding the folder's own arrays, computing in the server's dtype."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from core.errors import LabError
from core.models import resnet
from core.models.checkpoint import LazyCheckpoint
from core.quant.conv import QuantizedConv2d
from core.quant.kernels import AdaptiveQuantizedLinear, use_measured_kernels
from core.quant.layers import WEIGHT_LAYERS, ExactQuantizedEmbedding, bits_per_weight
from core.quant.precision import activation_dtype, cast_to
from core.runtime import DTYPES

FORMAT, VERSION = "mlxq-export", 1
VISION_META = "quantization.json"  # ResNet exports: architecture, layers, method
LM_META = "mlxq_export.json"  # LM exports: provenance next to mlx-lm's own config.json
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tiktoken.model")


def read_metadata(folder: Path) -> dict | None:
    """The export's own metadata in `folder`, or None when export did not write this folder."""
    for name in (VISION_META, LM_META):
        try:
            meta = json.loads((Path(folder) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            return meta
    return None


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every float or quantized weight layer by path, in the model's order."""
    kinds = (*WEIGHT_LAYERS, QuantizedConv2d, nn.QuantizedLinear, nn.QuantizedEmbedding)
    return {path: m for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
            if isinstance(m, kinds)}


def load_exported(folder: Path) -> tuple[nn.Module, object | None]:
    """(model, tokenizer or None) from an export folder, holding exactly the arrays that were written.

    ResNets are rebuilt from model.safetensors and quantization.json alone. Language models load through
    mlx_lm.load; the quantized layers are then swapped for the project's own over the same arrays (the float32-exact
    embedding, linear layers that choose their kernel by rows), so the reloaded model computes exactly what the
    deployed model computes."""
    folder = Path(folder)
    meta = read_metadata(folder)
    if meta is None:
        raise LabError(f"{folder} is not a folder written by `python -m core export`.")
    if meta.get("version") != VERSION:
        raise LabError(f"{folder} was exported in format version {meta.get('version')}; this code reads {VERSION}.")
    if meta["kind"] == "vision":
        return _load_vision(folder, meta), None
    return _load_lm(folder, meta)


def _load_vision(folder: Path, meta: dict) -> nn.Module:
    try:
        weights = mx.load(str(folder / "model.safetensors"))
    except Exception as cause:
        raise LabError(f"Could not read {folder / 'model.safetensors'}: {cause}") from cause
    model = resnet.build(meta["architecture"]["name"])
    built = dict(tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module))
    try:
        replaced = [(path, _quantized_layer(path, entry, built[path], weights))
                    for path, entry in meta["layers"].items() if entry["quantized"]]
    except KeyError as missing:
        raise LabError(f"{folder}: quantization.json and model.safetensors disagree, {missing} is missing.") from None
    model.update_modules(tree_unflatten(replaced))
    try:  # strict: every array in the file has a place in the model and every place is filled, shapes checked
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as cause:
        raise LabError(f"{folder}/model.safetensors does not match quantization.json: {cause}") from cause
    mx.eval(model.parameters())
    model.eval()
    return use_measured_kernels(model)


def _quantized_layer(path: str, entry: dict, float_layer: nn.Module, weights: dict) -> nn.Module:
    """The quantized layer `entry` describes, holding the file's arrays (load_weights fills them in again)."""
    if entry["type"] == "QuantizedConv2d":
        layer = QuantizedConv2d(
            weights[f"{path}.weight"], weights[f"{path}.scales"], weights.get(f"{path}.biases"),
            out_channels=entry["out_channels"], kernel_size=tuple(entry["kernel_size"]),
            in_channels=entry["in_channels"], stride=tuple(entry["stride"]), padding=tuple(entry["padding"]),
            bias=weights.get(f"{path}.bias"), bits=entry["bits"], group_size=entry["group_size"], mode=entry["mode"])
        if (layer.k, layer.padded_k) != (entry["k"], entry["padded_k"]):
            raise LabError(f"{path} has kernel geometry {layer.k}/{layer.padded_k}, "
                           f"quantization.json says {entry['k']}/{entry['padded_k']}.")
        return layer
    if entry["type"] == "QuantizedLinear":
        out_dims, in_dims = float_layer.weight.shape
        return AdaptiveQuantizedLinear(in_dims, out_dims, bias="bias" in float_layer,
                                       group_size=entry["group_size"], bits=entry["bits"], mode=entry["mode"])
    raise LabError(f"Layer {path} has type {entry['type']!r}, which a ResNet export does not hold.")


def _load_lm(folder: Path, meta: dict):
    model, tokenizer = _mlx_lm_load(folder)
    return use_measured_kernels(lab_layers(model, DTYPES[meta["config"]["dtype"]])), tokenizer


def _mlx_lm_load(folder: Path):
    from mlx_lm import load

    try:
        return load(str(folder))
    except Exception as cause:  # mlx-lm says what is wrong in its own words; keep them, add where
        raise LabError(f"mlx-lm cannot load {folder}: {cause}") from cause


def lab_layers(model: nn.Module, dtype: mx.Dtype) -> nn.Module:
    """`model` (as mlx-lm loads it) with its quantized layers swapped for the project's own over the same arrays,
    in place: the float32-exact embedding returning rows in `dtype`, linear layers that choose their kernel by
    rows. Nothing is re-quantized."""
    swaps = []
    for path, m in weight_layers(model).items():
        if isinstance(m, nn.QuantizedEmbedding) and not isinstance(m, ExactQuantizedEmbedding):
            lab = ExactQuantizedEmbedding(m.num_embeddings, m.dims, group_size=m.group_size, bits=m.bits,
                                          mode=m.mode, compute_dtype=dtype)
        elif type(m) is nn.QuantizedLinear:
            out_dims, in_dims = m.scales.shape[0], m.scales.shape[1] * m.group_size
            lab = AdaptiveQuantizedLinear(in_dims, out_dims, bias="bias" in m, group_size=m.group_size,
                                          bits=m.bits, mode=m.mode)
        else:
            continue
        lab.update(m.parameters())  # the loaded arrays themselves: nothing re-quantized
        swaps.append((path, lab))
    model.update_modules(tree_unflatten(swaps))
    model.eval()
    return model


# ---- folders the server serves ------------------------------------------------------------------------------------

@dataclass
class FolderModel:
    """A model folder as checked at start-up, nothing loaded: a lab export (with its metadata) or a folder another
    tool wrote (mlx-lm's convert, the hub)."""

    path: Path  # absolute
    kind: str  # 'lm' or 'vision'
    meta: dict | None  # the export's metadata; None for a folder the lab did not export
    bits_per_weight: float | None  # as the folder stores the model
    quantization: dict | None  # config.json's `quantization` entry (mlx-lm's), if any

    @property
    def method(self) -> str:
        """rtn / gptq / awq / dwq / mixed ('none' for full precision) from the export; 'unknown' otherwise."""
        return str(self.meta.get("method", "unknown")) if self.meta else "unknown"


def describe_folder(path: str | Path) -> FolderModel:
    """What the folder at `path` holds, checked without reading its weights, or one LabError in words: missing,
    a file, not a model folder, an export of another format version, an architecture mlx-lm does not know."""
    folder = Path(os.path.abspath(Path(path).expanduser()))
    if not folder.exists():
        raise LabError(f"{folder} does not exist.")
    if not folder.is_dir():
        raise LabError(f"{folder} is a file, not a model folder; give the folder that holds config.json "
                       f"(an mlx-lm model) or {VISION_META} (a ResNet export).")
    meta = read_metadata(folder)
    if meta is not None and meta.get("version") != VERSION:
        raise LabError(f"{folder} was exported in format version {meta.get('version')}; this code reads {VERSION}.")
    if meta is not None and meta.get("kind") == "vision":
        return _vision_folder(folder, meta)
    if meta is not None and meta.get("kind") != "lm":
        raise LabError(f"{folder}: its export metadata says kind {meta.get('kind')!r}; the lab exports 'lm' or "
                       "'vision' models.")
    if not (folder / "config.json").is_file():
        raise LabError(f"{folder} is not a model folder: it holds neither config.json (an mlx-lm model folder) "
                       f"nor {VISION_META} (a ResNet exported by `python -m core export`).")
    checkpoint = LazyCheckpoint(folder)  # config.json readable, model*.safetensors present
    model = checkpoint.model()  # the structure only, nothing read: mlx-lm knows it, every array in place
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LabError(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); a language model "
                       "folder needs its tokenizer files beside config.json.")
    bpw = meta.get("bits_per_weight") if meta else bits_per_weight(model)  # from shapes: still nothing read
    quantization = checkpoint.config.get("quantization")
    return FolderModel(folder, "lm", meta, bpw, quantization if isinstance(quantization, dict) else None)


def _vision_folder(folder: Path, meta: dict) -> FolderModel:
    name = (meta.get("architecture") or {}).get("name")
    if name not in resnet.DEPTHS or not isinstance(meta.get("layers"), dict):
        raise LabError(f"{folder}/{VISION_META} describes no ResNet this code builds (architecture {name!r}).")
    if not (folder / "model.safetensors").is_file():
        raise LabError(f"{folder} holds {VISION_META} but no model.safetensors: the export is incomplete.")
    return FolderModel(folder, "vision", meta, meta.get("bits_per_weight"), None)


def load_folder(folder: FolderModel, dtype: str) -> tuple[nn.Module, object | None]:
    """(model, tokenizer or None) holding exactly the folder's arrays (an export through `load_exported`, any
    other folder through mlx-lm's load, its quantized layers swapped for the lab's over the same arrays), then
    computing in `dtype` with this machine's kernel choice, as `Quantized.deploy()` does."""
    if not folder.path.is_dir():  # checked at start-up; gone since (never a hub download in its place)
        raise LabError(f"{folder.path} is no longer there; it was a model folder when the server started.")
    if folder.meta is not None:
        model, tokenizer = load_exported(folder.path)
    else:
        model, tokenizer = _mlx_lm_load(folder.path)
        lab_layers(model, activation_dtype(model))
    use_measured_kernels(cast_to(model, dtype))
    mx.eval(model.parameters())
    return model, tokenizer
