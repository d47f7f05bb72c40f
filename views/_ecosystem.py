"""The Trade-offs page's "against the ecosystem" view: the frontier bench reports (docs/bench/frontier) as a chart
of KL or perplexity against bits per weight, the budget table and the rows behind both."""
import streamlit as st

from core.report import ecosystem
from core.report.tables import Column
from views._ui import chart, table as show_table

BUDGET_HELP = {"lab loses least": "whether the lab's best recipe within the budget has a lower value than every "
                                  "other tool's best"}
EVERY_ROW = {
    "tool": Column("tool"), "recipe": Column("recipe", wide=True),
    "bpw": Column("bits/weight", "%.3f", "bits per weight as the format stores them"),
    "ppl": Column("perplexity", "%.4f"), "ppl_se": Column("± s.e.", "%.4f", "standard error of the perplexity"),
    "kl": Column("KL", "%.5f", "mean KL(full precision ‖ quantized) per scored token, nats"),
    "kl_se": Column("KL ± s.e.", "%.5f", "standard error of the mean KL"),
    "backend": Column("backend"), "source": Column("report"),
}


def show_ecosystem() -> None:
    df = ecosystem.frontier_frame()
    if df.empty:
        st.info("No frontier measurements yet: run `./lab bench --sections frontier --out docs/bench/frontier` "
                "(llama.cpp's types need `./lab setup --peers`).")
        return
    counts = df["protocol"].value_counts()
    left, right = st.columns([3, 1])
    protocol = left.selectbox("Protocol (every row in a view was measured on the same windows)", list(counts.index),
                              key="e_protocol", format_func=lambda p: f"{p} ({counts[p]} subjects)")
    metric = right.radio("Quality", list(ecosystem.METRICS), horizontal=True, key="e_metric",
                         format_func=lambda m: "KL" if m == "kl" else "perplexity")
    view = df[df["protocol"] == protocol]
    chart(ecosystem.ecosystem_chart(view, metric), "e_chart")
    st.subheader("Best recipe of each tool within a bits-per-weight budget")
    budget = ecosystem.budget_table(view, metric=metric)
    show_table(budget, {c: Column(c, "%.1f" if c.startswith("budget") else None, BUDGET_HELP.get(c))
                        for c in budget.columns})
    with st.expander("Every row"):
        table = view.sort_values(["tool", "bpw"])[["tool", "recipe", "bpw", "ppl", "ppl_se", "kl", "kl_se",
                                                  "backend", "source"]]
        show_table(table, EVERY_ROW)
        st.download_button("Download (CSV)", table.to_csv(index=False), "mlxq-ecosystem.csv", "text/csv",
                           key="e_download")
    st.caption(f"Protocol: {protocol}. Backends: {', '.join(sorted(set(view['backend'])))}. llama.cpp's types are "
               "made by llama.cpp's own quantizer from an F32 GGUF the lab writes and scored by llama.cpp's forward "
               "pass; mlx-lm's recipes run through mlx-lm's functions with the lab's calibration text; bits per "
               "weight as each format stores them. Error bars and ± are one standard error over scored tokens.")
