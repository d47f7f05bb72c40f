"""Per-layer sensitivity to quantization: the table the `mixed` method (core.quant.mixed) allocates from.

Each weight layer is quantized alone, the rest of the model staying in full precision, at each candidate bit
width; the loss against the full-precision model is measured on calibration data (never a test set): mean
KL(full || quantized) per image or token, and top-1 agreement. The model is loaded once: the layer is swapped
for its quantized-then-de-quantized twin (same numbers as the quantized kernels, at BLAS speed on the CPU) and
the original is put back. The forward pass is split into steps (stem, blocks, head) and each step's
full-precision input is kept, so a layer's effect is recomputed from its own block on: about half the work of
whole forward passes."""
from __future__ import annotations

import hashlib
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from core import runtime, settings
from core.cache import Memo, ResultCache, digest
from core.errors import LabError
from core.models import lm, registry, resnet
from core.quant.baseline import load_baseline
from core.quant.calibration import CalibrationData, calibration_inputs
from core.quant.layers import (dequantize_model, logical_weight_count, quantize_model, size_bytes, swap,
                               weight_layer_paths)
from core.quant.spec import AFFINE_BITS, QuantSpec

VERSION = 1  # bump when a change alters measured values, so old cache entries are not reused
BATCH = {"vision": 256, "lm": 4}
Progress = Callable[[float, str], None]


# ---- the forward pass in steps --------------------------------------------------------------------------------

Step = tuple[tuple[str, ...], Callable[[mx.array], mx.array]]  # (layer path prefixes it runs, function)


def forward_steps(model: nn.Module) -> list[Step]:
    """The forward pass as a chain of steps. Modules are looked up at call time, so swapped layers are used.
    Architectures not listed here are one step: correct, just whole forward passes per measurement."""
    if isinstance(model, resnet.CifarResNet):
        blocks = [((f"layer{s}.{i}",), lambda x, s=s, i=i: getattr(model, f"layer{s}")[i](x))
                  for s in (1, 2, 3) for i in range(len(getattr(model, f"layer{s}")))]
        return [(("conv1", "bn1"), lambda x: nn.relu(model.bn1(model.conv1(x)))), *blocks,
                (("linear",), lambda x: model.linear(x.mean(axis=(1, 2))))]
    inner = getattr(model, "model", None)
    if type(inner).__module__ == "mlx_lm.models.llama" and getattr(inner, "swa_idx", None) is None:
        def head(h):
            # Logits of the second half of each chunk only: positions with at least ctx/2 tokens of context, as
            # the perplexity protocol scores, and half of the vocabulary-wide work. A tied head is the
            # embedding's matrix; that path is in the first step, so it is measured through the whole chain.
            h = inner.norm(h[:, h.shape[1] // 2:])
            return lm.output_head(model)(h)

        layers = [((f"model.layers.{i}",), lambda h, i=i: inner.layers[i](h, "causal" if h.shape[1] > 1 else None))
                  for i in range(len(inner.layers))]
        return [(("model.embed_tokens",), lambda t: inner.embed_tokens(t)), *layers, (("model.norm", "lm_head"), head)]
    return [(("",), model)]


def _first_step(steps: list[Step], path: str) -> int:
    for i, (prefixes, _) in enumerate(steps):
        if any(p == "" or path == p or path.startswith(p + ".") for p in prefixes):
            return i
    raise LabError(f"Layer {path} is in no step of the forward pass.")


def _run(steps: list[Step], x: mx.array, start: int = 0) -> mx.array:
    for _, f in steps[start:]:
        x = f(x)
    return x


@mx.compile
def _kl_and_agreement(logits, ref_logits, ref_p, ref_top1):
    """Summed KL(reference || model) over rows, and the number of rows whose top-1 matches.

    Written in the logit difference d = logits - ref_logits, centred by its p-weighted mean m:
    KL = log(sum p e^(d - m)) - log(sum p), exact in float32 down to the 1e-7 KLs of 8-bit layers, where a
    difference of two log-probabilities (each ~10, rounded at 1e-6) is noise. log(sum p) is not 0 in float32
    over a 50k vocabulary (~4e-5), and is summed the same way, so identical logits give exactly 0. The shift c
    keeps exp finite; a destroyed layer's KL stays finite and large. One fused pass (compiled)."""
    d = logits.astype(mx.float32) - ref_logits
    mass = ref_p.sum(axis=-1, keepdims=True)
    e = d - (ref_p * d).sum(axis=-1, keepdims=True) / mass
    c = e.max(axis=-1, keepdims=True)
    kl = c + mx.log(mx.maximum((ref_p * mx.exp(e - c)).sum(axis=-1, keepdims=True), 1e-37)) - mx.log(mass)
    return kl.sum(), (logits.argmax(axis=-1) == ref_top1).sum()


# ---- measuring ----------------------------------------------------------------------------------------------------

def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's class and every array it holds: the cache's notion of 'this model', whatever it is
    called (the mixed method only has the loaded model), and a changed checkpoint is never mistaken for the old."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for path, v in tree_flatten(model.parameters()):
        c = mx.contiguous(v)
        mx.eval(c)
        h.update(f"{path}:{v.shape}:{v.dtype}".encode())
        h.update(memoryview(c))
    return h.hexdigest()[:32]


def checked_widths(bits_choices, group_size: int | None, calibration: CalibrationData) -> tuple[list[int], int]:
    """The widths in order and the group size, or a LabError in words (core.quant.sensitivity_config's
    SensitivityConfig.validated runs this; so does every measurement, the mixed method's included)."""
    widths = sorted(set(int(b) for b in bits_choices))
    if not widths:
        raise LabError("Pick at least one bit width to measure.", "bits")
    specs = [QuantSpec(b, group_size).validated() for b in widths]  # LabError names what is allowed
    if any(s.full_precision for s in specs):
        raise LabError(f"Sensitivity is measured for quantized widths only: {', '.join(map(str, AFFINE_BITS))}.",
                       "bits", max(widths))
    if calibration.size <= 0:
        raise LabError(f"The calibration size must be a positive number, not {calibration.size}.", "calib",
                       calibration.size)
    return widths, specs[0].group_size


def protocol(kind: str, calibration: CalibrationData, group_size: int) -> str:
    data = (f"CIFAR-10 train, {calibration.size} class-stratified images (seed {calibration.seed}); "
            "mean KL(full || quantized) per image and top-1 agreement" if kind == "vision" else
            f"WikiText-2 validation, {calibration.size} chunks of {calibration.ctx} tokens evenly spread, the second "
            "half of each scored; mean KL(full || quantized) per token and top-1 next-token agreement")
    return (f"{data}; one layer quantized at a time (min-max affine, group {group_size}, de-quantized weights), "
            f"the rest in full precision; {runtime.backend()}")


def _key(model_id: str, kind: str, bits: int, group_size: int, calibration: CalibrationData) -> str:
    env = runtime.describe()
    calib = ({"size": calibration.size, "seed": calibration.seed} if kind == "vision"
             else {"size": calibration.size, "ctx": calibration.ctx})
    return digest({"model": model_id, "bits": bits, "group_size": group_size, "calibration": calib,
                   "backend": env["backend"], "device": env["device"], "mlx": env["mlx"], "version": VERSION})


def sensitivity_table(model: nn.Module, tokenizer, kind: str, bits_choices, group_size: int | None,
                      calibration: CalibrationData, progress: Progress | None = None, use_cache: bool = True) -> list[dict]:
    """Rows (layer, bits, ...) for every quantizable layer of `model` (left unchanged) and width, in model order.

    Cached on disk one width at a time, so a table for (2, 3, 4, 8) and the mixed method's (4, 5, 6, 8) share
    the widths they have in common."""
    widths, group_size = checked_widths(bits_choices, group_size, calibration)
    cache = ResultCache(settings.sensitivity_dir())
    model_id = fingerprint(model)
    keys = {b: _key(model_id, kind, b, group_size, calibration) for b in widths}
    found = {b: cache.read(k) for b, k in keys.items()} if use_cache else {}
    missing = [b for b in widths if found.get(b) is None]
    if missing:
        computed = _measure(model, tokenizer, kind, missing, group_size, calibration, progress)
        for b in missing:
            found[b] = {"rows": computed[b]}
            cache.write(keys[b], found[b])
    return sorted((row for b in widths for row in found[b]["rows"]), key=lambda r: (r["index"], r["bits"]))


def _measure(model, tokenizer, kind, widths, group_size, calibration, progress) -> dict[int, list[dict]]:
    step = progress or (lambda fraction, message: None)
    step(0.0, "full-precision reference")
    inputs = calibration_inputs(kind, tokenizer, calibration)
    steps = forward_steps(model)
    traces = []  # per batch: each step's full-precision input; the reference logits, probabilities and top-1
    for start in range(0, inputs.shape[0], BATCH[kind]):
        x, kept = inputs[start:start + BATCH[kind]], []
        for _, f in steps:
            kept.append(x)
            x = f(x)
            mx.eval(x)
        ref = x.astype(mx.float32)
        traces.append((kept, ref, mx.softmax(ref, axis=-1), ref.argmax(axis=-1)))
        mx.eval(traces[-1][1:])

    paths = weight_layer_paths(model)
    leaves = dict(tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module))
    common = dict(group_size=group_size, model_weights=logical_weight_count(model),
                  protocol=protocol(kind, calibration, group_size), backend=runtime.backend())
    rows: dict[int, list[dict]] = {b: [] for b in widths}
    for i, path in enumerate(paths):
        original, first = leaves[path], _first_step(steps, path)
        for j, bits in enumerate(widths):
            step((i * len(widths) + j) / (len(paths) * len(widths)), f"{path} at {bits} bits")
            try:
                report = quantize_model(model, QuantSpec(bits, group_size), keep=set(paths) - {path})
                if not report.quantized:
                    break  # its input width does not divide by the group size: it stays in full precision
                stored = 8 * size_bytes(dict(tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module))[path])
                dequantize_model(model, original.weight.dtype)
                kl, agreement, n = _loss(steps, first, traces)
            finally:
                swap(model, path, original)
            rows[bits].append(dict(layer=path, index=i, bits=bits, weights=original.weight.size, stored_bits=stored,
                                   fp_bits=8 * size_bytes(original), kl=kl, agreement=agreement, n=n, **common))
    # Everything no row accounts for (norms, BatchNorm, layers that cannot be quantized), in stored bits.
    fixed = 8 * size_bytes(model) - sum(8 * size_bytes(leaves[p]) for p in {r["layer"] for r in rows[widths[0]]})
    for row in (r for b in widths for r in rows[b]):
        row["model_fixed_bits"] = fixed
    step(1.0, "done")
    return rows


def _loss(steps: list[Step], first: int, traces) -> tuple[float, float, int]:
    """Mean KL(reference || model) and top-1 agreement (%) over every image or token."""
    kl_sum = same = n = 0
    for kept, ref, ref_p, ref_top1 in traces:
        kl_total, agree = _kl_and_agreement(_run(steps, kept[first], first), ref, ref_p, ref_top1)
        mx.eval(kl_total, agree)
        kl_sum, same, n = kl_sum + kl_total.item(), same + agree.item(), n + ref_top1.size
    return kl_sum / n, 100.0 * same / n, n


_FINGERPRINTS = Memo("a named model's fingerprint, so its cached tables are found without reloading it")


def layer_sensitivity(model_name: str, bits_choices, group_size: int | None, calibration: CalibrationData,
                      progress: Progress | None = None, use_cache: bool = True) -> list[dict]:
    """The sensitivity table of a named model (registry name, mlx-lm folder or hub id) in float32."""
    info = registry.resolve(model_name)
    checked_widths(bits_choices, group_size, calibration)  # before a model is loaded
    model, tokenizer = load_baseline(info)
    _FINGERPRINTS.put(model_name, fingerprint(model))
    rows = sensitivity_table(model, tokenizer, info.kind, bits_choices, group_size, calibration, progress, use_cache)
    return [{"model": model_name, **row} for row in rows]


def cached_sensitivity(model_name: str, bits_choices, group_size: int | None,
                       calibration: CalibrationData) -> list[dict] | None:
    """The table when every width is cached, else None; never measures (the dashboard shows it at once)."""
    info = registry.resolve(model_name)
    widths, group_size = checked_widths(bits_choices, group_size, calibration)
    model_id = _FINGERPRINTS.get(model_name, lambda: fingerprint(load_baseline(info)[0]))
    cache = ResultCache(settings.sensitivity_dir())
    bodies = [cache.read(_key(model_id, info.kind, b, group_size, calibration)) for b in widths]
    if any(body is None for body in bodies):
        return None
    rows = sorted((row for body in bodies for row in body["rows"]), key=lambda r: (r["index"], r["bits"]))
    return [{"model": model_name, **row} for row in rows]


