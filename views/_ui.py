"""Helpers shared by the dashboard pages: cached models, errors, demo mode. No inference or metrics here."""
from __future__ import annotations

import logging
from dataclasses import fields

import streamlit as st

from core.deploy import ids
from core.deploy.engines import Engines, ModelPool
from core.errors import LabError
from core.models import registry as models
from core.report.demo import demo_rows
from core.report.results import all_result_rows, results_signature
from core.report.status import MemoryMonitor
from core.report.tables import Column

log = logging.getLogger("mlxq.dashboard")

PLAYGROUND_TAGS = ("fp", "q8", "q6", "q5", "q4", "q4g32", "q3g32", "q2g32", "mxfp4", "nvfp4", "mxfp8")
# Plotly's toolbar on the charts people keep: the camera icon downloads a PNG at twice the screen's resolution.
PLOTLY_CONFIG = {"toImageButtonOptions": {"format": "png", "scale": 2}, "displaylogo": False}
PLAYGROUND_MEMORY_BYTES = 2 * 1024**3  # models kept loaded beyond this are evicted, least recently used first


@st.cache_resource
def engines() -> Engines:
    """The dashboard process's engines (the same text engine and model pool the API server uses), shared by
    every session; models load on first use, least recently used evicted beyond the pool's budget."""
    allowed = [f"{name}@{tag}" for name in models.REGISTRY for tag in PLAYGROUND_TAGS]
    return Engines.start(ModelPool(allowed, PLAYGROUND_MEMORY_BYTES), max_batch=8, max_queue=32,
                         max_vision_queue=64)


def deployed(name: str, tag: str) -> ids.Deployed:
    """One shared, never-mutated model per (name, quantization), from the engines' pool."""
    pool = engines().pool
    model_id = f"{name}@{tag}"
    if model_id in pool.loaded():
        return pool.get(model_id)
    with st.spinner("Loading and quantizing the model..."):
        return pool.get(model_id)


@st.cache_resource
def memory_monitor() -> MemoryMonitor:
    return MemoryMonitor()


@st.cache_data(max_entries=4, show_spinner=False)
def _rows(signature: tuple, demo: bool) -> list[dict]:
    return demo_rows() if demo else all_result_rows()


def result_rows(demo: bool) -> list[dict]:
    """Measured rows (all, or the demo sweep's), re-read from disk only when a row was written or removed."""
    return _rows(results_signature(), demo)


def error_message(e: Exception) -> str:
    """What the page says about `e`: a LabError's text is written for the user. Anything else is a bug: its
    traceback goes to the dashboard's log, and the message says what failed in words, without Python's class
    names."""
    if isinstance(e, LabError):
        return str(e)
    log.error("dashboard error", exc_info=e)
    detail = str(e).strip()
    return ("Something went wrong" + (f": {detail}" if detail else "") +
            ". The details are in the dashboard's log (the terminal running `./lab dashboard`).")


def error(e: Exception) -> None:
    st.error(error_message(e))


DEMO_KEY = "demo_mode"
_DEMO_KEPT = "demo_mode_kept"  # a plain key: Streamlit drops a widget's state on a page that does not draw it


def _keep_demo_choice() -> None:
    st.session_state[_DEMO_KEPT] = st.session_state[DEMO_KEY]


def demo_toggle() -> bool:
    """The sidebar's Demo mode toggle; the choice holds across pages, including pages without the toggle."""
    st.session_state[DEMO_KEY] = st.session_state.get(_DEMO_KEPT, False)
    return st.sidebar.toggle("Demo mode", key=DEMO_KEY, on_change=_keep_demo_choice,
                             help="Show only the prepared demo sweep (made by `./lab demo`), so every chart is "
                                  "populated in seconds. Applies to the Overview and Trade-offs pages.")


def column_config(columns: dict[str, Column]) -> dict:
    """Streamlit column config from core.report.tables' column specs: labels, units, number formats, help."""
    config = {}
    for key, c in columns.items():
        width = "medium" if c.wide else None
        config[key] = (st.column_config.NumberColumn(c.label, format=c.format, help=c.help, width=width)
                       if c.format else st.column_config.TextColumn(c.label, help=c.help, width=width))
    return config


def table(df, columns: dict[str, Column], **kwargs) -> None:
    """A dataframe with readable column labels and units, only the columns `df` has, and "—" where a row has no
    value (never "None")."""
    shown = {k: c for k, c in columns.items() if k in df.columns}
    st.dataframe(df, hide_index=True, width="stretch", column_config=column_config(shown),
                 column_order=list(shown), placeholder="—", **kwargs)


def chart(fig, key: str) -> None:
    """A Plotly figure across the page, with the PNG download (PLOTLY_CONFIG)."""
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG, key=key)


def field_default(config_cls, name: str):
    """A config field's own default, for a form to start from (a page decides no default of its own)."""
    return next(f.default for f in fields(config_cls) if f.name == name)


def mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f} MB"


def model_label(name: str) -> str:
    """A built-in model as a picker names it: with its title, and marked when its weights are not on this machine
    (the imported ResNets come with the data mirror), so a bare clone does not offer what fails on use."""
    info = models.REGISTRY[name]
    missing = info.kind == "vision" and not models.vision_ready(name)
    return f"{name} — {info.title}" + (" (needs the data mirror: not on this machine)" if missing else "")
