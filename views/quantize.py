"""Quantize & evaluate: pick a model and bit widths, run with progress and cancel, compare with full precision."""
import pandas as pd
import streamlit as st

from core import runtime
from core.errors import LabError
from core.eval.config import EvalConfig
from core.eval.pipeline import run_eval
from core.models import registry as models
from core.quant.calibration import default_size
from core.quant.config import dwq_default
from core.quant.methods import DWQ_STARTS, methods_for
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES, MODES
from core.report.charts import frame, tradeoff_chart
from core.report.summaries import comparison_table
from views._ui import error, memory_monitor

st.title("Quantize & evaluate")
memory_monitor()
if st.session_state.pop("quantize_running", False):
    st.warning("The previous run was cancelled: configurations it had finished are cached, the interrupted one "
               "left nothing behind.")

names = list(models.REGISTRY)
left, right = st.columns(2)
name = left.selectbox("Model", names, index=names.index(models.default_vision_model()), key="q_model",
                      format_func=lambda n: f"{n} — {models.REGISTRY[n].title}")
info = models.REGISTRY[name]
mode = right.selectbox("Mode", MODES, key="q_mode", help="affine: integers with a scale and bias per group; "
                       "mxfp4 / nvfp4 / mxfp8: small floats with a shared scale (fixed bits and group size)")
if mode == "affine":
    bits = left.multiselect("Bit widths", sorted(AFFINE_BITS, reverse=True), default=[8, 4], key="q_bits")
    group = right.selectbox("Group size", AFFINE_GROUP_SIZES, index=1, key="q_group")
else:
    bits, group = [None], None
    left.caption(f"{mode} fixes the bit width and group size.")
unit = "images (0 = all 10,000)" if info.kind == "vision" else "512-token chunks (0 = all 592)"
limit = left.number_input(f"Evaluation subset: {unit}", min_value=0, max_value=100000,
                          value=1000 if info.kind == "vision" else 4, step=1, key="q_limit")
if mode == "affine":
    method = right.selectbox("Method", methods_for(info.kind), key=f"q_method_{info.kind}",
                             help="rtn: round to nearest; gptq, "
                             "awq: calibrated rounding / scaling; mixed: per-layer bit widths from measured "
                             "sensitivities within a bits-per-weight target (see the Sensitivity page); dwq: "
                             "another method's result with its scales, biases and norms distilled from the "
                             "full-precision model (minutes per hundred steps on a CPU)")
else:
    method = "rtn"
calib = target_bpw = dwq_from = dwq_steps = None
if method == "dwq":
    starts = [m for m in DWQ_STARTS if m in methods_for(info.kind)]
    dwq_from = right.selectbox("Distil from", starts, index=starts.index("awq" if info.kind == "lm" else "gptq"),
                               key=f"q_dwq_from_{info.kind}")
    dwq_steps = int(right.number_input("Distillation steps", min_value=1, max_value=100000,
                                       value=dwq_default(info.kind, "steps"), step=10, key=f"q_dwq_steps_{info.kind}"))
if method != "rtn":
    default = default_size(method, info.kind)
    what = "CIFAR-10 train images" if info.kind == "vision" else "WikiText-2 validation chunks"
    calib = int(left.number_input(f"Calibration size: {what}", min_value=1, max_value=50000, value=default, step=1,
                                  key=f"q_calib_{method}_{info.kind}"))
if "mixed" in (method, dwq_from):
    target_bpw = float(right.number_input("Target bits per weight", min_value=1.0, max_value=32.0, value=4.5,
                                          step=0.1, key="q_target_bpw"))
    left.caption("mixed: each bit width above is the lowest a layer may get; layers get up to 8 bits within the "
                 "target.")
keep_first = right.checkbox("Keep the first layer in full precision", key="q_keep_first")
keep_last = right.checkbox("Keep the output layer in full precision", key="q_keep_last")
bench = right.checkbox("Benchmark speed and memory", value=True, key="q_bench")
try:
    backend_dtype = runtime.default_dtype()
except LabError as e:  # a bad MLXQ_DTYPE
    error(e)
    st.stop()
dtype = right.selectbox("Compute dtype", list(runtime.DTYPES), index=list(runtime.DTYPES).index(backend_dtype),
                        key="q_dtype", help=f"what the deployed model computes in ({backend_dtype} is this "
                        f"backend's default): size, speed and memory are measured in it; quality is always computed "
                        "in float32 on the same quantized weights")

if st.button("Run", type="primary", key="q_run"):
    try:
        if mode == "affine" and not bits:
            raise LabError("Pick at least one bit width to compare with full precision.")
        base = EvalConfig(name, limit=int(limit) or None, bench=bench, dtype=dtype)
        configs = [base] + [EvalConfig(name, bits=b or 4, group_size=group, mode=mode, method=method, calib=calib,
                                       target_bpw=target_bpw, dwq_from=dwq_from, dwq_steps=dwq_steps,
                                       limit=int(limit) or None, keep_first=keep_first,
                                       keep_last=keep_last, bench=bench, dtype=dtype)
                            for b in (bits or [])]
        configs = [c.validated() for c in configs]  # every mistake is reported before any work starts
    except LabError as e:
        error(e)
        st.stop()
    st.session_state["quantize_running"] = True
    cancel_slot = st.empty()
    cancel_slot.button("Cancel", key="q_cancel", help="Stops the run; results finished so far stay cached.")
    bar = st.progress(0.0, text="starting")
    results = []
    try:
        for i, cfg in enumerate(configs):
            def progress(fraction, message, i=i, cfg=cfg):
                bar.progress((i + fraction) / len(configs), text=f"{cfg.tag}: {message}")
            results.append(run_eval(cfg, progress=progress))
    except Exception as e:  # LabError, or a bug: one message, the page keeps working
        error(e)
    # A Cancel click stops the script inside run_eval with Streamlit's own BaseException, so this line is then
    # never reached and the next run reports the cancellation.
    st.session_state["quantize_running"] = False
    bar.empty()
    cancel_slot.empty()
    if results:
        st.session_state["quantize_results"] = [r.public() for r in results]

rows = st.session_state.get("quantize_results")
if rows:
    table, notes = comparison_table(rows)
    st.subheader("Result")
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
    for note in notes:
        st.caption(note)
    df = frame(rows)
    st.plotly_chart(tradeoff_chart(df, "size_mb", df["metric"].iloc[0]), width="stretch", key="q_chart")
