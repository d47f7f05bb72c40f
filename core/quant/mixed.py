"""Mixed precision: one bit width per layer, chosen from the measured sensitivities (core.quant.sensitivity) to
lose least under a bits-per-weight budget.

The budget counts every stored bit as core.quant.layers.bits_per_weight does: the packed weights with their
padding, the 16-bit scales and biases, layers that stay in full precision, norms and BatchNorm statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.nn as nn
import numpy as np

from core.errors import LabError
from core.quant.awq import awq_lm
from core.quant.calibration import GptqSettings, MixedSettings, RtnSettings, calibration_tokens
from core.quant.gptq import gptq_lm
from core.quant.layers import QuantReport, quantize_model
from core.quant.sensitivity import Progress, sensitivity_table
from core.quant.spec import AFFINE_BITS, QuantSpec

UNITS = 20_000  # resolution of the budget's slack in the exact allocation


def mixed_choices(lowest: int) -> tuple[int, ...]:
    """The widths the `mixed` method chooses from: the spec's bit width up to 8."""
    return tuple(b for b in AFFINE_BITS if lowest <= b <= 8)


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
    """Bits per weight of the model quantized with `allocation`, as core.quant.layers.bits_per_weight counts them."""
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


@dataclass(frozen=True)
class Allocation:
    """A mixed-precision choice and what it amounts to, as the CLI and the Sensitivity page show it."""

    bits: dict[str, int]  # layer -> its width
    target_bpw: float
    predicted_bpw: float  # of the whole model quantized this way, every stored bit counted
    summed_kl: float  # the sum of the chosen layers' measured KLs (the quantity minimised)
    layers_per_width: dict[int, int]


def allocation_for(rows: list[dict], target_bpw: float, group_size: int | None = None) -> Allocation:
    """The allocation for `target_bpw` with its predicted bits per weight, summed KL and layers per width."""
    bits = allocate_bits(rows, target_bpw, group_size)
    kl = {(r["layer"], r["bits"]): float(r["kl"]) for r in rows}
    widths = sorted(set(bits.values()))
    return Allocation(bits, target_bpw, predicted_bpw(rows, bits, group_size), sum(kl[p, b] for p, b in bits.items()),
                      {b: sum(1 for v in bits.values() if v == b) for b in widths})


def keep_full_precision(rows: list[dict], paths) -> list[dict]:
    """The rows with each layer in `paths` reduced to one full-precision option (KL 0): it is kept, and its
    stored bits still count in the budget."""
    kept = {r["layer"]: r for r in rows if r["layer"] in paths}
    full = [{**r, "bits": 16, "stored_bits": r["fp_bits"], "kl": 0.0, "agreement": 100.0} for r in kept.values()]
    return [r for r in rows if r["layer"] not in kept] + full


def quantize_mixed(model: nn.Module, tokenizer, kind: str, spec: QuantSpec, keep: set[str],
                   settings: MixedSettings, progress: Progress | None = None) -> QuantReport:
    """The `mixed` method: measured sensitivities (cached) for spec.bits..8 on settings.data, the allocation under
    settings.target_bpw, then each layer quantized at its width by settings.layers (round to nearest, GPTQ or AWQ,
    with their own calibration data). Fills report.layer_bits."""
    if not settings.target_bpw:
        raise LabError("Method mixed needs a bits-per-weight budget (--target-bpw, e.g. 4.5).")
    step = progress or (lambda fraction, message: None)
    layers = settings.layers
    share = 1.0 if isinstance(layers, RtnSettings) else 0.5
    rows = sensitivity_table(model, tokenizer, kind, mixed_choices(spec.bits), spec.group_size, settings.data,
                             lambda f, m: step(share * f, m))
    allocation = allocate_bits(keep_full_precision(rows, keep), settings.target_bpw, spec.group_size)
    specs = {p: QuantSpec(b, spec.group_size if b < 16 else None, scale_dtype=spec.scale_dtype)
             for p, b in allocation.items()}
    packed = None
    if not isinstance(layers, RtnSettings):
        tokens = calibration_tokens(tokenizer, layers.data.size, layers.data.ctx)
        later = lambda f, m: step(0.5 + 0.5 * f, f"{layers.method}: {m}")  # noqa: E731
        if isinstance(layers, GptqSettings):
            packed = gptq_lm(model, spec, keep, tokens, later, specs=specs)
        else:
            awq_lm(model, spec, tokens, later, specs=specs)
    report = quantize_model(model, spec, keep, specs=specs, packed=packed)
    report.layer_bits = {p: allocation[p] for p in report.quantized}
    return report
