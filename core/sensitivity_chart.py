"""The per-layer sensitivity chart: KL of each layer quantized alone, one line per bit width, the mixed-precision
choice ringed. Built from measured rows (core.sensitivity); no Streamlit here."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

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
