"""What the playground and the HTTP API serve, and under which name.

- A registry id names a model with its quantization ('resnet20@q4g32', 'smollm2-135m-instruct@q8',
  '...@mxfp4'): quantized fresh by round-to-nearest through core.quant.recipe.
- `NAME=PATH` (the server's --models only) names a folder: a lab export (`python -m core export`, any method and
  width, vision or language) or any other mlx-lm model folder, read back holding exactly its arrays
  (core.deploy.exported).

Every entry is checked when the server starts (`served_models`); a request only ever names an entry, which is
looked up by name: a request never becomes a path or a hub download."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn

from core.deploy.exported import FolderModel, describe_folder, load_folder, weight_layers
from core.errors import LabError
from core.models import registry
from core.quant.config import QuantConfig
from core.quant.layers import QuantReport, bits_per_weight, size_bytes
from core.quant.recipe import quantize
from core.quant.spec import FLOAT_MODES, QuantSpec
from core.runtime import DTYPES, resolve_dtype

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a folder's served name: no '@', '=', '/', no spaces
SCALE_BITS = 16  # affine scales and biases are stored in 16 bits (QuantSpec.scale_dtype)
FLOAT_MODE_SCALE_BITS = 8  # mxfp4 / nvfp4 / mxfp8: one 8-bit scale per group, no biases


def parse_model_id(model_id: str) -> tuple[registry.ModelInfo, QuantSpec]:
    """'name@tag' -> (registry entry, spec). Registry names only: an id never becomes a path or a hub download."""
    name, _, tag = model_id.partition("@")
    if name not in registry.REGISTRY:
        raise LabError(f"Unknown model {name!r}; available: {', '.join(registry.REGISTRY)}.")
    return registry.resolve(name), QuantSpec.from_tag(tag)


@dataclass
class Deployed:
    info: registry.ModelInfo
    spec: QuantSpec  # registry ids: the grid; folders: the export's configured grid, or config.json's default one
    model: nn.Module
    tokenizer: object | None
    report: QuantReport
    size_bytes: int  # every array it holds, as held (core.quant.layers.size_bytes)
    bits_per_weight: float
    dtype: str  # what it computes in


def load_deployed(info: registry.ModelInfo, spec: QuantSpec, dtype: str | None = None) -> Deployed:
    """A fresh model quantized to `spec` by round-to-nearest (never a shared one: quantization is in place),
    computing in `dtype` (default: this backend's, core.runtime.default_dtype)."""
    q = quantize(QuantConfig(info.name, bits=spec.bits, group_size=spec.group_size, mode=spec.mode,
                             quantizer=spec.quantizer, dtype=dtype))
    model = q.deploy()
    return Deployed(info, spec, model, q.tokenizer, q.report, size_bytes(model), bits_per_weight(model),
                    q.config.dtype)


@dataclass
class Served:
    """One model the server offers under `name`, as known at start-up (nothing loaded)."""

    name: str
    info: registry.ModelInfo
    spec: QuantSpec
    method: str  # rtn / gptq / awq / dwq / mixed; 'none' for full precision; 'unknown' for another tool's folder
    bits_per_weight: float | None  # see `nominal_bits_per_weight` (registry) and FolderModel (folders)
    folder: FolderModel | None = None  # None: a registry id

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def source(self) -> str:
        return "registry" if self.folder is None else "folder"

    def load(self, dtype: str | None = None) -> Deployed:
        """A fresh model computing in `dtype` (default: this backend's)."""
        if self.folder is None:
            return load_deployed(self.info, self.spec, dtype)
        dtype = resolve_dtype(dtype)
        model, tokenizer = load_folder(self.folder, dtype)
        return Deployed(self.info, self.spec, model, tokenizer, folder_report(model, self.folder), size_bytes(model),
                        bits_per_weight(model), dtype)


def served_models(entries: list[str], dtype: str | None = None) -> dict[str, Served]:
    """Every --models entry checked, by served name, in order; one LabError for the first bad or repeated one."""
    served: dict[str, Served] = {}
    for entry in entries:
        model = parse_entry(entry, dtype)
        if model.name in served:
            raise LabError(f"--models lists {model.name!r} twice; every served name must be unique.")
        served[model.name] = model
    return served


def parse_entry(entry: str, dtype: str | None = None) -> Served:
    """A registry id ('resnet20@q8') or NAME=PATH (a folder), checked: folders are read here (their metadata and
    structure, no weights) and never again until the model loads."""
    if not isinstance(entry, str) or not entry.strip():
        raise LabError(f"--models has an empty entry ({entry!r}).")
    entry = entry.strip()
    if "=" in entry:
        name, _, path = entry.partition("=")
        return _folder_entry(name.strip(), path.strip())
    if entry.partition("@")[0] not in registry.REGISTRY:
        raise LabError(f"--models: {entry!r} is not a registry id (name@quantization, names: "
                       f"{', '.join(registry.REGISTRY)}); to serve a folder, write NAME=PATH.")
    try:
        info, spec = parse_model_id(entry)
    except LabError as e:
        raise LabError(f"--models {entry}: {e}") from None
    return Served(entry, info, spec, "none" if spec.full_precision else "rtn", nominal_bits_per_weight(spec, dtype))


def check_name(name: str, path: str = "") -> str:
    where = f" (for {path})" if path else ""
    if not NAME.match(name):
        raise LabError(f"--models: {name!r}{where} is not a usable model name: use 1 to 64 letters, digits, '.', "
                       "'_' or '-', starting with a letter or digit (no '@', '=', '/' or spaces).")
    if name in registry.REGISTRY:
        raise LabError(f"--models: {name!r}{where} is a registry model's name; choose another name for the folder.")
    return name


def _folder_entry(name: str, path: str) -> Served:
    check_name(name, path)
    if not path:
        raise LabError(f"--models: {name}= names no folder; write {name}=PATH.")
    try:
        folder = describe_folder(path)
    except LabError as e:
        raise LabError(f"--models {name}: {e}") from None
    meta = folder.meta
    if meta is not None:
        source = meta.get("model", "?")
        title = f"{source} ({meta.get('tag', '?')}) exported to {folder.path}"
        baseline = registry.REGISTRY[source].baseline if source in registry.REGISTRY else "the exported source"
    else:
        title, baseline = f"mlx-lm folder {folder.path}", "the folder's weights as stored"
    info = registry.ModelInfo(name, folder.kind, title, baseline)
    return Served(name, info, _folder_spec(folder), folder.method, folder.bits_per_weight, folder)


def _folder_spec(folder: FolderModel) -> QuantSpec:
    """The grid the folder was made with (an export's config; config.json's default setting), unvalidated: another
    tool may use widths or groups the lab does not offer. Full precision where none."""
    source = (folder.meta or {}).get("config") or folder.quantization or {}
    scale_dtype = (folder.meta or {}).get("scale_dtype", "float16")
    if not source.get("bits") or source.get("bits", 16) >= 16:
        return QuantSpec()
    return QuantSpec(int(source["bits"]), source.get("group_size"), source.get("mode", "affine"),
                     source.get("quantizer", "minmax"), scale_dtype)


def nominal_bits_per_weight(spec: QuantSpec, dtype: str | None = None) -> float:
    """Stored bits per quantized weight from the spec alone, scales and biases counted (no model loaded): the
    compute dtype's width for full precision. The loaded model's own figure (Deployed.bits_per_weight) adds
    norms and padding."""
    if spec.full_precision:
        return float(DTYPES[resolve_dtype(dtype)].size * 8)
    if spec.mode in FLOAT_MODES:
        return spec.bits + FLOAT_MODE_SCALE_BITS / spec.group_size
    return spec.bits + 2 * SCALE_BITS / spec.group_size


def folder_report(model: nn.Module, folder: FolderModel) -> QuantReport:
    """What the folder holds per weight layer: the export's own record, else what the loaded model holds."""
    report = QuantReport()
    layers = (folder.meta or {}).get("layers") or {}
    for path, m in weight_layers(model).items():
        entry = layers.get(path, {})
        if hasattr(m, "bits"):
            report.quantized.append(path)
            report.layer_bits[path] = m.bits
        else:
            report.kept[path] = entry.get("reason", "stored in full precision in the folder")
    if len(set(report.layer_bits.values())) < 2:
        report.layer_bits = {}  # one width: not mixed precision
    return report
