"""Charts from measured rows, no Streamlit: the trade-offs (quality against size and latency, each model's Pareto
frontier, bit widths) and the per-layer sensitivity chart with the mixed-precision choice ringed."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.report import labels

HIGHER_IS_BETTER = {"top1_accuracy": True, "perplexity": False}
METRIC_LABEL = {"top1_accuracy": "top-1 accuracy (%)", "perplexity": "perplexity (lower is better)"}
AXES = {"size_mb": "size (MB)", "latency_ms_p50": "latency p50 (ms)", "bits_per_weight": "bits per weight"}


def frame(rows: list[dict]) -> pd.DataFrame:
    """One row per measured configuration, with the columns the charts and hover labels use: the precision in
    words, the width a bit-width axis puts it at, and the error bars of the interval its metric carries."""
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    records = df.to_dict("records")
    df["size_mb"] = df["size_bytes"] / 1e6
    df["precision"] = [labels.precision_label(r) for r in records]
    df["stored_bits"] = [labels.stored_bits(r) for r in records]
    df["quality"] = [labels.quality_text(r) for r in records]
    bounds = [labels.error_bounds(r) for r in records]
    df["err_minus"], df["err_plus"] = [b[0] for b in bounds], [b[1] for b in bounds]
    df["device"] = df["device"] if "device" in df else df["backend"]
    df["configuration"] = df["model"] + " " + df["tag"] + " (" + df["method"] + ")"
    return df


def protocols(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(protocol, number of rows) for every protocol in `df`, in the order the rows come (newest first): rows of
    different protocols (another subset, another text) are not comparable and are never drawn together."""
    counts = df["protocol"].value_counts()
    return [(p, int(counts[p])) for p in dict.fromkeys(df["protocol"])]


def machine_label(row: dict) -> str:
    """'cpu, AMD EPYC, float32': where a speed was measured; speeds compare only within one."""
    return ", ".join(str(v) for v in (row.get("backend"), row.get("device"), row.get("compute_dtype")) if v)


def pareto_mask(df: pd.DataFrame, x: str, higher_is_better: bool) -> pd.Series:
    """True for points no other point beats on both x (smaller) and quality (better)."""
    mask = pd.Series(False, index=df.index)
    valid = df.dropna(subset=[x, "value"])
    for idx, row in valid.iterrows():
        better_y = valid["value"] > row["value"] if higher_is_better else valid["value"] < row["value"]
        same_y = valid["value"] == row["value"]
        dominated = ((valid[x] <= row[x]) & better_y) | ((valid[x] < row[x]) & same_y)
        mask[idx] = not dominated.any()
    return mask


def tradeoff_chart(df: pd.DataFrame, x: str, metric: str) -> go.Figure:
    """Quality against `x` for one metric, one colour per bit width, the frontier drawn through the best points."""
    data = df[(df["metric"] == metric)].dropna(subset=[x]).copy()
    better_high = HIGHER_IS_BETTER.get(metric, True)
    data["pareto"] = False
    for _, group in data.groupby("model"):
        data.loc[group.index, "pareto"] = pareto_mask(group, x, better_high)
    hover = {c: True for c in ("model", "tag", "method", "precision", "group_size", "mode", "n", "quality",
                               "bits_per_weight", "backend", "device", "compute_dtype", "protocol") if c in data}
    hover.update(err_plus=False, err_minus=False)  # the interval is in "quality", named
    fig = px.scatter(data, x=x, y="value", color="precision", symbol="model", error_y="err_plus",
                     error_y_minus="err_minus", hover_name="configuration", hover_data=hover,
                     category_orders={"precision": _precision_order(data)},
                     labels={x: axis_label(x, metric), "value": METRIC_LABEL.get(metric, metric)})
    for model, group in data[data["pareto"]].groupby("model"):
        if len(group) < 2:
            continue  # a frontier of one point is just that point
        group = group.sort_values(x)
        fig.add_trace(go.Scatter(x=group[x], y=group["value"], mode="lines", line=dict(dash="dot", color="grey"),
                                 name=f"Pareto frontier: {model}", hoverinfo="skip"))
    if x in ("size_mb", "latency_ms_p50"):
        fig.update_xaxes(type="log")
    fig.update_layout(legend_title_text="", margin=dict(t=40, l=10, r=10, b=10),
                      title=f"{METRIC_LABEL.get(metric, metric)} against {axis_label(x, metric)}")
    return fig


def axis_label(x: str, metric: str) -> str:
    """An axis name that says what was timed: one image at batch 1, or one decoded token."""
    if x == "latency_ms_p50":
        return "latency p50 (ms, " + ("one image, batch 1)" if metric == "top1_accuracy" else "per decoded token)")
    return AXES.get(x, x)


def bits_chart(df: pd.DataFrame, metric: str) -> go.Figure:
    """Bit width against quality (left) and size (right), one line per model and group size; the model's
    full-precision row closes each of its lines at its dtype's width (float32: 32 bits per weight)."""
    data = df[df["metric"] == metric].copy()
    full_mask = data["bits"] >= labels.FULL_PRECISION_BITS
    quantized, full = data[~full_mask].copy(), data[full_mask]
    quantized["series"] = quantized["model"] + " " + quantized["tag"].str.replace(r"^q\d+", "", regex=True)
    quantized.loc[quantized["mode"] != "affine", "series"] = quantized["model"] + " " + quantized["mode"]
    series = [(name, pd.concat([group, full[full["model"] == group["model"].iloc[0]]]))
              for name, group in quantized.groupby("series")]
    series += [(f"{m} full precision", group) for m, group in full.groupby("model") if m not in set(quantized["model"])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(METRIC_LABEL.get(metric, metric), "size (MB)"))
    palette = px.colors.qualitative.Plotly
    for i, (name, group) in enumerate(series):
        group = group.drop_duplicates(subset=["stored_bits"]).sort_values("stored_bits")
        colour = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=group["stored_bits"], y=group["value"], mode="lines+markers", name=name,
                                 line=dict(color=colour), legendgroup=name, text=group["precision"],
                                 error_y=dict(type="data", symmetric=False, array=group["err_plus"],
                                              arrayminus=group["err_minus"], visible=True)), 1, 1)
        fig.add_trace(go.Scatter(x=group["stored_bits"], y=group["size_mb"], mode="lines+markers", name=name,
                                 line=dict(color=colour), legendgroup=name, showlegend=False,
                                 text=group["precision"]), 1, 2)
    widths = sorted(set(data["stored_bits"]))
    fig.update_xaxes(title_text=_bits_axis_title(full), type="log", tickvals=widths, ticktext=[f"{w:g}" for w in widths])
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(margin=dict(t=60, l=10, r=10, b=10), title="bit width against quality and size")
    return fig


def _bits_axis_title(full: pd.DataFrame) -> str:
    """'bits per weight (full precision: float32 = 32)', from the full-precision rows shown."""
    dtypes = sorted({(p.split(" ")[0], b) for p, b in zip(full["precision"], full["stored_bits"])})
    return "bit width" + (" (full precision: " + ", ".join(f"{d} = {b:g}" for d, b in dtypes) + " bits per weight)"
                          if dtypes else "")


def _precision_order(data: pd.DataFrame) -> list[str]:
    """Precision labels, widest first: full precision, then 8-bit down to 2-bit."""
    widest = data.groupby("precision")["stored_bits"].max()
    return sorted(widest.index, key=lambda label: (-widest[label], label))


# ---- per-layer sensitivity ----------------------------------------------------------------------------------

KL_FLOOR = 1e-9  # a log axis cannot show 0; hover still gives the measured value


def sensitivity_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows).sort_values(["index", "bits"])
    df["kl_plot"] = df["kl"].clip(lower=KL_FLOOR)
    return df


def sensitivity_chart(rows: list[dict], allocation: dict[str, int] | None = None, title: str = "") -> go.Figure:
    """KL(full || quantized) per layer (model order, log scale), one line per width; `allocation` rings the
    width each layer gets. Hover: layer, bits, KL, agreement, weights."""
    df = sensitivity_frame(rows)
    fig = go.Figure()
    hover = ("<b>%{x}</b><br>%{customdata[0]} bits, group %{customdata[1]}<br>KL %{customdata[2]:.3g} nats"
             "<br>top-1 agreement %{customdata[3]:.2f} %<br>%{customdata[4]:,} weights<extra></extra>")
    for bits, group in df.groupby("bits"):
        fig.add_trace(go.Scatter(
            x=group["layer"], y=group["kl_plot"], mode="lines+markers", name=f"{bits}-bit",
            customdata=group[["bits", "group_size", "kl", "agreement", "weights"]].to_numpy(), hovertemplate=hover))
    if allocation:
        chosen = df[[allocation.get(layer) == bits for layer, bits in zip(df["layer"], df["bits"])]]
        fig.add_trace(go.Scatter(
            x=chosen["layer"], y=chosen["kl_plot"], mode="markers", name="mixed-precision choice",
            marker=dict(symbol="circle-open", size=16, line=dict(width=2, color="black")),
            customdata=chosen[["bits", "group_size", "kl", "agreement", "weights"]].to_numpy(), hovertemplate=hover))
    fig.update_yaxes(type="log", title_text="KL(full ‖ quantized), nats per image or token")
    fig.update_xaxes(title_text="layer (model order)", tickangle=-45,
                     categoryorder="array", categoryarray=list(dict.fromkeys(df["layer"])))
    fig.update_layout(title=title or "Sensitivity of each layer quantized alone", legend_title_text="",
                      margin=dict(t=50, l=10, r=10, b=10), hovermode="closest")
    return fig
