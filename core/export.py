"""Export a quantized model to a folder: quantized exactly as an evaluation run does, reloadable bit-identically.

- Language models become an mlx-lm folder (model.safetensors, config.json with a `quantization` entry, the
  source's tokenizer files) that `mlx_lm.load` and `mlx_lm generate` read unchanged.
- ResNets become `model.safetensors` (every array: packed weights, scales, biases, BatchNorm statistics) plus
  `quantization.json` (architecture, per-layer quantization, method and config); `load_exported` rebuilds the
  model from those two files alone.
Full-precision layers are saved as they are held in memory: in the run's compute dtype (float32 by default).
The folder is built next to its destination and renamed into place, so an interrupted export leaves nothing."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from core import models, resnet, runtime
from core.errors import LabError
from core.gguf import MARKER as GGUF_MARKER
from core.methods import Calibration, apply_method
from core.pipeline import DTYPES, EvalConfig, _output_layer
from core.qconv import QuantizedConv2d
from core.quantize import (WEIGHT_LAYERS, ExactQuantizedEmbedding, QuantReport, bits_per_weight, size_bytes,
                           weight_layer_paths)

FORMAT, VERSION = "mlxq-export", 1
VISION_META = "quantization.json"  # ResNet exports: architecture, layers, method
LM_META = "mlxq_export.json"  # LM exports: provenance next to mlx-lm's own config.json
# What mlx-lm's tokenizer loader reads (mlx_lm.utils.load_tokenizer's allow_patterns); config.json is rewritten.
TOKENIZER_PATTERNS = ("*.json", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl",
                      "*.jinja")
NOT_COPIED = {"config.json", "model.safetensors.index.json", LM_META, VISION_META, GGUF_MARKER}  # ours, rewritten
CONFIG_FIELDS = ("model", "bits", "group_size", "mode", "quantizer", "method", "calib", "target_bpw", "seed", "ctx",
                 "keep_first", "keep_last", "dtype")  # the EvalConfig fields that decide the quantized weights


@dataclass
class Quantized:
    """A model quantized as `run_eval` quantizes it, with what happened to each layer."""

    config: EvalConfig
    info: models.ModelInfo
    model: nn.Module
    tokenizer: object | None
    report: QuantReport


@dataclass
class ExportResult:
    path: Path
    kind: str
    tag: str
    size_bytes: int  # every array the model holds (core.quantize.size_bytes)
    file_bytes: int  # the folder on disk (adds the safetensors header, config and tokenizer files)
    bits_per_weight: float
    report: QuantReport


def quantize(config: EvalConfig, progress=None) -> Quantized:
    """Load and quantize like core.pipeline.run_eval (same keep set, spec and Calibration), no evaluation."""
    cfg = config.validated()
    info = models.resolve(cfg.model)
    model, tokenizer = models.load(info, DTYPES[cfg.dtype])
    layers = weight_layer_paths(model)
    keep = {p for p, wanted in ((layers[0], cfg.keep_first), (_output_layer(model, layers), cfg.keep_last)) if wanted}
    report = apply_method(model, tokenizer, info.kind, cfg.spec, cfg.method, keep,
                          Calibration(cfg.calib or 0, cfg.ctx, cfg.seed, cfg.target_bpw), progress=progress)
    model.eval()
    return Quantized(cfg, info, model, tokenizer, report)


def export_model(config: EvalConfig, out: Path, force: bool = False, progress=None) -> ExportResult:
    """Quantize `config` and write it to the folder `out` (see the module docstring for what it holds)."""
    cfg = config.validated()  # bad flags fail before the destination is touched
    out = Path(os.path.abspath(out))  # '.' and '..' resolved (links not followed), so name and parent are real
    check_destination(out, force)
    with _staging_folder(out) as staging:  # made first, so an unwritable --out fails before any work
        return _finish(quantize(cfg, progress), staging, out)


def write_export(q: Quantized, out: Path, force: bool = False) -> ExportResult:
    """Write an already quantized model to `out`."""
    out = Path(os.path.abspath(out))
    check_destination(out, force)
    with _staging_folder(out) as staging:
        return _finish(q, staging, out)


def _finish(q: Quantized, staging: Path, out: Path) -> ExportResult:
    """Write everything into `staging`, then rename it to `out`."""
    meta = _metadata(q)
    try:
        if q.info.kind == "vision":
            _write_vision(q, meta, staging)
        else:
            _write_lm(q, meta, staging)
        _swap_into_place(staging, out)
    except OSError as cause:
        raise LabError(f"Could not write the export to {out}: {cause}") from cause
    return ExportResult(out, q.info.kind, q.config.tag, meta["size_bytes"], _folder_bytes(out),
                        meta["bits_per_weight"], q.report)


# ---- the destination ---------------------------------------------------------------------------------------------

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


def check_destination(out: Path, force: bool) -> None:
    """Refuse a destination that export would damage: a file, or someone else's non-empty folder (unless
    force); and never replace a folder that holds the working directory or the repository."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"--out {out} exists and is not a folder; give a new folder path.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    resolved = out.resolve()
    for precious in (Path.cwd(), models.REPO_ROOT, Path.home()):
        if precious.resolve().is_relative_to(resolved):
            raise LabError(f"--out {out} contains {precious}; refusing to replace it. Give a new folder path.")
    if read_metadata(out) is None and not force:
        raise LabError(f"--out {out} is a non-empty folder that export did not create; give a new folder path, "
                       "or pass --force to replace it (its contents are deleted).")


@contextmanager
def _staging_folder(out: Path):
    """A fresh hidden folder next to `out`, deleted again unless it was renamed to `out` (any error, Ctrl-C)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as cause:
        raise LabError(f"Cannot write to --out {out}: {cause}") from cause
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder should be readable like any other
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an earlier folder there is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = staging.with_name(staging.name + ".old")
        os.rename(out, old)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- what is written ---------------------------------------------------------------------------------------------

def _layer_entry(module: nn.Module, why_kept: str | None) -> dict:
    """How one weight layer is stored: its quantization, or that it is kept in full precision (and why)."""
    entry = {"type": type(module).__name__}
    if isinstance(module, ExactQuantizedEmbedding):
        entry["type"] = "QuantizedEmbedding"  # the same arrays as MLX's layer; only the output dtype differs
    if not hasattr(module, "bits"):
        return {**entry, "quantized": False, "dtype": str(module.weight.dtype).removeprefix("mlx.core."),
                "reason": why_kept or "not a quantizable layer"}
    entry.update(quantized=True, bits=module.bits, group_size=module.group_size, mode=module.mode)
    if isinstance(module, QuantizedConv2d):
        entry.update(k=module.k, padded_k=module.padded_k, kernel_size=list(module.kernel_size),
                     in_channels=module.in_channels, out_channels=module.out_channels,
                     stride=list(module.stride), padding=list(module.padding), bias="bias" in module)
    return entry


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every float or quantized weight layer by path, in the model's order."""
    kinds = (*WEIGHT_LAYERS, QuantizedConv2d, nn.QuantizedLinear, nn.QuantizedEmbedding)
    return {path: m for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
            if isinstance(m, kinds)}


def _metadata(q: Quantized) -> dict:
    cfg = asdict(q.config)
    return {
        "format": FORMAT, "version": VERSION, "kind": q.info.kind, "model": q.config.model, "tag": q.config.tag,
        "method": q.config.method, "config": {k: cfg[k] for k in CONFIG_FIELDS},
        "full_precision_dtype": q.config.dtype,
        "size_bytes": size_bytes(q.model), "bits_per_weight": bits_per_weight(q.model),
        "layers": {p: _layer_entry(m, q.report.kept.get(p)) for p, m in _weight_layers(q.model).items()},
        "mlx": mx.__version__, "mlx_lm": runtime.describe()["mlx_lm"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_vision(q: Quantized, meta: dict, folder: Path) -> None:
    blocks = len(q.model.layer1)
    meta["architecture"] = {"family": "cifar-resnet (option-A shortcuts)", "name": f"resnet{6 * blocks + 2}",
                            "depth": 6 * blocks + 2, "blocks_per_stage": blocks,
                            "num_classes": q.model.linear.weight.shape[0]}
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(q.model.parameters())),
                        metadata={"format": "mlx"})
    (folder / VISION_META).write_text(json.dumps(meta, indent=2))


def lm_quantization(layers: dict[str, nn.Module]) -> dict | None:
    """mlx-lm's `quantization` config entry: the commonest setting as the default, plus one entry per layer that
    differs (its own dict, or False when kept in full precision), as mlx_lm.quant.awq.update_config writes it."""
    setting = {p: {"group_size": m.group_size, "bits": m.bits, "mode": m.mode}
               for p, m in layers.items() if hasattr(m, "bits")}
    if not setting:
        return None
    common = json.loads(Counter(json.dumps(s, sort_keys=True) for s in setting.values()).most_common(1)[0][0])
    quantization = dict(common)
    for path in layers:
        if path not in setting:
            quantization[path] = False
        elif setting[path] != common:
            quantization[path] = setting[path]
    return quantization


def _source_folder(info: models.ModelInfo) -> Path:
    source = models.lm_path(info)
    if Path(source).is_dir():
        return Path(source)
    from mlx_lm.utils import hf_repo_to_path  # a hub id: the snapshot mlx-lm has just loaded

    return hf_repo_to_path(source)


def _write_lm(q: Quantized, meta: dict, folder: Path) -> None:
    from mlx_lm.utils import load_config, save_config, save_model

    source = _source_folder(q.info)
    for pattern in TOKENIZER_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file() and path.name not in NOT_COPIED:
                shutil.copy2(path, folder / path.name)
    config = load_config(source)
    config.pop("quantization", None)
    config.pop("quantization_config", None)  # the source may be quantized; its weights were de-quantized
    quantization = lm_quantization(_weight_layers(q.model))
    if quantization is not None:
        config["quantization"] = quantization
    config["torch_dtype"] = q.config.dtype  # the dtype of the full-precision arrays written
    save_model(folder, q.model)  # mlx-lm's own writer: model.safetensors (+ index), format "mlx"
    save_config(config, folder / "config.json")  # mlx-lm's: sorted, quantization mirrored to quantization_config
    (folder / LM_META).write_text(json.dumps(meta, indent=2))


# ---- loading -----------------------------------------------------------------------------------------------------

def load_exported(folder: Path) -> tuple[nn.Module, object | None]:
    """(model, tokenizer or None) from an export folder, holding exactly the arrays that were written.

    ResNets are rebuilt from model.safetensors and quantization.json alone. Language models load through
    mlx_lm.load; the quantized embedding is then swapped for the project's float32-exact one (the same arrays),
    so the reloaded model computes exactly what the evaluated model computed."""
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
    return model


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
        return nn.QuantizedLinear(in_dims, out_dims, bias="bias" in float_layer, group_size=entry["group_size"],
                                  bits=entry["bits"], mode=entry["mode"])
    raise LabError(f"Layer {path} has type {entry['type']!r}, which a ResNet export does not hold.")


def _load_lm(folder: Path, meta: dict):
    from mlx_lm import load

    model, tokenizer = load(str(folder))
    dtype = DTYPES[meta["config"]["dtype"]]
    swaps = []
    for path, m in _weight_layers(model).items():
        if isinstance(m, nn.QuantizedEmbedding) and not isinstance(m, ExactQuantizedEmbedding):
            exact = ExactQuantizedEmbedding(m.num_embeddings, m.dims, group_size=m.group_size, bits=m.bits,
                                            mode=m.mode, compute_dtype=dtype)
            exact.update(m.parameters())  # the loaded arrays themselves: nothing re-quantized
            swaps.append((path, exact))
    model.update_modules(tree_unflatten(swaps))
    model.eval()
    return model, tokenizer
