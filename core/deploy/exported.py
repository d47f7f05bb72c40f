"""Reading an export folder back (core.deploy.export writes them): the model holding exactly the arrays written."""
from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from core.errors import LabError
from core.models import resnet
from core.quant.conv import QuantizedConv2d
from core.quant.kernels import AdaptiveQuantizedLinear, use_measured_kernels
from core.quant.layers import WEIGHT_LAYERS, ExactQuantizedEmbedding
from core.runtime import DTYPES

FORMAT, VERSION = "mlxq-export", 1
VISION_META = "quantization.json"  # ResNet exports: architecture, layers, method
LM_META = "mlxq_export.json"  # LM exports: provenance next to mlx-lm's own config.json


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
    from mlx_lm import load

    model, tokenizer = load(str(folder))
    dtype = DTYPES[meta["config"]["dtype"]]
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
    return use_measured_kernels(model), tokenizer
