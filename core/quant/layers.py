"""Whole models: their weight layers replaced by quantized ones (and back), and what they then hold.

`quantize_model` converts Linear, Embedding and Conv2d layers in place and reports every layer it left alone;
`dequantize_model` turns them back into float layers holding exactly the de-quantized weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

from core.quant.conv import QuantizedConv2d
from core.quant.kernels import AdaptiveQuantizedLinear, RowAdaptive
from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.spec import QuantSpec


@dataclass
class QuantReport:
    """What quantize_model did to each weight layer, so nothing is skipped silently."""

    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # path -> why it stayed in full precision
    padded: dict[str, str] = field(default_factory=dict)  # path -> 'K -> K_padded'
    layer_bits: dict[str, int] = field(default_factory=dict)  # mixed precision: path -> the width it got
    distillation: list = field(default_factory=list)  # DWQ: its held-out KL curve (core.quant.dwq.DwqPoint)

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


def module_at(root: nn.Module, path: str):
    """The module at dotted `path` inside `root` (list items by number)."""
    for key in path.split("."):
        root = root[int(key)] if isinstance(root, list) else root[key]
    return root


def swap(root: nn.Module, path: str, new):
    """Put `new` at `path` inside `root`; returns what was there."""
    old = module_at(root, path)
    root.update_modules(tree_unflatten([(path, new)]))
    return old


def _quantized_linear(layer: nn.Linear, spec: QuantSpec, packed=None) -> nn.Module:
    out_dims, in_dims = layer.weight.shape
    q = AdaptiveQuantizedLinear(in_dims, out_dims, bias="bias" in layer, group_size=spec.group_size,
                                bits=spec.bits, mode=spec.mode)
    _set_quantized(q, layer.weight, spec, packed)
    if "bias" in layer:
        q.bias = layer.bias
    return q


class ExactQuantizedEmbedding(RowAdaptive, nn.QuantizedEmbedding):
    """MLX's QuantizedEmbedding returns rows in the scales' dtype, which would silently turn a float32 model's
    activations into float16 (slow on CPU, and not the model we measure). This one de-quantizes in float32,
    exactly as `dequantize_matrix`, and returns rows in its compute dtype: the dtype of `dtype_probe`, an empty
    array, so that `model.set_dtype` (which casts arrays, never plain attributes) moves it with the rest of the
    model. Export writes MLX's own layer (`plain()`), which holds the same arrays."""

    def __init__(self, *args, compute_dtype=mx.float32, **kwargs):
        super().__init__(*args, **kwargs)
        self.dtype_probe = mx.zeros((0,), compute_dtype)

    @property
    def compute_dtype(self) -> mx.Dtype:
        return self.dtype_probe.dtype

    def __call__(self, x: mx.array) -> mx.array:
        return dequantize_matrix(self.weight[x], self.scales[x], self.get("biases")[x] if "biases" in self else None,
                                 spec_of(self), self.compute_dtype)

    def as_linear(self, x: mx.array) -> mx.array:  # a tied output layer
        return self.rows_matmul(x)

    def plain(self) -> nn.QuantizedEmbedding:
        """MLX's layer over the same arrays, for files other tools load."""
        layer = nn.QuantizedEmbedding(self.num_embeddings, self.dims, group_size=self.group_size, bits=self.bits,
                                      mode=self.mode)
        layer.update({k: v for k, v in self.parameters().items() if k != "dtype_probe"})
        return layer


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
                   specs: dict[str, QuantSpec] | None = None, packed: dict[str, tuple] | None = None,
                   within: str | None = None) -> QuantReport:
    """Replace the model's Linear, Embedding and Conv2d layers by quantized ones, in place.

    `keep` lists layer paths to leave in full precision. `specs` gives some layers another spec than `spec`
    (mixed precision; a full-precision spec keeps the layer). `packed` gives some layers their packed
    (weight, scales, biases) already, as calibrated methods choose them (GPTQ); the rest are rounded to nearest.
    Linear and Embedding layers whose input width does not divide by the group size stay in full precision and
    are reported; convolutions are zero-padded. With `within` (a path), only the layers under it are converted
    (a model quantized one piece at a time, core.quant.streamed)."""
    spec = spec.validated()
    specs = {path: s.validated() for path, s in (specs or {}).items()}
    packed = packed or {}
    report = QuantReport()
    if spec.full_precision and not specs:
        return report

    def convert(path: str, module: nn.Module) -> nn.Module:
        if not isinstance(module, WEIGHT_LAYERS) or (within and path != within and not path.startswith(within + ".")):
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


def dequantized_layer(m: nn.Module, dtype=mx.float32) -> nn.Module:
    """A float layer holding exactly the de-quantized weights of quantized layer `m`; any other module as it is."""
    if isinstance(m, QuantizedConv2d):
        return m.to_float(dtype)
    if not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return m
    w = dequantize_matrix(m.weight, m.scales, m.get("biases"), spec_of(m), dtype)
    if isinstance(m, nn.QuantizedEmbedding):
        f = nn.Embedding(*w.shape)
    else:
        f = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
        if "bias" in m:
            f.bias = m.bias.astype(dtype)
    f.weight = w
    return f


def dequantize_model(model: nn.Module, dtype=mx.float32) -> nn.Module:
    """Replace every quantized layer by a float layer holding exactly the de-quantized weights, in place.

    Quality numbers computed this way equal the quantized kernels' (tests/quant/test_quantize.py checks it) and
    run at full BLAS speed on the Linux CPU, where MLX's quantized matmuls have no BLAS path."""
    model.update_modules(tree_map_with_path(lambda _p, m: dequantized_layer(m, dtype), model.leaf_modules(),
                                            is_leaf=nn.Module.is_module))
    mx.eval(model.parameters())
    return model


def float_copy(module: nn.Module, dtype=mx.float32) -> nn.Module:
    """`module` (a layer or a container of layers) with every quantized layer de-quantized and every float array
    cast to `dtype`, evaluated; a container is changed in place, a quantized leaf is replaced by a new layer."""
    module = dequantized_layer(module, dtype) if not module.children() else dequantize_model(module, dtype)
    module.set_dtype(dtype)
    mx.eval(module.parameters())
    return module


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
