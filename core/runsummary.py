"""Result rows side by side with their full-precision baseline, as the dashboard and reports show them."""
from __future__ import annotations


def _fmt(value, digits=2, suffix=""):
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


def comparison_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """(table rows, notes): each configuration with its delta against the full-precision row of the same model."""
    baselines = {r["model"]: r for r in rows if r["bits"] >= 16}
    table, notes = [], []
    for r in rows:
        base = baselines.get(r["model"])
        percent = r["metric"] == "top1_accuracy"
        delta = None if base is None or r is base else r["value"] - base["value"]
        table.append({
            "configuration": f"{r['model']} {r['tag']}",
            r["metric"].replace("_", " "): f"{r['value']:.2f} ± {r['stderr']:.2f}" + (" %" if percent else ""),
            "Δ vs full precision": "baseline" if r is base else _fmt(delta, 2, " pts" if percent else ""),
            "agreement / KL": (_fmt(r.get("agreement"), 2, " %") if percent else _fmt(r.get("kl_mean"), 4, " nats")),
            "size": f"{r['size_bytes'] / 1e6:,.2f} MB",
            "bits/weight": f"{r['bits_per_weight']:.2f}",
            "latency p50": _fmt(r.get("latency_ms_p50"), 2, " ms"),
            "throughput": _fmt(r.get("throughput"), 1, f" {r.get('throughput_unit', '')}"),
            "peak MLX memory": "—" if r.get("peak_memory_bytes") is None else f"{r['peak_memory_bytes'] / 1e6:,.0f} MB",
            "n": r["n"],
            "source": "cache" if r.get("cached") else f"computed in {r.get('eval_seconds', 0):.1f} s",
        })
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
    protocols = sorted({r["protocol"] for r in rows})
    notes += [f"Protocol: {p}" for p in protocols]
    notes += sorted({f"Speed: {r['bench_protocol']} ({r['backend']}, {r.get('environment', {}).get('device', '')})"
                     for r in rows if r.get("bench_protocol")})
    if any(r["bits"] >= 16 for r in rows):
        notes.append(f"Full precision means: {next(r for r in rows if r['bits'] >= 16)['baseline']}.")
    return table, notes
