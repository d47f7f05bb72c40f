"""One vocabulary for every page: what a row's precision is, which interval a quality number carries, and what a
memory reading counts. Everything is read from the measured row itself; no Streamlit here."""
from __future__ import annotations

import re

from core.quant.spec import FULL_PRECISION_BITS

# Bits per stored weight of each dtype a full-precision model may compute in (core.runtime.DTYPES).
DTYPE_BITS = {"float32": 32, "bfloat16": 16, "float16": 16}
INTERVAL = {"top1_accuracy": "95 % Wilson interval", "perplexity": "± one standard error"}
METRIC_NAME = {"top1_accuracy": "top-1 accuracy", "perplexity": "perplexity"}


def is_full_precision(row: dict) -> bool:
    # `bits` 16 is the configuration's way of saying "not quantized" (--q-bits 16), never a stored width.
    return row["bits"] >= FULL_PRECISION_BITS


def full_precision_dtype(row: dict) -> str:
    """The dtype a full-precision row's model holds its weights in (float32 on a CPU, as its size says)."""
    return row.get("compute_dtype") or "float32"


def stored_bits(row: dict) -> float:
    """Where a row sits on a bit-width axis: its quantized width, or its dtype's width for full precision."""
    if not is_full_precision(row):
        return row["bits"]
    return DTYPE_BITS.get(full_precision_dtype(row), round(row.get("bits_per_weight") or 32))


def precision_label(row: dict) -> str:
    """'float32 (full precision)', '4-bit', 'mxfp4' or 'mixed, 3–8-bit': what the weights are, in words."""
    if is_full_precision(row):
        return f"{full_precision_dtype(row)} (full precision)"
    if row.get("mode", "affine") != "affine":
        return row["mode"]
    if row.get("method") == "mixed" or row.get("layer_bits"):
        return f"mixed, from {row['bits']}-bit"
    return f"{row['bits']}-bit"


def wilson_interval(row: dict) -> tuple[float, float] | None:
    """An accuracy row's 95 % Wilson interval (low, high), or None: every other row carries a standard error."""
    low, high = row.get("ci95_low"), row.get("ci95_high")
    if row.get("metric") == "top1_accuracy" and low is not None and high is not None:
        return low, high
    return None


def error_bounds(row: dict) -> tuple[float, float]:
    """(below, above) the value: the 95 % Wilson interval where the row has it (accuracy), else ± one standard
    error (perplexity), so a chart's error bars are the interval its caption names."""
    if wilson := wilson_interval(row):
        return row["value"] - wilson[0], wilson[1] - row["value"]
    se = row.get("stderr") or 0.0
    return se, se


def interval_of(metric: str) -> str:
    return INTERVAL.get(metric, "± one standard error")


def interval_text(row: dict) -> str:
    """The interval alone, named: '95 % Wilson 91.17–92.25' or '± 1.21 s.e.'."""
    if wilson := wilson_interval(row):
        return f"95 % Wilson {wilson[0]:.2f}–{wilson[1]:.2f}"
    return f"± {row['stderr']:.2f} s.e."


def quality_text(row: dict) -> str:
    """The quality number with its interval, named: '91.73 % (95 % Wilson 91.17–92.25)' or '25.14 (± 1.21 s.e.)'."""
    unit = " %" if row["metric"] == "top1_accuracy" else ""
    return f"{row['value']:.2f}{unit} ({interval_text(row)})"


def quality_header(metric: str) -> str:
    """A table column's name that says which interval its cells carry."""
    return {"top1_accuracy": "top-1 % [95 % Wilson]", "perplexity": "perplexity ± s.e."}.get(
        metric, f"{metric.replace('_', ' ')} ± s.e.")


def quality_cell(row: dict) -> str:
    """The cell under quality_header: '91.73 % [91.17, 92.25]' or '25.14 ± 1.21'."""
    if wilson := wilson_interval(row):
        return f"{row['value']:.2f} % [{wilson[0]:.2f}, {wilson[1]:.2f}]"
    return f"{row['value']:.2f}{' %' if row['metric'] == 'top1_accuracy' else ''} ± {row['stderr']:.2f}"


def intervals_note(metrics) -> str:
    """'Intervals: top-1 accuracy, 95 % Wilson interval; perplexity, ± one standard error.' for the metrics shown."""
    shown = [m for m in INTERVAL if m in set(metrics)]
    return "Intervals: " + "; ".join(f"{METRIC_NAME[m]}, {INTERVAL[m]}" for m in shown) + "." if shown else ""


def peak_memory_scope(row: dict) -> str:
    """What a row's peak MLX memory counts, from its benchmark protocol: the speed benchmark resets MLX's peak at
    its start, so the peak is every MLX array alive during it (the weights, data already loaded) plus the
    activations of its largest input, not the model's size."""
    protocol = row.get("bench_protocol") or ""
    if batch := re.search(r"throughput: batch (\d+)", protocol):
        return (f"the weights plus the activations of a batch of {batch[1]} images during the speed benchmark, and "
                "any other MLX array alive then, such as the loaded test images")
    if prompt := re.search(r"prefill (\d+) tokens", protocol):
        return (f"the weights plus the KV cache and activations of a {prompt[1]}-token prefill and the decode after "
                "it during the speed benchmark, and any other MLX array alive then")
    return "every MLX array alive during the speed benchmark: weights and activations"
