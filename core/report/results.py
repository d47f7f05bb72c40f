"""The table of measured result rows (cache/results or any folder of them), for the CLI, dashboard and docs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from core import settings
from core.cache import ResultCache
from core.report.labels import precision_label

# Columns a person reads first; every other field follows.
LEAD_COLUMNS = ("model", "tag", "method", "bits", "group_size", "mode", "metric", "value", "stderr", "n",
                "reference_value", "agreement", "kl_mean", "size_bytes", "bits_per_weight", "latency_ms_p50",
                "throughput", "throughput_unit", "peak_memory_bytes", "backend", "compute_dtype", "quality_dtype",
                "protocol")


def load_rows(directory: Path) -> list[dict]:
    """Every valid result row in the folder, newest first, without the per-image predictions."""
    rows = []
    for key, body in ResultCache(directory).items():
        body = dict(body, key=key)
        body.pop("predictions", None)
        body["device"] = body.get("environment", {}).get("device")
        rows.append(body)
    return sorted(rows, key=lambda r: r.get("created", ""), reverse=True)


def write_csv(rows: list[dict], out: Path, columns: list[str] | None = None) -> Path:
    """The rows as CSV: `columns` in that order, or the lead columns then every other field sorted."""
    columns = columns or list(LEAD_COLUMNS) + sorted({k for r in rows for k in r} - set(LEAD_COLUMNS))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return out


def all_result_rows() -> list[dict]:
    """Every cached result row (MLXQ_RESULTS), newest first."""
    return load_rows(settings.results_dir())


def results_signature() -> tuple:
    """Changes whenever a result row is written or removed: a cheap cache key for the rows."""
    directory = settings.results_dir()
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    return str(directory), len(files), max((f.stat().st_mtime_ns for f in files), default=0)


def lead_columns(rows: list[dict]) -> list[dict]:
    """Result rows with only the columns a person reads first, and the precision in words beside `bits` (whose 16
    is the configuration's "not quantized", not a stored width: see `bits_per_weight`)."""
    out = []
    for r in rows:
        lead = {k: r.get(k) for k in LEAD_COLUMNS + ("device", "created")}
        out.append({**{k: lead.pop(k) for k in LEAD_COLUMNS[:LEAD_COLUMNS.index("bits") + 1]},
                    "precision": precision_label(r), **lead})
    return out
