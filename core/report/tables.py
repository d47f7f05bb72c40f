"""Tables as the pages show them: readable columns with units, the columns most people need first and the rest
for a details view, and no column that is empty in every row. Each column comes with a spec (label, number
format, help) that the page turns into Streamlit's column config; no Streamlit here."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.report import labels


@dataclass(frozen=True)
class Column:
    label: str
    format: str | None = None  # printf-style for numbers; None: shown as text
    help: str | None = None
    wide: bool = False


# What each readout means, for every table that shows it (its help text).
MEANING = {
    "size": "bytes of every array the model holds (packed weights, scales, norms)",
    "bits/weight": "every stored bit (scales and biases included) per weight",
    "latency p50": "median over the benchmark's trials: one image at batch 1, or one decoded token",
    "latency p90": "the 90th percentile over the same trials: how far the slow ones went (a busy machine widens "
                   "the gap between p50 and p90)",
    "throughput": "images/s at the benchmark's batch, or decode tokens/s",
    "peak MLX memory": "highest MLX memory during the speed benchmark: the weights plus the activations of its "
                       "largest input (see the speed protocol), not the model's size",
}
RESULT_COLUMNS = {
    "model": Column("model"),
    "precision": Column("precision", help="what the weights are: full precision in its dtype, or the quantized "
                        "width and group size"),
    "quality": Column("quality [interval]", help="top-1 accuracy in % with its 95 % Wilson interval in brackets, "
                      "or perplexity ± one standard error (lower is better)"),
    "size_mb": Column("size", "%.2f MB", MEANING["size"]),
    "bits_per_weight": Column("bits/weight", "%.2f", MEANING["bits/weight"]),
    "latency_ms_p50": Column("latency p50", "%.2f ms", MEANING["latency p50"]),
    "latency_ms_p90": Column("p90", "%.2f ms", MEANING["latency p90"]),
    "peak_memory_mb": Column("peak MLX memory", "%.0f MB", MEANING["peak MLX memory"]),
}
# The rest, in two narrower tables (quality, speed); protocols are long texts, so each row names its protocol by a
# short reference and the texts are listed once below the tables.
QUALITY_DETAILS = {
    "model": Column("model"), "tag": Column("tag"), "method": Column("method"),
    "group_size": Column("group", "%d"), "metric": Column("metric"), "n": Column("n", "%d", "test images, or "
                                                                                 "scored tokens"),
    "reference_value": Column("full precision", "%.2f", "the full-precision model's value on the same data"),
    "agreement": Column("agreement", "%.2f %%", "top-1 agreement: share of images on which the top class equals "
                        "full precision's"),
    "kl_mean": Column("KL", "%.5f", "mean KL(full ‖ quantized) per scored token, nats"),
    "top5": Column("top-5", "%.2f %%"), "protocol_ref": Column("protocol", help="listed below the tables"),
}
SPEED_DETAILS = {
    "model": Column("model"), "tag": Column("tag"), "backend": Column("backend"), "device": Column("device"),
    "compute_dtype": Column("deployed in", help="the dtype the deployed model computed in; quality is always "
                            "computed in float32"),
    "throughput": Column("throughput", help=MEANING["throughput"]),
    "eval_path": Column("eval path"), "created": Column("measured at", help="UTC"),
    "bench_ref": Column("speed protocol", help="listed below the tables"),
}


def _precision(row: dict) -> str:
    label = labels.precision_label(row)
    grouped = row.get("group_size") and row.get("mode", "affine") == "affine" and not labels.is_full_precision(row)
    return f"{label}, g{row['group_size']}" if grouped else label


def _readable(row: dict) -> dict:
    peak = row.get("peak_memory_bytes")
    return {
        "model": row["model"], "precision": _precision(row), "quality": labels.quality_cell(row),
        "size_mb": row["size_bytes"] / 1e6, "bits_per_weight": row["bits_per_weight"],
        "latency_ms_p50": row.get("latency_ms_p50"), "latency_ms_p90": row.get("latency_ms_p90"),
        "peak_memory_mb": None if peak is None else peak / 1e6,
    }


def _references(rows: list[dict], field: str, prefix: str) -> dict[str, str]:
    """{text: 'P1'} for each distinct non-empty `field` among the rows, in order of first appearance."""
    texts = [t for t in dict.fromkeys(r.get(field) or "" for r in rows) if t]
    return {t: f"{prefix}{i + 1}" for i, t in enumerate(texts)}


def _details(row: dict, protocols: dict[str, str], benches: dict[str, str]) -> dict:
    out = {k: row.get(k) for k in {**QUALITY_DETAILS, **SPEED_DETAILS}}
    out["metric"] = labels.METRIC_NAME.get(row["metric"], row["metric"])
    out["throughput"] = (None if row.get("throughput") is None
                         else f"{row['throughput']:,.1f} {row.get('throughput_unit', '')}")
    out["protocol_ref"], out["bench_ref"] = protocols.get(row.get("protocol")), benches.get(row.get("bench_protocol"))
    out["created"] = (row.get("created") or "")[:16].replace("T", " ") or None  # to the minute, UTC
    return out


def without_empty_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` less every column with no value in any row ('' and [] and {} count as none)."""
    empty = [c for c in df.columns if df[c].map(lambda v: v is None or v == "" or v == [] or v == {}
                                                or (isinstance(v, float) and pd.isna(v))).all()]
    return df.drop(columns=empty)


def result_tables(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """(main, quality details, speed details, protocol legend) for the Overview: the readouts with units first,
    then per row what identifies and qualifies it, each protocol text once ('P1: CIFAR-10 test, ...'); empty
    columns dropped."""
    if not rows:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), []
    protocols, benches = _references(rows, "protocol", "P"), _references(rows, "bench_protocol", "S")
    main = pd.DataFrame([_readable(r) for r in rows], columns=list(RESULT_COLUMNS))
    details = pd.DataFrame([_details(r, protocols, benches) for r in rows])
    legend = [f"{ref}: {text}" for text, ref in {**protocols, **benches}.items()]
    return (without_empty_columns(main), without_empty_columns(details[list(QUALITY_DETAILS)]),
            without_empty_columns(details[list(SPEED_DETAILS)]), legend)


def sensitivity_table(rows: list[dict], allocation_bits: dict[str, int] | None = None
                      ) -> tuple[pd.DataFrame, dict[str, Column]]:
    """One row per layer (model order): its weights, KL and top-1 agreement at each width, and the mixed choice."""
    table = pd.DataFrame(rows).pivot_table(index=["index", "layer", "weights"], columns="bits",
                                           values=["kl", "agreement"]).sort_index()
    widths = sorted({b for _, b in table.columns})
    table.columns = [f"{v}_{b}" for v, b in table.columns]
    table = table.reset_index().drop(columns="index")
    columns = {"layer": Column("layer"), "weights": Column("weights", "%d")}
    columns |= {f"kl_{b}": Column(f"KL {b}-bit", "%.2e", f"KL(full ‖ {b}-bit layer), nats per item") for b in widths}
    columns |= {f"agreement_{b}": Column(f"agree {b}-bit", "%.1f %%", "top-1 agreement with full precision")
                for b in widths}
    if allocation_bits:
        table["mixed_choice"] = table["layer"].map(allocation_bits)
        columns["mixed_choice"] = Column("mixed choice", "%d-bit", "the width the mixed-precision allocation gives")
    return table[list(columns)], columns
