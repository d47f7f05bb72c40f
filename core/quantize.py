"""Post-training weight quantization of MLX models: specs, the min-max affine quantizer, and model conversion.

Why a quantizer of our own for the affine mode: `mx.quantize` moves each group's grid so that zero is exactly
representable (it rescales around the larger-magnitude end), which shifts most grid points. A re-quantization
of an already 4-bit group-32 model (SmolLM2's Q4_1 GGUF) then changes ~80 % of its weights. Plain min-max
(scale = (max - min) / (2^b - 1), bias = min) keeps such a grid exactly and is never worse in range use.
The packed layout is MLX's own, so `mx.dequantize` and `mx.quantized_matmul` read it unchanged."""
from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from core.errors import LabError
from core.qconv import QuantizedConv2d

FULL_PRECISION_BITS = 16
AFFINE_BITS = (2, 3, 4, 5, 6, 8)
AFFINE_GROUP_SIZES = (32, 64, 128)
FLOAT_MODES = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}  # mode -> (bits, group size)
MODES = ("affine", *FLOAT_MODES)
QUANTIZERS = ("minmax", "mlx")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize weights; bits >= 16 means full precision (no quantization)."""

    bits: int = FULL_PRECISION_BITS
    group_size: int | None = None
    mode: str = "affine"
    quantizer: str = "minmax"  # affine only: 'minmax' (this project's) or 'mlx' (mx.quantize, zero-snapping)

    @property
    def full_precision(self) -> bool:
        return self.bits >= FULL_PRECISION_BITS

    @property
    def tag(self) -> str:
        """Short name, e.g. 'fp', 'q4g64', 'mxfp4'."""
        if self.full_precision:
            return "fp"
        if self.mode != "affine":
            return self.mode
        return f"q{self.bits}g{self.group_size}" + ("-mlx" if self.quantizer == "mlx" else "")

    def validated(self) -> "QuantSpec":
        """The same spec with defaults filled in, or a LabError that says what is allowed."""
        if self.mode not in MODES:
            raise LabError(f"Unknown quantization mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        if self.quantizer not in QUANTIZERS:
            raise LabError(f"Unknown quantizer {self.quantizer!r}; choose one of {', '.join(QUANTIZERS)}.")
        if self.full_precision:
            if self.bits != FULL_PRECISION_BITS:
                raise LabError(f"--q-bits {self.bits} is not supported; use 16 for full precision or one of {AFFINE_BITS}.")
            return QuantSpec(FULL_PRECISION_BITS, None, "affine", "minmax")
        if self.mode in FLOAT_MODES:
            bits, group = FLOAT_MODES[self.mode]
            if self.bits != bits or self.group_size not in (None, group):
                raise LabError(f"Mode {self.mode} means {bits} bits in groups of {group}; "
                               f"got --q-bits {self.bits} --q-group-size {self.group_size}.")
            return QuantSpec(bits, group, self.mode, "minmax")
        if self.bits not in AFFINE_BITS:
            raise LabError(f"--q-bits {self.bits} is not supported; affine quantization takes "
                           f"{', '.join(map(str, AFFINE_BITS))} bits (or 16 for full precision).")
        group = 64 if self.group_size is None else self.group_size
        if group not in AFFINE_GROUP_SIZES:
            raise LabError(f"--q-group-size {group} is not supported; choose one of "
                           f"{', '.join(map(str, AFFINE_GROUP_SIZES))}.")
        return QuantSpec(self.bits, group, "affine", self.quantizer)


# ---- one weight matrix -------------------------------------------------------------------------------------------

def _pack(q: mx.array, bits: int) -> mx.array:
    """Pack integers < 2**bits into uint32 words as one LSB-first bit stream per row (MLX's layout)."""
    rows, cols = q.shape
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = mx.arange(per_word, dtype=mx.uint32) * bits
        return (q.reshape(rows, cols // per_word, per_word) << shifts).sum(axis=-1).astype(mx.uint32)
    bit_planes = (q[..., None] >> mx.arange(bits, dtype=mx.uint32)) & 1  # rows, cols, bits
    bit_planes = bit_planes.reshape(rows, cols * bits // 32, 32)
    return (bit_planes << mx.arange(32, dtype=mx.uint32)).sum(axis=-1).astype(mx.uint32)


def scale_dtype(w: mx.array) -> mx.Dtype:
    """Affine scales and biases are stored in 16 bits (as in mlx-lm's half-precision models): bfloat16 for a
    bfloat16 model, float16 otherwise. Quantized kernels take them next to float32 activations unchanged."""
    return mx.bfloat16 if w.dtype == mx.bfloat16 else mx.float16


def _minmax_affine(w: mx.array, bits: int, group_size: int) -> tuple[mx.array, mx.array, mx.array]:
    rows, cols = w.shape
    stored = scale_dtype(w)
    groups = w.astype(mx.float32).reshape(rows, cols // group_size, group_size)
    low, high = groups.min(axis=-1), groups.max(axis=-1)
    levels = 2**bits - 1
    # Round scale and bias to their stored dtype first, so the integers are chosen against the stored grid.
    scales = ((high - low) / levels).astype(stored)
    biases = low.astype(stored)
    s32, b32 = scales.astype(mx.float32)[..., None], biases.astype(mx.float32)[..., None]
    safe = mx.where(s32 > 0, s32, 1.0)  # a constant group: every weight equals the bias
    q = mx.clip(mx.round((groups - b32) / safe), 0, levels).astype(mx.uint32)
    return _pack(q.reshape(rows, cols), bits), scales, biases


def quantize_matrix(w: mx.array, spec: QuantSpec) -> tuple[mx.array, mx.array, mx.array | None]:
    """(packed weight, scales, biases or None) for a 2-D weight whose columns divide by the group size."""
    if spec.mode != "affine":
        wq, scales = mx.quantize(w, group_size=spec.group_size, bits=spec.bits, mode=spec.mode)
        return wq, scales, None
    if spec.quantizer == "mlx":
        wq, scales, biases = mx.quantize(w.astype(scale_dtype(w)), group_size=spec.group_size, bits=spec.bits)
        return wq, scales, biases
    # Row blocks bound the bit-plane temporary of 3/5/6-bit packing on large embeddings.
    parts = [_minmax_affine(w[i:i + 8192], spec.bits, spec.group_size) for i in range(0, w.shape[0], 8192)]
    if len(parts) == 1:
        return parts[0]
    return tuple(mx.concatenate([p[k] for p in parts]) for k in range(3))


def dequantize_matrix(wq, scales, biases, spec: QuantSpec, dtype=mx.float32) -> mx.array:
    """The weights the packed form stands for, computed in float32 (scales widened first), then cast."""
    if spec.mode != "affine":
        return mx.dequantize(wq, scales, group_size=spec.group_size, bits=spec.bits, mode=spec.mode).astype(dtype)
    w = mx.dequantize(wq, scales.astype(mx.float32), biases.astype(mx.float32),
                      group_size=spec.group_size, bits=spec.bits)
    return w.astype(dtype)


# ---- whole models ------------------------------------------------------------------------------------------------

@dataclass
class QuantReport:
    """What quantize_model did to each weight layer, so nothing is skipped silently."""

    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # path -> why it stayed in full precision
    padded: dict[str, str] = field(default_factory=dict)  # path -> 'K -> K_padded'
    layer_bits: dict[str, int] = field(default_factory=dict)  # mixed precision: path -> the width it got

    def summary(self) -> str:
        parts = [f"{len(self.quantized)} layers quantized"]
        if self.kept:
            parts.append(f"{len(self.kept)} kept in full precision (" +
                         "; ".join(f"{p}: {why}" for p, why in self.kept.items()) + ")")
        if self.padded:
            parts.append(f"{len(self.padded)} padded to the group size (" +
                         "; ".join(f"{p}: {how}" for p, how in self.padded.items()) + ")")
        return ", ".join(parts)


WEIGHT_LAYERS = (nn.Linear, nn.Embedding, nn.Conv2d)


def weight_layer_paths(model: nn.Module) -> list[str]:
    """Paths of the quantizable layers in the model's own order (first is the input layer)."""
    return [path for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
            if isinstance(m, WEIGHT_LAYERS)]


def _quantized_linear(layer: nn.Linear, spec: QuantSpec, packed=None) -> nn.Module:
    out_dims, in_dims = layer.weight.shape
    q = nn.QuantizedLinear(in_dims, out_dims, bias="bias" in layer, group_size=spec.group_size,
                           bits=spec.bits, mode=spec.mode)
    _set_quantized(q, layer.weight, spec, packed)
    if "bias" in layer:
        q.bias = layer.bias
    return q


class ExactQuantizedEmbedding(nn.QuantizedEmbedding):
    """MLX's QuantizedEmbedding returns rows in the scales' dtype, which would silently turn a float32 model's
    activations into float16 (slow on CPU, and not the model we measure). This one de-quantizes in float32,
    exactly as `dequantize_matrix`, and returns the embedding's compute dtype. Same arrays, same export."""

    def __init__(self, *args, compute_dtype=mx.float32, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_dtype = compute_dtype

    def __call__(self, x: mx.array) -> mx.array:
        return dequantize_matrix(self.weight[x], self.scales[x], self.get("biases")[x] if "biases" in self else None,
                                 spec_of(self), self.compute_dtype)


def _quantized_embedding(layer: nn.Embedding, spec: QuantSpec, packed=None) -> nn.Module:
    num, dims = layer.weight.shape
    q = ExactQuantizedEmbedding(num, dims, group_size=spec.group_size, bits=spec.bits, mode=spec.mode,
                                compute_dtype=layer.weight.dtype)
    _set_quantized(q, layer.weight, spec, packed)
    return q


def _set_quantized(module: nn.Module, weight: mx.array, spec: QuantSpec, packed=None) -> None:
    wq, scales, biases = packed if packed is not None else quantize_matrix(weight, spec)
    module.weight, module.scales = wq, scales
    if biases is not None:
        module.biases = biases
    mx.eval(module.parameters())


def quantize_model(model: nn.Module, spec: QuantSpec, keep: set[str] = frozenset(),
                   specs: dict[str, QuantSpec] | None = None, packed: dict[str, tuple] | None = None) -> QuantReport:
    """Replace the model's Linear, Embedding and Conv2d layers by quantized ones, in place.

    `keep` lists layer paths to leave in full precision. `specs` gives some layers another spec than `spec`
    (mixed precision; a full-precision spec keeps the layer). `packed` gives some layers their packed
    (weight, scales, biases) already, as calibrated methods choose them (GPTQ); the rest are rounded to nearest.
    Linear and Embedding layers whose input width does not divide by the group size stay in full precision and
    are reported; convolutions are zero-padded."""
    spec = spec.validated()
    specs = {path: s.validated() for path, s in (specs or {}).items()}
    packed = packed or {}
    report = QuantReport()
    if spec.full_precision and not specs:
        return report

    def convert(path: str, module: nn.Module) -> nn.Module:
        if not isinstance(module, WEIGHT_LAYERS):
            return module
        layer_spec = specs.get(path, spec)
        if path in keep or layer_spec.full_precision:
            report.kept[path] = "kept in full precision on request" if path in keep else "full precision by the recipe"
            return module
        given = packed.get(path)
        if isinstance(module, nn.Conv2d):
            q = QuantizedConv2d.from_conv(module, layer_spec,
                                          quantize_matrix if given is None else (lambda _w, _s: given))
            if q.padded_k != q.k:
                report.padded[path] = f"{q.k} -> {q.padded_k}"
            report.quantized.append(path)
            return q
        width = module.weight.shape[-1]
        if width % layer_spec.group_size:
            report.kept[path] = f"input width {width} does not divide by group size {layer_spec.group_size}"
            return module
        report.quantized.append(path)
        make = _quantized_linear if isinstance(module, nn.Linear) else _quantized_embedding
        return make(module, layer_spec, given)

    leaves = tree_map_with_path(convert, model.leaf_modules(), is_leaf=nn.Module.is_module)
    model.update_modules(leaves)
    return report


def spec_of(module: nn.Module) -> QuantSpec:
    return QuantSpec(module.bits, module.group_size, module.mode)


def dequantize_model(model: nn.Module, dtype=mx.float32) -> nn.Module:
    """Replace every quantized layer by a float layer holding exactly the de-quantized weights, in place.

    Quality numbers computed this way equal the quantized kernels' (tests/test_quantize.py checks it) and
    run at full BLAS speed on the Linux CPU, where quantized matmuls are ~20x slower."""
    def convert(_path: str, m: nn.Module) -> nn.Module:
        if isinstance(m, QuantizedConv2d):
            return m.to_float(dtype)
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            w = dequantize_matrix(m.weight, m.scales, m.get("biases"), spec_of(m), dtype)
            if isinstance(m, nn.QuantizedEmbedding):
                f = nn.Embedding(*w.shape)
            else:
                f = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
                if "bias" in m:
                    f.bias = m.bias.astype(dtype)
            f.weight = w
            return f
        return m

    model.update_modules(tree_map_with_path(convert, model.leaf_modules(), is_leaf=nn.Module.is_module))
    mx.eval(model.parameters())
    return model


def size_bytes(model: nn.Module) -> int:
    """Bytes of every array the model holds: packed weights, scales, biases, norms, BatchNorm statistics."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def logical_weight_count(model: nn.Module) -> int:
    """Number of weights the model stands for (packed words expanded, padding excluded)."""
    total = 0
    for _, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if isinstance(m, QuantizedConv2d):
            total += m.out_channels * m.k + sum(v.size for k, v in tree_flatten(m.parameters())
                                                if k not in ("weight", "scales", "biases"))
        elif isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            total += m.weight.size * 32 // m.bits + sum(v.size for k, v in tree_flatten(m.parameters())
                                                        if k not in ("weight", "scales", "biases"))
        else:
            total += sum(v.size for _, v in tree_flatten(m.parameters()))
    return total


def bits_per_weight(model: nn.Module) -> float:
    """Stored bits per logical weight, scales and biases (and any padding) counted."""
    return 8 * size_bytes(model) / logical_weight_count(model)
