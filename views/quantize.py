"""Quantize & evaluate: pick a model and bit widths, run with progress and cancel, compare with full precision."""
import pandas as pd
import streamlit as st

from core import runtime
from core.errors import LabError
from core.eval.config import EvalConfig
from core.eval.pipeline import full_test_size, run_eval
from core.models import registry as models
from core.quant.calibration import default_size
from core.quant.config import dwq_default
from core.quant.methods import DWQ_STARTS, methods_for
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES, MODES
from core.report.charts import frame, tradeoff_chart
from core.report.summaries import COMPARISON_DETAILS, comparison_columns, comparison_table
from core.report.why import speed_notes
from views._ui import error, error_message, memory_monitor, table


@st.cache_data(show_spinner="Counting the test set...")
def _whole_test_set(name: str) -> int:
    return full_test_size(name)  # a LabError is not cached: once the data arrives, the count follows


def whole_test_set(name: str) -> int | None:
    """Items in the whole test set (None when the data is not here: the run then says what is missing)."""
    try:
        return _whole_test_set(name)
    except LabError:
        return None


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
whole = whole_test_set(name)
unit = "images" if info.kind == "vision" else "512-token chunks"
limit = left.number_input(f"Evaluation subset: {unit} (0 = all{f' {whole:,}' if whole else ''})", min_value=0,
                          max_value=whole or None, value=min(1000 if info.kind == "vision" else 4, whole or 1000),
                          step=1, key="q_limit" if info.kind == "vision" else "q_limit_lm",
                          help="a deterministic subset: class-stratified images, or evenly spread chunks; at most "
                               "the whole test set")
if whole and limit >= whole:
    left.caption(f"{limit:,} is the whole test set ({whole:,} {unit}): the run uses all of it.")
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

run_slot = st.empty()  # the Run button, replaced by a disabled one while a run goes on
if run_slot.button("Run", type="primary", key="q_run"):
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
    run_slot.button("Running…", type="primary", disabled=True, key="q_running",
                    help="A run is in progress: Cancel stops it.")
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
        st.session_state["quantize_error"] = error_message(e)
    # A Cancel click stops the script inside run_eval with Streamlit's own BaseException, so this line is then
    # never reached and the next run reports the cancellation.
    st.session_state["quantize_running"] = False
    if results:
        st.session_state["quantize_results"] = [r.public() for r in results]
    st.rerun()  # the page again: Run enabled, the results (or the error) below it

if message := st.session_state.pop("quantize_error", None):
    st.error(message)
rows = st.session_state.get("quantize_results")
if rows:
    table_rows, notes = comparison_table(rows)
    st.subheader("Result")
    result = pd.DataFrame(table_rows)
    main = [c for c in result.columns if c not in COMPARISON_DETAILS]
    table(result, comparison_columns(main))
    for note in speed_notes(rows):
        st.info(note)
    for note in notes:
        st.caption(note)
    with st.expander("Details: agreement or KL with full precision, throughput, peak memory, compute dtype, items "
                     "measured, where each number came from"):
        st.table(result[["configuration", *COMPARISON_DETAILS]].set_index("configuration"))
    df = frame(rows)
    st.plotly_chart(tradeoff_chart(df, "size_mb", df["metric"].iloc[0]), width="stretch", key="q_chart")
