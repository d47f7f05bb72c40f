"""How weights are quantized: bits, group size, mode and rounding, validated, with their short tags."""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import LabError

FULL_PRECISION_BITS = 16
AFFINE_BITS = (2, 3, 4, 5, 6, 8)
AFFINE_GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64  # affine, when no group size is given
FLOAT_MODES = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}  # mode -> (bits, group size)
MODES = ("affine", *FLOAT_MODES)
QUANTIZERS = ("minmax", "mlx", "symmetric")
_QUANTIZER_SUFFIX = {"minmax": "", "mlx": "-mlx", "symmetric": "-sym"}
SCALE_DTYPES = ("float16", "bfloat16")
_AFFINE_TAG = re.compile(r"^q(\d+)(?:g(\d+))?$")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize weights; bits >= 16 means full precision (no quantization), None a float mode's own width."""

    bits: int | None = FULL_PRECISION_BITS
    group_size: int | None = None
    mode: str = "affine"
    # affine only: 'minmax' (this project's), 'mlx' (mx.quantize, zero-snapping) or 'symmetric' (grids centred on zero,
    # the form llama.cpp's Q4_0 / Q5_0 / Q8_0 store)
    quantizer: str = "minmax"
    # Affine scales and biases are stored in 16 bits: bfloat16 for a model that computes in bfloat16 (a quantized
    # matmul promotes mixed dtypes to float32), float16 otherwise. Not part of the tag.
    scale_dtype: str = "float16"

    @classmethod
    def scales_for(cls, compute_dtype: str) -> str:
        """The scale dtype of a model that computes in `compute_dtype`."""
        return "bfloat16" if compute_dtype == "bfloat16" else "float16"

    @property
    def full_precision(self) -> bool:
        return self.bits is not None and self.bits >= FULL_PRECISION_BITS

    @property
    def tag(self) -> str:
        """Short name, e.g. 'fp', 'q4g64', 'mxfp4'."""
        if self.full_precision:
            return "fp"
        if self.mode != "affine":
            return self.mode
        return f"q{self.bits}g{self.group_size}" + _QUANTIZER_SUFFIX[self.quantizer]

    @classmethod
    def from_tag(cls, tag: str) -> "QuantSpec":
        """'fp' / 'q8' / 'q4g32' / 'mxfp4' -> a validated spec (the inverse of `tag` for the minmax quantizer)."""
        tag = tag.strip().lower()
        if tag in ("", "fp", "fp32", "q16"):
            return cls().validated()
        if tag in FLOAT_MODES:
            return cls(None, None, tag).validated()
        match = _AFFINE_TAG.match(tag)
        if not match:
            raise LabError(f"Unknown quantization {tag!r}: use fp, q<bits> or q<bits>g<group> (e.g. q4g64), "
                           f"or one of {', '.join(FLOAT_MODES)}.")
        return cls(int(match[1]), int(match[2]) if match[2] else None).validated()

    def validated(self) -> "QuantSpec":
        """The same spec with defaults filled in (a float mode decides its own width and group size), or a LabError
        that says in words what is allowed."""
        if self.mode not in MODES:
            raise LabError(f"Unknown quantization mode {self.mode!r}; choose one of {', '.join(MODES)}.", "mode",
                           self.mode)
        if self.quantizer not in QUANTIZERS:
            raise LabError(f"Unknown quantizer {self.quantizer!r}; choose one of {', '.join(QUANTIZERS)}.",
                           "quantizer", self.quantizer)
        if self.scale_dtype not in SCALE_DTYPES:
            raise LabError(f"Scales are stored as {' or '.join(SCALE_DTYPES)}, not {self.scale_dtype!r}.")
        if self.full_precision:
            if self.bits != FULL_PRECISION_BITS:
                raise LabError(f"Bit width {self.bits} is not supported; use 16 for full precision or one of "
                               f"{', '.join(map(str, AFFINE_BITS))}.", "bits", self.bits)
            return QuantSpec(FULL_PRECISION_BITS, None, "affine", "minmax")
        if self.mode in FLOAT_MODES:
            return self._float_mode()
        if self.bits is None:
            raise LabError(f"Affine quantization needs a bit width: {', '.join(map(str, AFFINE_BITS))} (or 16 for "
                           "full precision).", "bits")
        if self.bits not in AFFINE_BITS:
            raise LabError(f"Bit width {self.bits} is not supported; affine quantization takes "
                           f"{', '.join(map(str, AFFINE_BITS))} bits (or 16 for full precision).", "bits", self.bits)
        group = DEFAULT_GROUP_SIZE if self.group_size is None else self.group_size
        if group not in AFFINE_GROUP_SIZES:
            raise LabError(f"Group size {group} is not supported; choose one of "
                           f"{', '.join(map(str, AFFINE_GROUP_SIZES))}.", "group_size", group)
        return QuantSpec(self.bits, group, "affine", self.quantizer, self.scale_dtype)

    def _float_mode(self) -> "QuantSpec":
        """A float mode fixes its width and group size: given or not (None), they must be its own."""
        bits, group = FLOAT_MODES[self.mode]
        if self.bits not in (None, bits):
            raise LabError(f"Mode {self.mode} means {bits} bits in groups of {group}; leave the bit width to the "
                           f"mode (got {self.bits} bits).", "bits", self.bits)
        if self.group_size not in (None, group):
            raise LabError(f"Mode {self.mode} means {bits} bits in groups of {group}; leave the group size to the "
                           f"mode (got groups of {self.group_size}).", "group_size", self.group_size)
        return QuantSpec(bits, group, self.mode, "minmax", self.scale_dtype)
