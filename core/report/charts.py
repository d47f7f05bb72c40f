"""Charts from measured rows, no Streamlit: the trade-offs (quality against size and latency, each model's Pareto
frontier, bit widths) and the per-layer sensitivity chart with the mixed-precision choice ringed."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

HIGHER_IS_BETTER = {"top1_accuracy": True, "perplexity": False}
METRIC_LABEL = {"top1_accuracy": "top-1 accuracy (%)", "perplexity": "perplexity (lower is better)"}
AXES = {"size_mb": "size (MB)", "latency_ms_p50": "latency p50 (ms)", "bits_per_weight": "bits per weight"}


def frame(rows: list[dict]) -> pd.DataFrame:
    """One row per measured configuration, with the columns the charts and hover labels use."""
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["size_mb"] = df["size_bytes"] / 1e6
    df["precision"] = df.apply(lambda r: "full" if r["bits"] >= 16 else f"{r['bits']}-bit", axis=1)
    df["device"] = df.get("device", df["backend"])
    df["configuration"] = df["model"] + " " + df["tag"] + " (" + df["method"] + ")"
    return df


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
    hover = {c: True for c in ("model", "tag", "method", "bits", "group_size", "mode", "n", "stderr",
                               "bits_per_weight", "backend", "device", "protocol") if c in data}
    fig = px.scatter(data, x=x, y="value", color="precision", symbol="model", error_y="stderr",
                     hover_name="configuration", hover_data=hover,
                     category_orders={"precision": sorted(data["precision"].unique(), key=_precision_order)},
                     labels={x: AXES.get(x, x), "value": METRIC_LABEL.get(metric, metric)})
    for model, group in data[data["pareto"]].groupby("model"):
        if len(group) < 2:
            continue  # a frontier of one point is just that point
        group = group.sort_values(x)
        fig.add_trace(go.Scatter(x=group[x], y=group["value"], mode="lines", line=dict(dash="dot", color="grey"),
                                 name=f"Pareto frontier: {model}", hoverinfo="skip"))
    if x in ("size_mb", "latency_ms_p50"):
        fig.update_xaxes(type="log")
    fig.update_layout(legend_title_text="", margin=dict(t=40, l=10, r=10, b=10),
                      title=f"{METRIC_LABEL.get(metric, metric)} against {AXES.get(x, x)}")
    return fig


def bits_chart(df: pd.DataFrame, metric: str) -> go.Figure:
    """Bit width against quality (left) and size (right), one line per model and group size; the model's
    full-precision row closes each of its lines at 16."""
    data = df[df["metric"] == metric].copy()
    quantized, full = data[data["bits"] < 16].copy(), data[data["bits"] >= 16]
    quantized["series"] = quantized["model"] + " " + quantized["tag"].str.replace(r"^q\d+", "", regex=True)
    quantized.loc[quantized["mode"] != "affine", "series"] = quantized["model"] + " " + quantized["mode"]
    series = [(name, pd.concat([group, full[full["model"] == group["model"].iloc[0]]]))
              for name, group in quantized.groupby("series")]
    series += [(f"{m} full precision", group) for m, group in full.groupby("model") if m not in set(quantized["model"])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(METRIC_LABEL.get(metric, metric), "size (MB)"))
    palette = px.colors.qualitative.Plotly
    for i, (name, group) in enumerate(series):
        group = group.drop_duplicates(subset=["bits"]).sort_values("bits")
        colour = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=group["bits"], y=group["value"], mode="lines+markers", name=name,
                                 line=dict(color=colour), legendgroup=name,
                                 error_y=dict(type="data", array=group["stderr"], visible=True)), 1, 1)
        fig.add_trace(go.Scatter(x=group["bits"], y=group["size_mb"], mode="lines+markers", name=name,
                                 line=dict(color=colour), legendgroup=name, showlegend=False), 1, 2)
    fig.update_xaxes(title_text="bits (16 = full precision)")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(margin=dict(t=60, l=10, r=10, b=10), title="bit width against quality and size")
    return fig


def _precision_order(label: str) -> int:
    return 99 if label == "full" else int(label.split("-")[0])


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
