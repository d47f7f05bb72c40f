"""Overview: where MLX runs, which models and data are available, and every cached result row."""
import pandas as pd
import streamlit as st

from core.models import registry, train
from core.report import results
from core.report.status import system_status
from views._ui import demo_toggle, result_rows

st.title("MLX Quant Lab")
st.caption("Post-training quantization of MLX models: what is lost (accuracy, perplexity) and what is gained "
           "(size, memory, speed). Run evaluations with `./lab eval ...` or `./lab sweep ...`; they appear below.")

status = system_status()
if status["blas_warning"]:
    st.warning(status["blas_warning"])
env = status["environment"]
cols = st.columns(4)
cols[0].metric("Backend", env["backend"].upper())
cols[1].metric("Device", env["device"])
cols[2].metric("MLX", env["mlx"])
cols[3].metric("OpenBLAS", {True: "active", False: "missing", None: "n/a"}[env["openblas"]])

st.subheader("Models and data")
st.dataframe(pd.DataFrame(status["models"]), hide_index=True, width="stretch")
st.dataframe(pd.DataFrame(status["datasets"]), hide_index=True, width="stretch")

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
rows = results.lead_columns(result_rows(demo))
if not rows:
    st.info("No demo sweep yet: run `./lab demo`." if demo else
            "No results yet: use the Quantize page, or `./lab eval --model resnet20 --q-bits 4 --limit 1000`.")
else:
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download as CSV", table.to_csv(index=False), "mlxq-results.csv", "text/csv")
