"""Measured rows as people read them: each result beside its full-precision baseline (dashboard), a run as text
(CLI), a sensitivity table and its mixed-precision allocation as text (CLI); no Streamlit here."""
from __future__ import annotations

from core.report import labels
from core.report.tables import MEANING, Column


# Comparison-table columns a person rarely needs first: the page puts them under "Details".
COMPARISON_DETAILS = ("agreement / KL", "throughput", "peak MLX memory", "compute dtype", "n", "source")
_COMPARISON_LABELS = {"Δ vs full precision": "Δ vs fp"}  # short enough for the table to fit a 1280-px window
_COMPARISON_HELP = {
    "configuration": "model and quantization: fp = full precision, q4g64 = 4-bit integers in groups of 64 weights",
    "precision": "what the weights are: full precision in its dtype, or the quantized width",
    "Δ vs full precision": "this row's quality minus the full-precision (fp) row's on the same data",
    "agreement / KL": "top-1 agreement with full precision (images), or mean KL(full ‖ quantized) per token",
    **MEANING,
}


def comparison_columns(keys) -> dict:
    """core.report.tables.Column specs for the comparison table's columns `keys`: their help texts."""
    return {k: Column(_COMPARISON_LABELS.get(k, k), help=_COMPARISON_HELP.get(k)) for k in keys}


def _fmt(value, digits=2, suffix=""):
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


def _signed(value, suffix: str) -> str:
    """A difference with its sign always written (+0.42, -1.30) and its unit."""
    return "—" if value is None else f"{value:+,.2f}{suffix}"


def comparison_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """(table rows, notes): each configuration with its delta against the full-precision row of the same model."""
    baselines = {r["model"]: r for r in rows if labels.is_full_precision(r)}
    table = [_comparison_row(r, baselines.get(r["model"])) for r in rows]
    return table, _comparison_notes(rows)


def _comparison_row(r: dict, base: dict | None) -> dict:
    percent = r["metric"] == "top1_accuracy"
    delta = None if base is None or r is base else r["value"] - base["value"]
    return {
        "configuration": f"{r['model']} {r['tag']}",
        "precision": labels.precision_label(r),
        labels.quality_header(r["metric"]): labels.quality_cell(r),
        "Δ vs full precision": "baseline" if r is base else _signed(delta, " pts" if percent else " perplexity"),
        "agreement / KL": (_fmt(r.get("agreement"), 2, " %") if percent else _fmt(r.get("kl_mean"), 4, " nats")),
        "size": f"{r['size_bytes'] / 1e6:,.2f} MB",
        "bits/weight": f"{r['bits_per_weight']:.2f}",
        "latency p50": _fmt(r.get("latency_ms_p50"), 2, " ms") + (
            f" (p90 {r['latency_ms_p90']:,.2f})" if r.get("latency_ms_p90") is not None else ""),
        "throughput": _fmt(r.get("throughput"), 1, f" {r.get('throughput_unit', '')}"),
        "peak MLX memory": ("—" if r.get("peak_memory_bytes") is None
                            else f"{r['peak_memory_bytes'] / 1e6:,.0f} MB"),
        "compute dtype": r.get("compute_dtype") or "—",
        "n": r["n"],
        "source": "cache" if r.get("cached") else f"computed in {r.get('eval_seconds', 0):.1f} s",
    }


def _comparison_notes(rows: list[dict]) -> list[str]:
    notes = []
    for r in rows:
        if r.get("layers_kept"):
            notes.append(f"{r['model']} {r['tag']}: kept in full precision: " +
                         ", ".join(f"{k} ({v})" for k, v in r["layers_kept"].items()))
        if r.get("layers_padded"):
            notes.append(f"{r['model']} {r['tag']}: {len(r['layers_padded'])} convolutions zero-padded to the group "
                         "size (counted in the size)")
        if r.get("layer_bits"):
            widths = sorted(set(r["layer_bits"].values()))
            notes.append(f"{r['model']} {r['tag']}: mixed precision, " + ", ".join(
                f"{sum(v == b for v in r['layer_bits'].values())} layers at {b} bits" for b in widths))
    notes += [f"Protocol: {p}" for p in sorted({r["protocol"] for r in rows})]
    notes.append(labels.intervals_note(r["metric"] for r in rows))
    notes += sorted({f"Speed: {r['bench_protocol']} ({r['backend']}, {r.get('environment', {}).get('device', '')})"
                     for r in rows if r.get("bench_protocol")})
    notes += sorted({f"Peak MLX memory counts {labels.peak_memory_scope(r)}; the model's own bytes are its size."
                     for r in rows if r.get("peak_memory_bytes") is not None})
    full = [r for r in rows if labels.is_full_precision(r)]
    if full:
        notes.append(f"Full precision means: {full[0]['baseline']}; deployed in {labels.full_precision_dtype(full[0])}, "
                     f"{full[0]['bits_per_weight']:.2f} bits per weight as stored.")
    return notes


def result_text(r) -> str:
    """One EvalResult as the CLI prints it."""
    unit = "%" if r.metric == "top1_accuracy" else ""
    interval = (f", 95 % Wilson interval {r.ci95_low:.2f}–{r.ci95_high:.2f}{unit}" if r.ci95_low is not None else "")
    lines = [f"{r.model} {r.tag} ({r.method}, {r.backend}): {r.metric} = {r.value:.4f}{unit} ± {r.stderr:.4f} "
             f"(standard error{interval}; n={r.n})",
             f"  protocol: {r.protocol}",
             f"  deployed in {r.compute_dtype} (size, speed, memory); quality computed in {r.quality_dtype}",
             f"  size: {r.size_bytes / 1e6:.2f} MB, {r.bits_per_weight:.3f} bits/weight"]
    if r.reference_value is not None:
        lines.append(f"  full precision on the same data: {r.reference_value:.4f}{unit}")
    if r.agreement is not None:
        lines.append(f"  top-1 agreement with full precision: {r.agreement:.2f} %")
    if r.kl_mean is not None:
        lines.append(f"  KL(full || quantized): {r.kl_mean:.5f} ± {r.kl_stderr:.5f} nats/token")
    if r.latency_ms_p50 is not None:
        lines.append(f"  latency p50 {r.latency_ms_p50:.2f} ms, p90 {r.latency_ms_p90:.2f} ms; "
                     f"{r.throughput:.1f} {r.throughput_unit}; peak MLX memory {r.peak_memory_bytes / 1e6:.1f} MB, "
                     f"counting {labels.peak_memory_scope({'bench_protocol': r.bench_protocol})}")
    if r.layers_kept:
        lines.append(f"  kept in full precision: {r.layers_kept}")
    if r.layers_padded:
        lines.append(f"  padded to the group size: {r.layers_padded}")
    if r.layer_bits:
        counts = {b: sum(1 for v in r.layer_bits.values() if v == b) for b in sorted(set(r.layer_bits.values()))}
        lines.append("  mixed precision, layers per width: " + ", ".join(f"{n} at {b} bits" for b, n in counts.items()))
    if r.distillation:
        first, best = r.distillation[0], min(r.distillation, key=lambda p: p["held_out_kl"])
        lines.append(f"  distilled {r.distillation[-1]['step']} steps in {r.distillation[-1]['seconds']:.0f} s: held-out KL "
                     f"{first['held_out_kl']:.4f} -> {best['held_out_kl']:.4f} (kept: step {best['step']}); curve "
                     + ", ".join(f"{p['step']}: {p['held_out_kl']:.4f}" for p in r.distillation))
    lines.append(f"  {'from cache' if r.cached else f'computed in {r.eval_seconds:.1f} s'}")
    return "\n".join(lines)


def sensitivity_text(model: str, rows: list[dict], allocation=None) -> str:
    """The per-layer table (KL and agreement at each width) as the CLI prints it; with a
    core.quant.mixed.Allocation, each layer's chosen width and the allocation's totals."""
    widths = sorted({r["bits"] for r in rows})
    by_layer: dict[str, dict] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], {})[r["bits"]] = r
    lines = [f"{model}: each layer quantized alone, group {rows[0]['group_size']}\n  protocol: {rows[0]['protocol']}",
             f"{'layer':36} {'weights':>9} " + " ".join(f"{f'KL@{b}':>9}" for b in widths) + "  "
             + " ".join(f"{f'agree@{b}':>8}" for b in widths) + ("  chosen" if allocation else "")]
    for layer, cells in by_layer.items():
        lines.append(f"{layer:36} {next(iter(cells.values()))['weights']:>9} "
                     + " ".join(f"{cells[b]['kl']:>9.2e}" for b in widths) + "  "
                     + " ".join(f"{cells[b]['agreement']:>8.2f}" for b in widths)
                     + (f"  {allocation.bits[layer]}" if allocation else ""))
    if allocation:
        lines.append(f"allocation for {allocation.target_bpw:g} bits/weight: predicted {allocation.predicted_bpw:.3f} "
                     f"bits/weight, summed KL {allocation.summed_kl:.4g}")
    return "\n".join(lines)


def allocation_text(allocation) -> str:
    """A core.quant.mixed.Allocation in one sentence, as the Sensitivity page captions its chart."""
    return (f"Ringed: the mixed-precision choice for {allocation.target_bpw:g} bits/weight — predicted "
            f"{allocation.predicted_bpw:.3f} bits/weight (every stored bit counted, as the quantized model holds it), "
            f"summed KL {allocation.summed_kl:.4g}; layers per width: "
            + ", ".join(f"{b}-bit: {n}" for b, n in allocation.layers_per_width.items()) + ".")
