"""The lab against the ecosystem: the `frontier` bench rows (docs/bench/frontier/*.csv, every one measured) as one
table per protocol, the chart of KL or perplexity against bits per weight with one series per tool and the lab's
Pareto frontier over them, and the budget table that says at each bits-per-weight budget which tool loses least."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from core import settings

FRONTIER_DIR = settings.REPO_ROOT / "docs" / "bench" / "frontier"
TOOLS = ("lab", "mlx-lm", "llama.cpp")
COLOURS = {"lab": "#d62728", "mlx-lm": "#1f77b4", "llama.cpp": "#2ca02c"}
METRICS = {"kl": "KL(full precision ‖ quantized), nats per token", "ppl": "perplexity"}
BUDGETS = (3.5, 4.0, 4.5, 5.0, 6.5, 8.5)
# A recipe fits a budget up to this many bits over it: the same grid stores its norms in float32 in the lab and in
# float16 in mlx-lm (which loads a 16-bit checkpoint), a difference of a few thousandths of a bit.
TOLERANCE = 0.01


def frontier_frame(directory: Path = FRONTIER_DIR) -> pd.DataFrame:
    """One row per measured subject and protocol: tool, recipe, bpw, ppl, ppl_se, kl, kl_se, protocol (the windows
    and reference, without the backend), backend and the report it came from."""
    bpw: dict[tuple, float] = {}
    scores: dict[tuple, dict] = {}
    for path in sorted(Path(directory).glob("*.csv")) if Path(directory).is_dir() else []:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("section") != "frontier":
                    continue
                if row["variant"] == "bits/weight":
                    bpw[path.stem, row["subject"]] = float(row["value"])
                elif row["variant"] in ("perplexity", "KL"):
                    _add_score(scores, row, path.stem)
    rows = [dict(entry, bpw=bpw[key[:2]]) for key, entry in scores.items()
            if key[:2] in bpw and {"ppl", "kl"} <= set(entry)]
    df = pd.DataFrame(rows)
    return df.dropna(subset=["bpw", "ppl", "kl"]).reset_index(drop=True) if len(df) else df  # a NaN row failed


def _add_score(scores: dict, row: dict, source: str) -> None:
    """A perplexity or KL row ('± s.e.; protocol; backend' in its note) into its (report, subject, protocol) entry."""
    error, _, where = row["note"].partition("; ")
    protocol, _, backend = where.rpartition("; ")
    tool, _, recipe = row["subject"].partition(" ")
    entry = scores.setdefault((source, row["subject"], protocol),
                              {"tool": tool, "recipe": recipe, "source": source, "protocol": protocol,
                               "backend": backend})
    name = "ppl" if row["variant"] == "perplexity" else "kl"
    entry.update({name: float(row["value"]), f"{name}_se": float(error.strip("± ") or "nan")})


def pareto(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows no other row beats with fewer or equal bits per weight and a lower `metric`, sorted by bpw."""
    data = df.dropna(subset=["bpw", metric]).sort_values(["bpw", metric])
    keep, best = [], float("inf")
    for idx, row in data.iterrows():
        if row[metric] < best:
            keep.append(idx)
            best = row[metric]
    return data.loc[keep]


def ecosystem_chart(df: pd.DataFrame, metric: str = "kl") -> go.Figure:
    """`metric` against bits per weight, one series per tool (error bars ± one standard error), the lab's Pareto
    frontier drawn as a line; KL on a log axis."""
    fig = go.Figure()
    for tool in [t for t in TOOLS if t in set(df["tool"])]:
        part = df[df["tool"] == tool].sort_values("bpw")
        fig.add_trace(go.Scatter(
            x=part["bpw"], y=part[metric], mode="markers", name=tool, marker=dict(size=9, color=COLOURS[tool]),
            error_y=dict(type="data", array=part[f"{metric}_se"], visible=True), text=part["recipe"],
            hovertemplate="<b>%{text}</b><br>%{x:.3f} bits/weight<br>" + metric + " %{y:.4g}<extra>" + tool + "</extra>"))
    front = pareto(df[df["tool"] == "lab"], metric)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front["bpw"], y=front[metric], mode="lines", name="the lab's Pareto frontier",
                                 line=dict(color=COLOURS["lab"], dash="dot"), hoverinfo="skip"))
    fig.update_xaxes(title_text="bits per weight, as stored (scales and biases counted)")
    fig.update_yaxes(title_text=METRICS[metric], type="log" if metric == "kl" else "linear")
    fig.update_layout(title=f"Against the ecosystem: {METRICS[metric]} against bits per weight",
                      legend_title_text="", margin=dict(t=50, l=10, r=10, b=10))
    return fig


def budget_table(df: pd.DataFrame, budgets=BUDGETS, metric: str = "kl") -> pd.DataFrame:
    """Per budget, each tool's best recipe within it (lowest `metric` at bpw <= budget + TOLERANCE) and whether the
    lab's beats every other tool's."""
    out = []
    for budget in budgets:
        line = {"budget (bits/weight)": budget}
        best = {}
        for tool in [t for t in TOOLS if t in set(df["tool"])]:
            fits = df[(df["tool"] == tool) & (df["bpw"] <= budget + TOLERANCE)].dropna(subset=[metric])
            if fits.empty:
                line[tool] = "nothing this small"
                continue
            top = fits.loc[fits[metric].idxmin()]
            best[tool] = top[metric]
            line[tool] = f"{top['recipe']}: {top[metric]:.4g} at {top['bpw']:.2f}"
        others = [v for t, v in best.items() if t != "lab"]
        line["lab loses least"] = ("—" if "lab" not in best or not others
                                   else "yes" if best["lab"] < min(others) else "no")
        out.append(line)
    return pd.DataFrame(out)
