"""Sensitivity: each layer quantized alone at each bit width, KL against full precision on calibration data,
and the mixed-precision choice for a bits-per-weight target ringed on the chart.

The form's choices and the config it builds are the functions at the top, defaults and all from the config
(core.quant.sensitivity_config; tests/dashboard/test_form_contract.py validates every choice); Streamlit runs the
page below (as __main__)."""
import pandas as pd
import streamlit as st

from core.errors import LabError
from core.jobs.kinds import KINDS
from core.models import registry as models
from core.quant.mixed import allocation_for
from core.quant.sensitivity_config import FORM_CONTEXTS, FORM_TARGET_BPW, SensitivityConfig, cached_table
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES
from core.report.charts import sensitivity_chart
from core.report.summaries import allocation_text
from core.report.tables import sensitivity_table
from views._jobs import follow, submit
from views._ui import chart, error, field_default, memory_monitor, model_label, table

WIDTHS = sorted(AFFINE_BITS, reverse=True)  # the widths a layer can be measured at, widest first
GROUP_SIZES = AFFINE_GROUP_SIZES


def contexts(kind: str) -> tuple[int, ...]:
    """The chunk lengths offered: a language model's choice; a ResNet's images have none (the config's default)."""
    return FORM_CONTEXTS if kind == "lm" else (field_default(SensitivityConfig, "ctx"),)


def defaults(name: str) -> SensitivityConfig:
    """Where the form starts for the model `name`: the config's own defaults (widths, group size, calibration size
    for the model's kind, chunk length)."""
    return SensitivityConfig(name).validated()


def sensitivity_config(name: str, bits, group: int, calib: int, ctx: int) -> SensitivityConfig:
    """The config the form describes, validated (a LabError in words when it is not one)."""
    return SensitivityConfig(name, bits=tuple(bits), group_size=group, calib=int(calib), ctx=int(ctx)).validated()


def page() -> None:
    st.title("Layer sensitivity")
    memory_monitor()
    st.caption("Each weight layer is quantized alone, the rest staying in full precision, at each bit width; the loss "
               "against the full-precision model is measured on calibration data, never the test set. The mixed "
               "method (Quantize page) gives each layer the width that minimises the summed loss within a "
               "bits-per-weight target.")
    name, bits, group, calib, ctx, target = _form()
    rows = None
    try:
        rows = cached_table(sensitivity_config(name, bits, group, calib, ctx)) if bits else None
    except LabError as e:
        error(e)
    if st.button("Run", type="primary", key="s_run", help="Queued for the worker: leave the page or reload, it goes "
                 "on; the sidebar shows its progress on every page"):
        try:
            config = sensitivity_config(name, bits, group, calib, ctx)
            submit("sensitivity", KINDS["sensitivity"].spec_of([config]))
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
    _show(name, rows, group, target)


def _form():
    """The model and the settings the user picked: (name, bits, group, calibration size, chunk length, target)."""
    names = list(models.REGISTRY)
    left, right = st.columns(2)
    name = left.selectbox("Model", names, index=names.index(models.default_vision_model()), key="s_model",
                          format_func=model_label)
    kind, start = models.REGISTRY[name].kind, defaults(name)
    bits = left.multiselect("Bit widths", WIDTHS, default=sorted(start.bits, reverse=True), key="s_bits")
    group = right.selectbox("Group size", GROUP_SIZES, index=GROUP_SIZES.index(start.group_size), key="s_group")
    what = "CIFAR-10 train images" if kind == "vision" else "WikiText-2 validation chunks"
    calib = left.number_input(f"Calibration size: {what}", min_value=1, max_value=50000, value=start.calib, step=1,
                              key=f"s_calib_{kind}")
    offered = contexts(kind)
    ctx = (right.selectbox("Chunk length (tokens)", offered, index=offered.index(start.ctx), key="s_ctx")
           if len(offered) > 1 else offered[0])
    target = right.number_input("Target bits per weight (mixed precision)", min_value=1.0, max_value=32.0,
                                value=FORM_TARGET_BPW, step=0.1, key="s_target")
    return name, bits, group, calib, ctx, target


def _show(name: str, rows: list[dict], group: int, target: float) -> None:
    """The chart with the allocation for `target` ringed, the protocol, the table and its CSV."""
    allocation = None
    try:
        allocation = allocation_for(rows, target, group)
    except LabError as e:
        st.warning(str(e))
    chart(sensitivity_chart(rows, allocation and allocation.bits,
                            f"{name}: sensitivity of each layer quantized alone, group {group}"), "s_chart")
    st.caption(f"Protocol: {rows[0]['protocol']}. {len({r['layer'] for r in rows})} layers, from the sensitivity "
               "cache. Hover for layer, bits, KL and top-1 agreement."
               + (f" {allocation_text(allocation)}" if allocation else ""))
    layers, columns = sensitivity_table(rows, allocation and allocation.bits)
    table(layers, columns)
    st.download_button("Download the table (CSV)", pd.DataFrame(rows).to_csv(index=False),
                       f"mlxq-sensitivity-{name.replace('/', '_')}-g{group}.csv", "text/csv", key="s_download")


if __name__ == "__main__":
    page()
