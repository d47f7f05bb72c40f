"""Trade-offs: live charts from every measured row, the Pareto frontier marked, filters by model and backend; and
the lab against llama.cpp's and mlx-lm's formats from the `frontier` bench reports."""
import streamlit as st

from core.report import charts
from views._ecosystem import show_ecosystem
from views._ui import demo_toggle, result_rows

st.title("Trade-offs")
demo = demo_toggle()
if st.radio("Show", ["Your runs", "Against the ecosystem"], horizontal=True, key="t_view",
            label_visibility="collapsed") == "Against the ecosystem":
    show_ecosystem()
    st.stop()
df = charts.frame(result_rows(demo))
if df.empty:
    st.info("No measured results yet: run a configuration on the Quantize page, or `./lab demo` for a prepared sweep.")
    st.stop()

left, mid, right = st.columns(3)
chosen_models = left.multiselect("Models", sorted(df["model"].unique()), default=sorted(df["model"].unique()),
                                 key="t_models")
chosen_backends = mid.multiselect("Backends", sorted(df["backend"].unique()), default=sorted(df["backend"].unique()),
                                  key="t_backends")
metrics = [m for m in ("top1_accuracy", "perplexity") if m in set(df["metric"])]
metric = right.radio("Quality metric", metrics, horizontal=True, key="t_metric",
                     format_func=lambda m: charts.METRIC_LABEL[m])
view = df[df["model"].isin(chosen_models) & df["backend"].isin(chosen_backends) & (df["metric"] == metric)]
if view.empty:
    st.info("No rows match these filters.")
    st.stop()

png = {"toImageButtonOptions": {"format": "png", "scale": 2}, "displaylogo": False}
figures = [("size", charts.tradeoff_chart(view, "size_mb", metric), view),
           ("latency", charts.tradeoff_chart(view, "latency_ms_p50", metric), view.dropna(subset=["latency_ms_p50"])),
           ("bits", charts.bits_chart(view, metric), view)]
for key, fig, data in figures:
    if key == "latency" and data.empty:
        st.caption("No benchmarked rows in this selection: latency needs runs with the benchmark on.")
        continue
    st.plotly_chart(fig, width="stretch", config=png, key=f"t_chart_{key}")
    st.download_button("Download the data behind this chart (CSV)", data.drop(columns=["config", "environment"],
                       errors="ignore").to_csv(index=False), f"mlxq-{key}-{metric}.csv", "text/csv",
                       key=f"t_download_{key}")
st.caption("Every point is a measured run (hover for its configuration and protocol); error bars are ± one "
           "standard error. The camera icon of each chart downloads it as PNG. " +
           "; ".join(sorted(set(view["protocol"]))))
