"""Per-layer sensitivity to quantization, and mixed precision chosen from it (the `mixed` method).

Each weight layer is quantized alone, the rest of the model staying in full precision, at each candidate bit
width; the loss against the full-precision model is measured on calibration data (never a test set): mean
KL(full || quantized) per image or token, and top-1 agreement. The model is loaded once: the layer is swapped
for its quantized-then-de-quantized twin (same numbers as the quantized kernels, at BLAS speed on the CPU) and
the original is put back. The forward pass is split into steps (stem, blocks, head) and each step's
full-precision input is kept, so a layer's effect is recomputed from its own block on: about half the work of
whole forward passes.

`allocate_bits` then picks one measured width per layer minimising the summed KL under a bits-per-weight
budget, counting every stored bit as core.quantize.bits_per_weight does: the packed weights with their padding,
the 16-bit scales and biases, layers that stay in full precision, norms and BatchNorm statistics."""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from core import models, resnet, runtime
from core.cache import ResultCache, digest
from core.errors import LabError
from core.methods import Calibration, calibration_images, calibration_tokens
from core.quantize import (AFFINE_BITS, QuantReport, QuantSpec, dequantize_model, logical_weight_count,
                           quantize_model, size_bytes, weight_layer_paths)

VERSION = 1  # bump when a change alters measured values, so old cache entries are not reused
# Affordable on a 2-core CPU: resnet20-mlxq, 256 images, 4 widths: 78 s; SmolLM2, 2 chunks of 512 tokens:
# 1,105 s per width (211 layers, measured with other work running). A GPU run should use more.
DEFAULT_CALIBRATION = {"vision": 256, "lm": 2}  # images, or chunks of `ctx` tokens
BATCH = {"vision": 256, "lm": 4}
Progress = Callable[[float, str], None]


def cache_dir() -> Path:
    return Path(os.environ.get("MLXQ_SENSITIVITY", models.cache_root() / "sensitivity"))


def mixed_choices(lowest: int) -> tuple[int, ...]:
    """The widths the `mixed` method chooses from: the spec's bit width up to 8."""
    return tuple(b for b in AFFINE_BITS if lowest <= b <= 8)


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
            return (model.lm_head if "lm_head" in model else inner.embed_tokens.as_linear)(h)

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


def _validated(bits_choices, group_size: int | None, calibration: Calibration) -> tuple[list[int], int]:
    widths = sorted(set(int(b) for b in bits_choices))
    if not widths:
        raise LabError("Pick at least one bit width to measure.")
    specs = [QuantSpec(b, group_size).validated() for b in widths]  # LabError names what is allowed
    if any(s.full_precision for s in specs):
        raise LabError(f"Sensitivity is measured for quantized widths only: {', '.join(map(str, AFFINE_BITS))}.")
    if calibration.size <= 0:
        raise LabError(f"The calibration size must be a positive number, not {calibration.size}.")
    return widths, specs[0].group_size


def protocol(kind: str, calibration: Calibration, group_size: int) -> str:
    data = (f"CIFAR-10 train, {calibration.size} class-stratified images (seed {calibration.seed}); "
            "mean KL(full || quantized) per image and top-1 agreement" if kind == "vision" else
            f"WikiText-2 validation, {calibration.size} chunks of {calibration.ctx} tokens evenly spread, the second "
            "half of each scored; mean KL(full || quantized) per token and top-1 next-token agreement")
    return (f"{data}; one layer quantized at a time (min-max affine, group {group_size}, de-quantized weights), "
            f"the rest in full precision; {runtime.backend()}")


def _key(model_id: str, kind: str, bits: int, group_size: int, calibration: Calibration) -> str:
    env = runtime.describe()
    calib = ({"size": calibration.size, "seed": calibration.seed} if kind == "vision"
             else {"size": calibration.size, "ctx": calibration.ctx})
    return digest({"model": model_id, "bits": bits, "group_size": group_size, "calibration": calib,
                   "backend": env["backend"], "device": env["device"], "mlx": env["mlx"], "version": VERSION})


def sensitivity_table(model: nn.Module, tokenizer, kind: str, bits_choices, group_size: int | None,
                      calibration: Calibration, progress: Progress | None = None, use_cache: bool = True) -> list[dict]:
    """Rows (layer, bits, ...) for every quantizable layer of `model` (left unchanged) and width, in model order.

    Cached on disk one width at a time, so a table for (2, 3, 4, 8) and the mixed method's (4, 5, 6, 8) share
    the widths they have in common."""
    widths, group_size = _validated(bits_choices, group_size, calibration)
    cache = ResultCache(cache_dir())
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


def _calibration_inputs(kind: str, tokenizer, calibration: Calibration) -> mx.array:
    if kind == "vision":
        return calibration_images(calibration.size, calibration.seed)
    return calibration_tokens(tokenizer, calibration.size, calibration.ctx)


def _measure(model, tokenizer, kind, widths, group_size, calibration, progress) -> dict[int, list[dict]]:
    step = progress or (lambda fraction, message: None)
    step(0.0, "full-precision reference")
    inputs = _calibration_inputs(kind, tokenizer, calibration)
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
                model.update_modules(tree_unflatten([(path, original)]))
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


_FINGERPRINTS: dict[str, str] = {}  # registry name -> fingerprint, so cached tables are found without reloading


def layer_sensitivity(model_name: str, bits_choices, group_size: int | None, calibration: Calibration,
                      progress: Progress | None = None, use_cache: bool = True) -> list[dict]:
    """The sensitivity table of a named model (registry name, mlx-lm folder or hub id) in float32."""
    info = models.resolve(model_name)
    _validated(bits_choices, group_size, calibration)  # before a model is loaded
    model, tokenizer = models.load(info)
    _FINGERPRINTS[model_name] = fingerprint(model)
    rows = sensitivity_table(model, tokenizer, info.kind, bits_choices, group_size, calibration, progress, use_cache)
    return [{"model": model_name, **row} for row in rows]


def cached_sensitivity(model_name: str, bits_choices, group_size: int | None,
                       calibration: Calibration) -> list[dict] | None:
    """The table when every width is cached, else None; never measures (the dashboard shows it at once)."""
    info = models.resolve(model_name)
    widths, group_size = _validated(bits_choices, group_size, calibration)
    if model_name not in _FINGERPRINTS:
        _FINGERPRINTS[model_name] = fingerprint(models.load(info)[0])
    cache = ResultCache(cache_dir())
    bodies = [cache.read(_key(_FINGERPRINTS[model_name], info.kind, b, group_size, calibration)) for b in widths]
    if any(body is None for body in bodies):
        return None
    rows = sorted((row for body in bodies for row in body["rows"]), key=lambda r: (r["index"], r["bits"]))
    return [{"model": model_name, **row} for row in rows]


# ---- mixed precision ----------------------------------------------------------------------------------------------

UNITS = 20_000  # resolution of the budget's slack in the exact allocation


def _cost(row: dict, group_size: int | None) -> float:
    """Stored bits of a layer at this row's width: measured when the row has it, else weights x (bits + 32/group)
    (affine, 16-bit scale and bias per group), or 32 per weight in full precision."""
    if row.get("stored_bits") is not None:
        return float(row["stored_bits"])
    if row["bits"] >= 16:
        return 32.0 * row["weights"]
    return row["weights"] * (row["bits"] + 32 / (row.get("group_size") or group_size))


def _options(rows: list[dict], group_size: int | None) -> dict[str, list[tuple[int, float, float]]]:
    """layer -> [(bits, stored bits, KL)], cheapest first, in model order."""
    by_layer: dict[str, list] = {}
    for r in rows:
        if r["bits"] < 16 and group_size is not None and r.get("group_size", group_size) != group_size:
            continue
        by_layer.setdefault(r["layer"], []).append((r["bits"], _cost(r, group_size), float(r["kl"])))
    if not by_layer:
        raise LabError("No sensitivity rows to allocate bit widths from.")
    return {p: sorted(opts, key=lambda o: (o[1], o[0])) for p, opts in by_layer.items()}


def _totals(rows: list[dict]) -> tuple[float, float]:
    """(logical weights of the whole model, stored bits outside the rows' layers); hand-made rows without them
    stand for a model made of exactly their layers."""
    weights = rows[0].get("model_weights") or sum({r["layer"]: r["weights"] for r in rows}.values())
    return float(weights), float(rows[0].get("model_fixed_bits", 0))


def predicted_bpw(rows: list[dict], allocation: dict[str, int], group_size: int | None = None) -> float:
    """Bits per weight of the model quantized with `allocation`, as core.quantize.bits_per_weight counts them."""
    options = _options(rows, group_size)
    weights, fixed = _totals(rows)
    chosen = {p: next((c for b, c, _ in opts if b == allocation[p]), None) for p, opts in options.items()}
    if None in chosen.values():
        raise LabError("The allocation gives a layer a width that was not measured.")
    return (fixed + sum(chosen.values())) / weights


def allocate_bits(rows: list[dict], target_bpw: float, group_size: int | None = None) -> dict[str, int]:
    """One measured width per layer minimising the summed KL with the model's bits per weight <= target_bpw.

    Exact multiple-choice knapsack by dynamic programming over the budget left above the cheapest widths
    (the slack), in UNITS steps; each option's extra cost is rounded up to whole steps, so the real total never
    exceeds the budget, and the optimum is missed only by what a 1/UNITS-per-layer rounding can cost."""
    options = _options(rows, group_size)
    weights, fixed = _totals(rows)
    layers = list(options)
    floor = sum(opts[0][1] for opts in options.values())
    slack = target_bpw * weights - fixed - floor
    if slack < 0:
        lowest = ", ".join(sorted({str(o[0][0]) for o in options.values()}))
        raise LabError(f"A budget of {target_bpw:g} bits per weight is below the {(fixed + floor) / weights:.3f} "
                       f"this model needs at its lowest measured width ({lowest} bits); raise the target.")
    units = [[0 if c == opts[0][1] else (math.ceil((c - opts[0][1]) * UNITS / slack) if slack > 0 else UNITS + 1)
              for _, c, _ in opts] for opts in options.values()]
    best = np.full(UNITS + 1, np.inf)  # best[c]: least summed KL of the layers so far using exactly c steps
    best[0] = 0.0
    picks = np.zeros((len(layers), UNITS + 1), np.int8)
    for i, opts in enumerate(options.values()):
        new = np.full(UNITS + 1, np.inf)
        for j, ((_, _, kl), u) in enumerate(zip(opts, units[i])):
            if u > UNITS:
                continue
            candidate = np.full(UNITS + 1, np.inf)
            candidate[u:] = best[: UNITS + 1 - u] + kl
            better = candidate < new  # ties keep the cheaper option (options are cheapest first)
            new[better], picks[i, better] = candidate[better], j
        best = new
    c, chosen = int(np.argmin(best)), {}  # argmin: the cheapest of equally good totals
    for i in reversed(range(len(layers))):
        j = int(picks[i, c])
        chosen[layers[i]] = options[layers[i]][j][0]
        c -= units[i][j]
    return {p: chosen[p] for p in layers}


def keep_full_precision(rows: list[dict], paths) -> list[dict]:
    """The rows with each layer in `paths` reduced to one full-precision option (KL 0): it is kept, and its
    stored bits still count in the budget."""
    kept = {r["layer"]: r for r in rows if r["layer"] in paths}
    full = [{**r, "bits": 16, "stored_bits": r["fp_bits"], "kl": 0.0, "agreement": 100.0} for r in kept.values()]
    return [r for r in rows if r["layer"] not in kept] + full


def quantize_mixed(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, keep: set[str],
                   calibration: Calibration, progress: Progress | None = None) -> QuantReport:
    """The `mixed` method: measured sensitivities (cached) for spec.bits..8, the allocation under
    calibration.target_bpw, then one quantize_model call with a spec per layer. Fills report.layer_bits."""
    if not calibration.target_bpw:
        raise LabError("Method mixed needs a bits-per-weight budget (--target-bpw, e.g. 4.5).")
    rows = sensitivity_table(model, tokenizer, kind, mixed_choices(spec.bits), spec.group_size, calibration, progress)
    allocation = allocate_bits(keep_full_precision(rows, keep), calibration.target_bpw, spec.group_size)
    specs = {p: QuantSpec(b, spec.group_size if b < 16 else None) for p, b in allocation.items()}
    report = quantize_model(model, spec, keep, specs=specs)
    report.layer_bits = {p: allocation[p] for p in report.quantized}
    return report
