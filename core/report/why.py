"""Why a quantized model measured slower than full precision: one note per model and machine, next to the number.

The comparison is read from the measured rows (same model, backend, device and compute dtype); the explanation is
chosen by backend and model kind from the platform facts measured for docs/performance.md. No
numbers live in the text here: every figure a note shows comes from the rows. No Streamlit here."""
from __future__ import annotations

from core.report.labels import is_full_precision

# Repeated runs of one engine on one machine differ by up to about a tenth (docs/performance.md), so a quantized
# row less than this much slower than full precision is a tie, not a surprise to explain.
SLOWER_BY = 1.10
BACKEND_NAME = {"cpu": "a CPU", "metal": "Metal", "cuda": "CUDA", "gpu": "a GPU"}


def speed_notes(rows: list[dict]) -> list[str]:
    """One note for each (model, backend, device, compute dtype) whose quantized rows measured slower than its
    full-precision row: the measured comparison, then the reason for that backend."""
    notes = []
    for base, slower in _slower_groups(rows):
        notes.append(f"{_comparison(base, slower)} {reason(base['backend'], _kind(base), base.get('compute_dtype'))}")
    return notes


def _machine(row: dict) -> tuple:
    return row["model"], row["backend"], row.get("device"), row.get("compute_dtype")


def _slower_groups(rows: list[dict]) -> list[tuple[dict, list[tuple[dict, list[str]]]]]:
    """[(full-precision row, [(quantized row, what was slower), ...])], only where something was slower."""
    timed = [r for r in rows if r.get("latency_ms_p50") is not None]
    baselines: dict[tuple, dict] = {}
    for r in timed:
        if is_full_precision(r):
            baselines.setdefault(_machine(r), r)  # rows come newest first: the latest baseline
    groups: dict[tuple, list] = {}
    for r in timed:
        base = baselines.get(_machine(r))
        if base is None or is_full_precision(r):
            continue
        if what := _slower(r, base):
            groups.setdefault(_machine(r), []).append((r, what))
    return [(baselines[key], found) for key, found in groups.items()]


def _slower(row: dict, base: dict) -> list[str]:
    """The readings in which `row` measured slower than `base`, as phrases with the measured values."""
    kind = _kind(base)
    found = []
    if row["latency_ms_p50"] > SLOWER_BY * base["latency_ms_p50"]:
        per = "one image" if kind == "vision" else "per decoded token"
        found.append(f"{row['latency_ms_p50'] / base['latency_ms_p50']:.2f}x the latency "
                     f"({row['latency_ms_p50']:.2f} against {base['latency_ms_p50']:.2f} ms p50, {per})")
    if row.get("throughput") and base.get("throughput") and row["throughput"] * SLOWER_BY < base["throughput"]:
        found.append(f"{row['throughput'] / base['throughput']:.2f}x the throughput ({row['throughput']:,.1f} "
                     f"against {base['throughput']:,.1f} {row.get('throughput_unit') or ''})".rstrip())
    return found


def _comparison(base: dict, slower: list[tuple[dict, list[str]]]) -> str:
    where = f"{base['backend']}" + (f", {base['device']}" if base.get("device") else "")
    dtype = base.get("compute_dtype") or "float32"
    parts = "; ".join(f"{r['tag']} measured {' and '.join(what)}" for r, what in slower)
    return f"Slower than full precision ({base['model']} on {where}, computing in {dtype}): {parts}."


def _kind(row: dict) -> str:
    return row.get("kind") or ("vision" if row.get("metric") == "top1_accuracy" else "lm")


def reason(backend: str, kind: str, compute_dtype: str | None = None) -> str:
    """Why, for this backend and model kind (facts measured for docs/performance.md)."""
    where = BACKEND_NAME.get(backend, backend)
    if kind == "vision":
        fast_path = ("on a CPU nothing makes that work cheaper" if backend == "cpu" else
                     f"the quantized kernels that are the fast path on {where} serve matrix products, not convolutions")
        return ("Why: MLX has no quantized convolution, so the lab's quantized convolution de-quantizes its packed "
                "weight on every call and then runs MLX's float convolution: a quantized ResNet does the "
                f"full-precision work plus one de-quantization per layer, and {fast_path}. Quantization buys size "
                "here, not speed.")
    if backend == "cpu":
        return ("Why: on a CPU, MLX's quantized matmul has no SIMD or BLAS path, so one decoding sequence (one row "
                "per step) through the packed weights is slower than float32 through BLAS; prompts and batches of "
                "many rows are de-quantized and multiplied with BLAS instead (core/quant/kernels.py). On a CPU, "
                "quantization buys size and memory, not single-stream decode speed.")
    if compute_dtype == "float32":
        return (f"Why: on {where} MLX's quantized kernels are the fast path, but this run computed in float32, "
                "where the lab's 16-bit scales are promoted to float32 on every call; bfloat16 is the deployed "
                "setting there (Compute dtype).")
    return (f"Worth investigating: on {where} MLX's quantized kernels are the fast path (fewer bytes read per "
            "weight), so a quantized model should not decode slower. Repeat the run (other work on the device, or "
            "too few trials, moves these numbers) and compare with mlx-lm on the same weights "
            "(`./lab bench --sections decode`).")
