"""An export run: the quantization config (core.quant.config.QuantConfig) plus where and in which format to write
it, validated once, and `run_export`, the one call the command line and the jobs make: an mlx-lm folder (the lab's
own folder for a ResNet, core.deploy.export) or one GGUF file (core.deploy.gguf_export)."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from core.errors import LabError
from core.options import option, positive_int
from core.quant.config import QuantConfig

FORMATS = ("mlx", "gguf")
GGUF_KINDS = ("lm",)  # GGUF holds language models; a ResNet exports to the lab's folder format


def formats_for(kind: str) -> tuple[str, ...]:
    """The formats a model of `kind` ('vision' or 'lm') exports to."""
    return tuple(f for f in FORMATS if f != "gguf" or kind in GGUF_KINDS)


@dataclass(frozen=True)
class ExportConfig(QuantConfig):
    """A quantization config and its destination; the width is always given (an export of an unnamed width is a
    mistake), and simulated activations are evaluation's alone."""

    bits: int = option(MISSING, "2, 3, 4, 5, 6, 8 (16: full precision)", flag="--q-bits", parse=int, kw_only=True)
    act_bits: int | None = option(None, "simulated activations: evaluation only", parse=int, cli=False)
    seed: int = option(0, "seed of the calibration subset")
    ctx: int = option(512, "LM calibration chunk length in tokens", parse=positive_int)
    out: str = option(MISSING, "folder to write (created; an earlier export there is replaced); a .gguf file with "
                      "--format gguf", kw_only=True)
    format: str = option("mlx", "mlx (default): the folder mlx-lm loads; gguf: one file llama.cpp, Ollama and LM "
                         "Studio load", choices=FORMATS)
    gguf_type: str | None = option(None, "with --format gguf: exact (default: the lab's grids, bit for bit where a "
                                   "GGUF type holds them) or a llama.cpp type made by llama.cpp's quantizer from the "
                                   "lab's weights (Q4_K_M, Q6_K ...; needs ./lab setup --peers)", parse=str,
                                   metavar="TYPE")
    force: bool = option(False, "replace a non-empty folder (or a file) export did not create")

    def validated(self) -> "ExportConfig":
        """The same config with every default filled in, or a LabError that says in words what is wrong."""
        if self.format not in FORMATS:
            raise LabError(f"An export is written as {' or '.join(FORMATS)}, not {self.format!r}.", "format",
                           self.format)
        if self.gguf_type is not None and self.format != "gguf":
            raise LabError("A llama.cpp type goes with the GGUF format: choose that format, or leave the type out.",
                           "gguf_type", self.gguf_type)
        if not str(self.out).strip():
            raise LabError("Say where to write the export: a folder, or a .gguf file for the GGUF format.", "out")
        return super().validated()

    def quant_config(self) -> QuantConfig:
        """The quantization config alone: what decides the weights."""
        return QuantConfig(**{f.name: getattr(self, f.name) for f in fields(QuantConfig)})


def run_export(config: ExportConfig, progress=None):
    """Quantize and write the export (it appears only when complete); the ExportResult of a folder or the
    GgufResult of a GGUF file."""
    cfg = config.validated()
    if cfg.format == "gguf":
        from core.deploy.gguf_export import export_gguf

        return export_gguf(cfg.quant_config(), Path(cfg.out), force=cfg.force, gguf_type=cfg.gguf_type,
                           progress=progress)
    from core.deploy.export import export_model

    return export_model(cfg.quant_config(), Path(cfg.out), force=cfg.force, progress=progress)


def export_summary(result) -> dict:
    """What a job records of an export: where it went, its tag, its size."""
    from core.deploy.gguf_export import GgufResult

    if isinstance(result, GgufResult):
        return {"path": str(result.path), "format": "gguf", "tag": result.tag, "file_bytes": result.file_bytes,
                "bits_per_weight": result.file_bits_per_weight}
    return {"path": str(result.path), "kind": result.kind, "tag": result.tag, "size_bytes": result.size_bytes,
            "file_bytes": result.file_bytes, "bits_per_weight": result.bits_per_weight, "dtype": result.dtype}
