"""Trade-offs: live charts from every measured row, the Pareto frontier marked, filters by model and backend, one
protocol (test subset) at a time; and the lab against llama.cpp's and mlx-lm's formats from the `frontier` bench
reports."""
import streamlit as st

from core.report import charts, labels
from core.report.why import speed_notes
from views._ecosystem import show_ecosystem
from views._ui import chart, demo_toggle, result_rows

st.title("Trade-offs")
demo = demo_toggle()
if st.radio("Show", ["Your runs", "Against the ecosystem"], horizontal=True, key="t_view",
            label_visibility="collapsed") == "Against the ecosystem":
    show_ecosystem()
    st.stop()
rows = result_rows(demo)
df = charts.frame(rows)
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

# Rows measured on another subset or protocol are not comparable: one protocol is drawn at a time.
choices = charts.protocols(view)
counts = dict(choices)
protocol = st.selectbox("Protocol: the test data and how it was scored (rows of different protocols are never drawn "
                        "together; newest first)", list(counts), key=f"t_protocol_{metric}",
                        format_func=lambda p: f"{p} — {counts[p]} run{'s' if counts[p] > 1 else ''}")
if len(choices) > 1:
    st.caption(f"{len(choices)} protocols in this selection (another subset size is another protocol); the charts "
               "show the one chosen above.")
view = view[view["protocol"] == protocol]

timed = view.dropna(subset=["latency_ms_p50"])
measured_on = [charts.machine_label(r) for r in timed.to_dict("records")]
machines = list(dict.fromkeys(measured_on))
if len(machines) > 1:  # a latency is only comparable with one measured on the same machine, in the same dtype
    machine = st.selectbox("Latency measured on", machines, key=f"t_machine_{metric}")
    timed = timed[[m == machine for m in measured_on]]
figures = [("size", charts.tradeoff_chart(view, "size_mb", metric), view),
           ("latency", charts.tradeoff_chart(timed, "latency_ms_p50", metric), timed),
           ("bits", charts.bits_chart(view, metric), view)]
for key, fig, data in figures:
    if key == "latency" and data.empty:
        st.caption("No benchmarked rows in this selection: latency needs runs with the benchmark on.")
        continue
    chart(fig, f"t_chart_{key}")
    if key == "latency":
        for note in speed_notes(data.to_dict("records")):
            st.caption(note)
    st.download_button("Download the data behind this chart (CSV)", data.drop(columns=["config", "environment"],
                       errors="ignore").to_csv(index=False), f"mlxq-{key}-{metric}.csv", "text/csv",
                       key=f"t_download_{key}")
st.caption("Every point is a measured run (hover for its configuration and protocol). Error bars: "
           f"{labels.interval_of(metric)}. Full precision is placed at its dtype's bits per weight. The camera icon "
           f"of each chart downloads it as PNG. Protocol: {protocol}")
