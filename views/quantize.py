"""Quantize & evaluate: pick a model and bit widths, run with progress and cancel, compare with full precision."""
from dataclasses import asdict

import pandas as pd
import streamlit as st

from core import runtime
from core.errors import LabError
from core.eval.config import EvalConfig
from core.eval.pipeline import full_test_size
from core.jobs import sweep_job
from core.models import registry as models
from core.quant.calibration import default_size
from core.quant.config import dwq_default
from core.quant.methods import DWQ_STARTS, methods_for
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES, MODES
from core.quant.footprint import MAC_SIZES_GB
from core.report.charts import frame, tradeoff_chart
from core.report.fit import fit_columns, fit_rows, protocol as fit_protocol
from core.report.summaries import COMPARISON_DETAILS, comparison_columns, comparison_table
from core.report.why import speed_notes
from views._jobs import follow, submit
from views._ui import error, memory_monitor, table


@st.cache_data(show_spinner="Counting the test set...")
def _whole_test_set(name: str) -> int:
    return full_test_size(name)  # a LabError is not cached: once the data arrives, the count follows


def whole_test_set(name: str) -> int | None:
    """Items in the whole test set (None when the data or the model's tokenizer is not here: the run then says
    what is missing)."""
    try:
        return _whole_test_set(name)
    except Exception:  # noqa: BLE001 - a user's folder may lack anything; Run reports it in words
        return None


def fit_panel(name: str, bits: list, group, mode: str, method: str, calib: int, windows: int) -> None:
    """The predicted memory of each stage at each chosen width, and whether it fits the user's Mac."""
    st.subheader("Does it fit your Mac?")
    machine = st.selectbox("Your Mac's memory (GB)", MAC_SIZES_GB, index=MAC_SIZES_GB.index(16), key="q_machine")
    try:
        rows = fit_rows(name, [(b, group, mode) for b in bits], method, calib, windows, machine)
    except LabError as e:
        error(e)
        return
    table(pd.DataFrame(rows), fit_columns(machine))
    st.caption(fit_protocol())


st.title("Quantize & evaluate")
memory_monitor()

names = list(models.REGISTRY)
left, right = st.columns(2)
source = left.radio("Model", ("built in", "your own"), horizontal=True, key="q_source",
                    help="your own: an mlx-lm model folder on this machine (llama, qwen2, qwen3, phi3, mistral ...), "
                         "or a Hugging Face id where the hub is reachable")
if source == "built in":
    name = left.selectbox("Built-in model", names, index=names.index(models.default_vision_model()), key="q_model",
                          format_func=lambda n: f"{n} — {models.REGISTRY[n].title}")
    info = models.REGISTRY[name]
else:
    name = left.text_input("mlx-lm model folder or Hugging Face id", key="q_own",
                           placeholder="/Users/me/models/Llama-3.2-1B-Instruct").strip()
    try:
        info = models.resolve(name) if name else None
    except LabError as e:
        info = None
        error(e)
    if info is None:
        st.stop()
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

if info.kind == "lm":
    fit_panel(name, bits if mode == "affine" else [None], group, mode, method, calib or 0, int(limit) or 2)

where = right.radio("Run on", ("this machine", "the hosts of a hostfile"), key="q_where", horizontal=True,
                    help="this machine: the lab's worker process runs it. Hostfile: a sweep spread over several "
                         "machines with mlx.launch (this machine first in the file; README: several Macs)")
hostfile = right.text_input("Hostfile (JSON, as mlx.distributed_config writes it)", key="q_hostfile",
                            placeholder="hosts.json") if where != "this machine" else ""
if st.button("Run", type="primary", key="q_run", help="Queued for the worker: leave the page or reload, it goes on; "
             "the sidebar shows its progress on every page"):
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
        if where == "this machine":
            submit("eval", {"configs": [asdict(c) for c in configs]})
        else:
            submit("sweep", sweep_job.spec_for(configs[1:] or configs, hostfile=hostfile.strip()))
    except LabError as e:
        error(e)
        st.stop()

job = follow(("eval", "sweep"), "q")
rows = (job.result or {}).get("rows") if job is not None and job.state == "done" else None
if rows:
    table_rows, notes = comparison_table(rows)
    st.subheader("Result")
    st.caption(f"The latest run: {job.title}, finished {job.finished.replace('T', ' ')} UTC (job {job.id}; every "
               "finished run's rows are on the Trade-offs page).")
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
