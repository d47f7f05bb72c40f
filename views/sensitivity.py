"""Sensitivity: each layer quantized alone at each bit width, KL against full precision on calibration data,
and the mixed-precision choice for a bits-per-weight target ringed on the chart."""
import pandas as pd
import streamlit as st

from core.errors import LabError
from core.models import registry as models
from core.quant.calibration import Calibration, default_size
from core.quant.mixed import allocation_for
from core.quant.sensitivity import cached_sensitivity
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES
from core.report.charts import sensitivity_chart
from core.report.summaries import allocation_text
from core.report.tables import sensitivity_table
from views._jobs import follow, submit
from views._ui import error, memory_monitor, table

st.title("Layer sensitivity")
memory_monitor()
st.caption("Each weight layer is quantized alone, the rest staying in full precision, at each bit width; the loss "
           "against the full-precision model is measured on calibration data, never the test set. The mixed "
           "method (Quantize page) gives each layer the width that minimises the summed loss within a "
           "bits-per-weight target.")

names = list(models.REGISTRY)
left, right = st.columns(2)
name = left.selectbox("Model", names, index=names.index(models.default_vision_model()), key="s_model",
                      format_func=lambda n: f"{n} — {models.REGISTRY[n].title}")
kind = models.REGISTRY[name].kind
bits = left.multiselect("Bit widths", sorted(AFFINE_BITS, reverse=True), default=[8, 4, 3, 2], key="s_bits")
group = right.selectbox("Group size", AFFINE_GROUP_SIZES, index=1, key="s_group")
what = "CIFAR-10 train images" if kind == "vision" else "WikiText-2 validation chunks"
calib = left.number_input(f"Calibration size: {what}", min_value=1, max_value=50000, value=default_size("sensitivity", kind),
                          step=1, key=f"s_calib_{kind}")
ctx = right.selectbox("Chunk length (tokens)", (256, 512), index=1, key="s_ctx") if kind == "lm" else 512
target = right.number_input("Target bits per weight (mixed precision)", min_value=1.0, max_value=32.0, value=4.5,
                            step=0.1, key="s_target")
calibration = Calibration(int(calib), int(ctx))

rows = None
try:
    rows = cached_sensitivity(name, bits, group, calibration) if bits else None
except LabError as e:
    error(e)
if st.button("Run", type="primary", key="s_run", help="Queued for the worker: leave the page or reload, it goes on; "
             "the sidebar shows its progress on every page"):
    try:
        if not bits:
            raise LabError("Pick at least one bit width to measure.")
        submit("sensitivity", {"model": name, "bits": sorted(bits), "group_size": group, "calib": int(calib),
                               "ctx": int(ctx), "seed": calibration.seed})
    except LabError as e:
        error(e)
        st.stop()
job = follow(("sensitivity",), "s")
if not rows:
    if bits and not (job and job.active):
        st.info("Not measured yet for these settings: Run measures it. Each layer at each width is one pass over "
                "the calibration data, so the time grows with layers × widths × calibration size; a language "
                "model's hundreds of layers want a GPU.")
    st.stop()

allocation = None
try:
    allocation = allocation_for(rows, target, group)
except LabError as e:
    st.warning(str(e))
png = {"toImageButtonOptions": {"format": "png", "scale": 2}, "displaylogo": False}
st.plotly_chart(sensitivity_chart(rows, allocation and allocation.bits,
                                  f"{name}: sensitivity of each layer quantized alone, group {group}"),
                width="stretch", config=png, key="s_chart")
st.caption(f"Protocol: {rows[0]['protocol']}. {len({r['layer'] for r in rows})} layers, from the sensitivity cache. "
           "Hover for layer, bits, KL and top-1 agreement." + (f" {allocation_text(allocation)}" if allocation else ""))

layers, columns = sensitivity_table(rows, allocation and allocation.bits)
table(layers, columns)
st.download_button("Download the table (CSV)", pd.DataFrame(rows).to_csv(index=False),
                   f"mlxq-sensitivity-{name.replace('/', '_')}-g{group}.csv", "text/csv", key="s_download")
