"""Overview: where MLX runs, which models and data are available, and every cached result row."""
import pandas as pd
import streamlit as st

from core.models import registry, train
from core.report import results, tables
from core.report.status import first_run_text, no_results_hint, system_status
from core.report.tables import Column
from views._ui import demo_toggle, result_rows, table

st.title("MLX Quant Lab")
st.caption("Post-training quantization of MLX models: what is lost (accuracy, perplexity) and what is gained "
           "(size, memory, speed). Run evaluations with `./lab eval ...` or `./lab sweep ...`; they appear below.")

status = system_status()
if status["blas_warning"]:
    st.warning(status["blas_warning"])
if first_run := first_run_text(status):
    st.info(first_run)
env = status["environment"]
cols = st.columns(4)
cols[0].metric("Backend", env["backend"].upper())
cols[1].metric("Device", env["device"])
cols[2].metric("MLX", env["mlx"])
cols[3].metric("CPU BLAS", {True: (env["blas_kernel"] or "active").split(" (")[0], False: "reference (slow)",
                            None: "n/a"}[env["fast_blas"]])

st.subheader("Models and data")
table(pd.DataFrame(status["models"]), {"model": Column("model"), "kind": Column("kind"),
                                        "description": Column("description", wide=True),
                                        "full precision means": Column("full precision means", wide=True),
                                        "status": Column("status", wide=True)})
table(pd.DataFrame(status["datasets"]), {"dataset": Column("dataset"), "source": Column("source", wide=True)})

st.subheader(f"The project's own ResNet-20 ({registry.OWN_RESNET})")
own = train.load_history(registry.OWN_RESNET_DIR)
final, where = own["epochs"][-1], own["environment"]
st.caption(f"Trained from scratch with `python -m core train` on CIFAR-10 train ({len(own['epochs'])} epochs, "
           f"{sum(e['seconds'] for e in own['epochs']) / 60:.1f} min on {where['device']}, {where['backend']} backend, "
           f"MLX {where['mlx']}): final test top-1 {final['test_top1']:.2f} % on all 10,000 test images "
           "(the last epoch's weights, never a picked best). Recipe and command: models/resnet20-mlxq/README.md.")
st.plotly_chart(train.curve_figure(own["epochs"]), width="stretch")

st.subheader("Measured results")
demo = demo_toggle()
rows = result_rows(demo)
if not rows:
    st.info("No demo sweep yet: run `./lab demo`." if demo else no_results_hint(status))
else:
    main, quality, speed, legend = tables.result_tables(rows)
    table(main, tables.RESULT_COLUMNS)
    st.caption("Full precision is shown as the dtype it is stored in, with its bits per weight; intervals: top-1 "
               "accuracy with its 95 % Wilson interval, perplexity ± one standard error. Peak MLX memory is the "
               "highest MLX memory during the speed benchmark (weights plus the activations of its largest input), "
               "not the model's size.")
    with st.expander("Details: method, group size, agreement, dtypes, device and protocols of each row"):
        table(quality, tables.QUALITY_DETAILS)
        table(speed, tables.SPEED_DETAILS)
        for line in legend:
            st.caption(line)
    st.download_button("Download as CSV (every lead column, machine-readable)",
                       pd.DataFrame(results.lead_columns(rows)).to_csv(index=False), "mlxq-results.csv", "text/csv")
