"""Export a quantized model to a folder: quantized by the same recipe as an evaluation, reloadable bit-identically.

- Language models become an mlx-lm folder (model.safetensors, config.json with a `quantization` entry, the
  source's tokenizer files) that `mlx_lm.load` and `mlx_lm generate` read unchanged.
- ResNets become `model.safetensors` (every array: packed weights, scales, biases, BatchNorm statistics) plus
  `quantization.json` (architecture, per-layer quantization, method and config); core.deploy.exported.load_exported rebuilds the
  model from those two files alone.
Every float array is saved in the config's compute dtype (core.runtime.default_dtype: float32 on a CPU, bfloat16 on
Metal and CUDA), with affine scales in the matching 16-bit type, so the loading tool computes in that dtype too.
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
from mlx.utils import tree_flatten

from core import runtime
from core.deploy.exported import FORMAT, LM_META, VERSION, VISION_META, read_metadata, weight_layers
from core.errors import LabError
from core.models import registry
from core.models.gguf import MARKER as GGUF_MARKER
from core.quant.config import QuantConfig
from core.quant.conv import QuantizedConv2d
from core.quant.layers import ExactQuantizedEmbedding, QuantReport, bits_per_weight, size_bytes, swap
from core.quant.recipe import Quantized, quantize
from core.settings import REPO_ROOT

# What mlx-lm's tokenizer loader reads (mlx_lm.utils.load_tokenizer's allow_patterns); config.json is rewritten.
TOKENIZER_PATTERNS = ("*.json", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl",
                      "*.jinja")
NOT_COPIED = {"config.json", "model.safetensors.index.json", LM_META, VISION_META, GGUF_MARKER}  # ours, rewritten
CONFIG_FIELDS = ("model", "bits", "group_size", "mode", "quantizer", "method", "calib", "target_bpw", "seed", "ctx",
                 "keep_first", "keep_last", "dtype")  # written to the metadata: the config that made the weights


@dataclass
class ExportResult:
    path: Path
    kind: str
    tag: str
    size_bytes: int  # every array the model holds (core.quant.layers.size_bytes)
    file_bytes: int  # the folder on disk (adds the safetensors header, config and tokenizer files)
    bits_per_weight: float
    report: QuantReport
    dtype: str  # the compute dtype its float arrays are stored in


def export_model(config: QuantConfig, out: Path, force: bool = False, progress=None) -> ExportResult:
    """Quantize `config` (core.quant.recipe, as an evaluation does) and write it to the folder `out` (see the
    module docstring for what it holds)."""
    cfg = config.validated()  # bad flags fail before the destination is touched
    if cfg.act_bits:
        raise LabError("--act-bits simulates integer activations during evaluation; an export holds the weights "
                       "only. Drop --act-bits to export them.")
    out = Path(os.path.abspath(out))  # '.' and '..' resolved (links not followed), so name and parent are real
    check_destination(out, force)
    with _staging_folder(out) as staging:  # made first, so an unwritable --out fails before any work
        return _finish(quantize(cfg, progress), staging, out)


def _finish(q: Quantized, staging: Path, out: Path) -> ExportResult:
    """Write everything into `staging`, then rename it to `out`."""
    q.deploy()  # the compute dtype the folder's users will run
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
                        meta["bits_per_weight"], q.report, q.config.dtype)


# ---- the destination ---------------------------------------------------------------------------------------------

def check_destination(out: Path, force: bool) -> None:
    """Refuse a destination that export would damage: a file, or someone else's non-empty folder (unless
    force); and never replace a folder that holds the working directory or the repository."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"--out {out} exists and is not a folder; give a new folder path.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    resolved = out.resolve()
    for precious in (Path.cwd(), REPO_ROOT, Path.home()):
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
    # the lab's layers hold the same arrays as MLX's; they differ only in output dtype or kernel choice
    if isinstance(module, ExactQuantizedEmbedding):
        entry["type"] = "QuantizedEmbedding"
    elif isinstance(module, nn.QuantizedLinear):
        entry["type"] = "QuantizedLinear"
    if not hasattr(module, "bits"):
        return {**entry, "quantized": False, "dtype": str(module.weight.dtype).removeprefix("mlx.core."),
                "reason": why_kept or "not a quantizable layer"}
    entry.update(quantized=True, bits=module.bits, group_size=module.group_size, mode=module.mode)
    if isinstance(module, QuantizedConv2d):
        entry.update(k=module.k, padded_k=module.padded_k, kernel_size=list(module.kernel_size),
                     in_channels=module.in_channels, out_channels=module.out_channels,
                     stride=list(module.stride), padding=list(module.padding), bias="bias" in module)
    return entry


def _metadata(q: Quantized) -> dict:
    cfg = asdict(q.config)
    return {
        "format": FORMAT, "version": VERSION, "kind": q.info.kind, "model": q.config.model, "tag": q.config.tag,
        "method": q.config.method, "config": {k: cfg[k] for k in CONFIG_FIELDS},
        "compute_dtype": q.config.dtype, "scale_dtype": q.config.spec.scale_dtype,
        "size_bytes": size_bytes(q.model), "bits_per_weight": bits_per_weight(q.model),
        "layers": {p: _layer_entry(m, q.report.kept.get(p)) for p, m in weight_layers(q.model).items()},
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


@contextmanager
def _plain_embeddings(model: nn.Module):
    """MLX's own QuantizedEmbedding in place of the lab's exact one while the model is written: same arrays,
    keys that mlx-lm's loader expects."""
    exact = {p: m for p, m in weight_layers(model).items() if isinstance(m, ExactQuantizedEmbedding)}
    for path, m in exact.items():
        swap(model, path, m.plain())
    try:
        yield model
    finally:
        for path, m in exact.items():
            swap(model, path, m)


def source_folder(info: registry.ModelInfo) -> Path:
    source = registry.lm_path(info)
    if Path(source).is_dir():
        return Path(source)
    from mlx_lm.utils import hf_repo_to_path  # a hub id: the snapshot mlx-lm has just loaded

    return hf_repo_to_path(source)


def _write_lm(q: Quantized, meta: dict, folder: Path) -> None:
    from mlx_lm.utils import load_config, save_config, save_model

    source = source_folder(q.info)
    for pattern in TOKENIZER_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file() and path.name not in NOT_COPIED:
                shutil.copy2(path, folder / path.name)
    config = load_config(source)
    config.pop("quantization", None)
    config.pop("quantization_config", None)  # the source may be quantized; its weights were de-quantized
    quantization = lm_quantization(weight_layers(q.model))
    if quantization is not None:
        config["quantization"] = quantization
    config["torch_dtype"] = q.config.dtype  # the dtype of every float array written: what mlx-lm computes in
    with _plain_embeddings(q.model):
        save_model(folder, q.model)  # mlx-lm's own writer: model.safetensors (+ index), format "mlx"
    save_config(config, folder / "config.json")  # mlx-lm's: sorted, quantization mirrored to quantization_config
    (folder / LM_META).write_text(json.dumps(meta, indent=2))


