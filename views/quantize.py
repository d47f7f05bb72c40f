"""Quantize & evaluate: pick a model and bit widths, run with progress and cancel, compare with full precision; export
a configuration.

The form's choices and the configs it builds are the functions at the top: every default and every check is the
configs' own (core.eval.config.EvalConfig, core.deploy.export_config.ExportConfig), and
tests/dashboard/test_form_contract.py validates every mode, width and method offered here. Streamlit runs the page
below (as __main__)."""
from dataclasses import fields

import pandas as pd
import streamlit as st

from core import runtime
from core.deploy.export_config import ExportConfig, formats_for
from core.errors import LabError
from core.eval.config import FORM_LIMIT, FORM_WIDTHS, EvalConfig
from core.eval.pipeline import full_test_size
from core.eval.sweep_config import SweepConfig
from core.jobs.kinds import KINDS
from core.models import registry as models
from core.quant.calibration import default_size
from core.quant.config import dwq_default
from core.quant.footprint import MAC_SIZES_GB
from core.quant.methods import DWQ_STARTS, methods_for
from core.quant.sensitivity_config import FORM_TARGET_BPW
from core.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES, DEFAULT_GROUP_SIZE, MODES
from core.report.charts import frame, tradeoff_chart
from core.report.fit import fit_columns, fit_rows, protocol as fit_protocol
from core.report.summaries import COMPARISON_DETAILS, comparison_columns, comparison_table
from core.report.why import speed_notes
from views._jobs import follow, latest, submit
from views._ui import error, field_default, memory_monitor, model_label, table

# ---- the form: what it offers and the configs it builds ---------------------------------------------------------


def widths(mode: str) -> list[int | None]:
    """The bit widths offered for `mode`: the affine widths, widest first; a float mode's own (None: the config
    gives the mode its width)."""
    return sorted(AFFINE_BITS, reverse=True) if mode == "affine" else [None]


def group_sizes(mode: str) -> list[int | None]:
    """The group sizes offered for `mode`; a float mode fixes its own (None)."""
    return list(AFFINE_GROUP_SIZES) if mode == "affine" else [None]


def methods(kind: str, mode: str) -> tuple[str, ...]:
    """The methods offered for a model of `kind` in `mode` (the float modes: round to nearest)."""
    return methods_for(kind) if mode == "affine" else ("rtn",)


def dwq_starts(kind: str) -> list[str]:
    """The methods distillation can start from for a model of `kind`."""
    return [m for m in DWQ_STARTS if m in methods_for(kind)]


def dwq_start(name: str) -> str:
    """The method distillation starts from unless told: the config's own choice for this model."""
    return EvalConfig(name, bits=4, method="dwq").validated().dwq_from


def calibrated_defaults(name: str, kind: str, method: str, dwq_from: str | None = None) -> dict:
    """The settings the form starts from for a calibrated `method` (none for round to nearest): distillation's
    start (the config's own) and steps, the calibration size, and the budget where mixed precision is involved."""
    start = {}
    if method == "dwq":
        start.update(dwq_from=dwq_from or dwq_start(name), dwq_steps=dwq_default(kind, "steps"))
    if method != "rtn":
        start["calib"] = default_size(method, kind)
    if "mixed" in (method, start.get("dwq_from")):
        start["target_bpw"] = FORM_TARGET_BPW
    return start


def eval_configs(name: str, bits: list, **settings) -> list[EvalConfig]:
    """The full-precision baseline and one configuration per chosen width, with `settings` (EvalConfig fields),
    validated: every mistake is reported before any work starts."""
    if not bits:
        raise LabError("Pick at least one bit width to compare with full precision.", "bits")
    shared = {k: v for k, v in settings.items() if k in ("limit", "bench", "dtype")}
    configs = [EvalConfig(name, **shared)] + [EvalConfig(name, bits=b, **settings) for b in bits]
    return [c.validated() for c in configs]


def export_config(name: str, bits: int | None, out: str, format: str, force: bool, **settings) -> ExportConfig:
    """The export of one configuration of the form (`settings`: its EvalConfig fields; an export takes those that
    decide the weights), validated."""
    taken = {f.name for f in fields(ExportConfig)}
    quant = {k: v for k, v in settings.items() if k in taken}
    return ExportConfig(name, bits=bits, out=out, format=format, force=force, **quant).validated()


RESTORED = "q_form_restored"


# ---- the page ----------------------------------------------------------------------------------------------------

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


def restored(key: str, default):
    """Where the widget `key` starts: from the run in progress when this session began with one (a reload, a second
    tab), so the settings beside its progress are its own; else `default`."""
    if RESTORED not in st.session_state:
        st.session_state[RESTORED] = _running_form()
    return st.session_state[RESTORED].get(key, default)


def start_index(key: str, options, default=None) -> int:
    """The index `options` start at for the widget `key` (restored), the default's (or the first) otherwise."""
    options = list(options)
    value = restored(key, default)
    return options.index(value) if value in options else options.index(default) if default in options else 0


def _running_form() -> dict:
    """The form's values of the eval run in progress (model, mode, widths, group size, method, subset), if any."""
    job = latest(("eval",))
    configs = (job.spec.get("configs") or []) if job is not None and job.active else []
    chosen = [c for c in configs if isinstance(c, dict) and (c.get("bits") or 16) < 16]
    if not chosen or chosen[0].get("model") not in models.REGISTRY:
        return {}
    first, kind = chosen[0], models.REGISTRY[chosen[0]["model"]].kind
    form = {"q_model": first["model"], "q_mode": first.get("mode", "affine"), "q_method": first.get("method", "rtn"),
            "q_limit": first.get("limit") or 0, "q_bits": [c["bits"] for c in chosen]}
    if first.get("group_size"):
        form["q_group"] = first["group_size"]
    return form


def page() -> None:
    st.title("Quantize & evaluate")
    memory_monitor()
    left, right = st.columns(2)
    name, info = _model(left)
    bits, settings = _settings(name, info, left, right)
    if info.kind == "lm":
        fit_panel(name, bits, settings["group_size"], settings["mode"], settings["method"], settings["calib"] or 0,
                  settings["limit"] or 2)
    _run(name, bits, settings, right)
    _export(name, info, bits, settings)
    _result()


def _model(left):
    """The model: a built-in one, or the user's folder or hub id (the page stops until it resolves)."""
    names = list(models.REGISTRY)
    source = left.radio("Model", ("built in", "your own"), horizontal=True, key="q_source",
                        help="your own: an mlx-lm model folder on this machine (llama, qwen2, qwen3, phi3, mistral "
                             "...), or a Hugging Face id where the hub is reachable")
    if source == "built in":
        start = start_index("q_model", names, models.default_vision_model())
        name = left.selectbox("Built-in model", names, index=start,
                              key="q_model", format_func=model_label)
        return name, models.REGISTRY[name]
    name = left.text_input("mlx-lm model folder or Hugging Face id", key="q_own",
                           placeholder="/Users/me/models/Llama-3.2-1B-Instruct").strip()
    try:
        info = models.resolve(name) if name else None
    except LabError as e:
        info = None
        error(e)
    if info is None:
        st.stop()
    return name, info


def _settings(name: str, info, left, right) -> tuple[list, dict]:
    """The widths and every other setting the user picked (EvalConfig fields)."""
    mode = right.selectbox("Mode", MODES, index=start_index("q_mode", MODES), key="q_mode",
                           help="affine: integers with a scale and bias per group; "
                           "mxfp4 / nvfp4 / mxfp8: small floats with a shared scale (fixed bits and group size)")
    if mode == "affine":
        offered = widths(mode)
        bits = left.multiselect("Bit widths", offered, key="q_bits",
                                default=[b for b in restored("q_bits", FORM_WIDTHS) if b in offered])
        groups = group_sizes(mode)
        group = right.selectbox("Group size", groups, key="q_group",
                                index=start_index("q_group", groups, DEFAULT_GROUP_SIZE))
    else:
        bits, group = widths(mode), None
        left.caption(f"{mode} fixes the bit width and group size.")
    limit = _limit(name, info, left)
    choices = methods(info.kind, mode)
    method = (right.selectbox("Method", choices, key=f"q_method_{info.kind}", index=start_index("q_method", choices),
                              help="rtn: round to nearest; gptq, awq: calibrated rounding / scaling; mixed: per-layer "
                              "bit widths from measured sensitivities within a bits-per-weight target (see the "
                              "Sensitivity page); dwq: another method's result with its scales, biases and norms "
                              "distilled from the full-precision model (minutes per hundred steps on a CPU)")
              if len(choices) > 1 else choices[0])
    settings = dict(group_size=group, mode=mode, method=method, limit=limit, calib=None, target_bpw=None,
                    dwq_from=None, dwq_steps=None)
    settings.update(_calibration(name, info.kind, method, left, right))
    settings.update(_deployment(right))
    return bits, settings


def _limit(name: str, info, left) -> int | None:
    whole = whole_test_set(name)
    unit = "images" if info.kind == "vision" else "512-token chunks"
    limit = left.number_input(f"Evaluation subset: {unit} (0 = all{f' {whole:,}' if whole else ''})", min_value=0,
                              max_value=whole or None, step=1,
                              value=min(restored("q_limit", FORM_LIMIT[info.kind]), whole or 1000),
                              key="q_limit" if info.kind == "vision" else "q_limit_lm",
                              help="a deterministic subset: class-stratified images, or evenly spread chunks; at "
                                   "most the whole test set")
    if whole and limit >= whole:
        left.caption(f"{limit:,} is the whole test set ({whole:,} {unit}): the run uses all of it.")
    return int(limit) or None


def _calibration(name: str, kind: str, method: str, left, right) -> dict:
    """The calibrated methods' settings: distillation's start and steps, the calibration size, mixed's budget."""
    chosen = {}
    if method == "dwq":
        starts = dwq_starts(kind)
        chosen["dwq_from"] = right.selectbox("Distil from", starts, key=f"q_dwq_from_{kind}",
                                             index=starts.index(calibrated_defaults(name, kind, method)["dwq_from"]))
    start = calibrated_defaults(name, kind, method, chosen.get("dwq_from"))
    if method == "dwq":
        chosen["dwq_steps"] = int(right.number_input("Distillation steps", min_value=1, max_value=100000,
                                                     value=start["dwq_steps"], step=10, key=f"q_dwq_steps_{kind}"))
    if method != "rtn":
        what = "CIFAR-10 train images" if kind == "vision" else "WikiText-2 validation chunks"
        chosen["calib"] = int(left.number_input(f"Calibration size: {what}", min_value=1, max_value=50000,
                                                value=start["calib"], step=1, key=f"q_calib_{method}_{kind}"))
    if "target_bpw" in start:
        chosen["target_bpw"] = float(right.number_input("Target bits per weight", min_value=1.0, max_value=32.0,
                                                        value=start["target_bpw"], step=0.1, key="q_target_bpw"))
        left.caption("mixed: each bit width above is the lowest a layer may get; layers get up to 8 bits within the "
                     "target.")
    return chosen


def _deployment(right) -> dict:
    """What the deployed model keeps in full precision, whether it is benchmarked, and its compute dtype."""
    chosen = dict(keep_first=right.checkbox("Keep the first layer in full precision", key="q_keep_first",
                                            value=field_default(EvalConfig, "keep_first")),
                  keep_last=right.checkbox("Keep the output layer in full precision", key="q_keep_last",
                                           value=field_default(EvalConfig, "keep_last")),
                  bench=right.checkbox("Benchmark speed and memory", value=field_default(EvalConfig, "bench"),
                                       key="q_bench"))
    try:
        backend_dtype = runtime.default_dtype()
    except LabError as e:  # a bad MLXQ_DTYPE
        error(e)
        st.stop()
    chosen["dtype"] = right.selectbox(
        "Compute dtype", list(runtime.DTYPES), index=list(runtime.DTYPES).index(backend_dtype), key="q_dtype",
        help=f"what the deployed model computes in ({backend_dtype} is this backend's default): size, speed and "
             "memory are measured in it; quality is always computed in float32 on the same quantized weights")
    return chosen


def _run(name: str, bits: list, settings: dict, right) -> None:
    """Run: the configurations as an eval job for the worker, or a sweep on the hosts of a hostfile."""
    where = right.radio("Run on", ("this machine", "the hosts of a hostfile"), key="q_where", horizontal=True,
                        help="this machine: the lab's worker process runs it. Hostfile: a sweep spread over several "
                             "machines with mlx.launch (this machine first in the file; docs/scale.md: several Macs)")
    hostfile = right.text_input("Hostfile (JSON, as mlx.distributed_config writes it)", key="q_hostfile",
                                placeholder="hosts.json") if where != "this machine" else ""
    if st.button("Run", type="primary", key="q_run", help="Queued for the worker: leave the page or reload, it goes "
                 "on; the sidebar shows its progress on every page"):
        try:
            configs = eval_configs(name, bits, **settings)
            if where == "this machine":
                submit("eval", KINDS["eval"].spec_of(configs))
            else:
                sweep = SweepConfig.covering(configs[1:] or configs, hostfile=hostfile.strip())
                submit("sweep", KINDS["sweep"].spec_of([sweep]))
        except LabError as e:
            error(e)
            st.stop()


def _export(name: str, info, bits: list, settings: dict) -> None:
    """One of the chosen configurations written as a folder other tools load, or a GGUF file: an export job."""
    with st.expander("Export a configuration: a folder mlx-lm (or the lab, for a ResNet) loads, or a GGUF file"):
        left, right = st.columns(2)
        width = left.selectbox("Bit width", bits, key="q_export_bits",
                               format_func=lambda b: settings["mode"] if b is None else str(b))
        form = right.selectbox("Format", formats_for(info.kind), key=f"q_export_format_{info.kind}",
                               help="mlx: a folder mlx_lm.load reads (the lab's own folder for a ResNet); gguf: one "
                                    "file llama.cpp, Ollama and LM Studio load")
        out = left.text_input("Write to", key="q_export_out", placeholder="exports/my-model"
                              + (".gguf" if form == "gguf" else ""), help="a folder (a .gguf file for GGUF), "
                              "relative to the folder the dashboard was started in")
        force = right.checkbox("Replace a folder or file the lab did not write", key="q_export_force")
        if st.button("Export", key="q_export"):
            try:
                config = export_config(name, width, out, form, force, **settings)
                submit("export", KINDS["export"].spec_of([config]))
            except LabError as e:
                error(e)
        job = follow(("export",), "q_export")
        if job is not None and job.state == "done":
            st.success(f"Exported ({job.title}): {job.result['path']}")


def _result() -> None:
    """The newest run's rows beside full precision, with its details and the trade-off chart."""
    job = follow(("eval", "sweep"), "q")
    rows = (job.result or {}).get("rows") if job is not None and job.state == "done" else None
    if not rows:
        return
    table_rows, notes = comparison_table(rows)
    st.subheader("Result")
    st.caption(f"The latest run: {job.title}, finished {job.finished.replace('T', ' ')} UTC (job {job.id}; every "
               "finished run's rows are on the Trade-offs page).")
    result = pd.DataFrame(table_rows)
    main = [c for c in result.columns if c not in COMPARISON_DETAILS]
    table(result, comparison_columns(main))
    for note in speed_notes(rows):
        st.info(note)
    df = frame(rows)  # the chart before the notes: on a projector it stays above the fold
    st.plotly_chart(tradeoff_chart(df, "size_mb", df["metric"].iloc[0]), width="stretch", key="q_chart")
    with st.expander("How these numbers were measured: intervals, protocols, memory"):
        for note in notes:
            st.caption(note)
    with st.expander("Details: agreement or KL with full precision, throughput, peak memory, compute dtype, items "
                     "measured, where each number came from"):
        st.table(result[["configuration", *COMPARISON_DETAILS]].set_index("configuration"))


if __name__ == "__main__":
    page()
