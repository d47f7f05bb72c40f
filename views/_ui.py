"""Helpers shared by the dashboard pages: cached models, errors, demo mode. No inference or metrics here."""
from __future__ import annotations

import streamlit as st

from core.deploy import ids
from core.deploy.engines import Engines, ModelPool
from core.errors import LabError
from core.models.registry import REGISTRY
from core.report.demo import demo_rows
from core.report.results import all_result_rows, results_signature
from core.report.status import MemoryMonitor

PLAYGROUND_TAGS = ("fp", "q8", "q6", "q5", "q4", "q4g32", "q3g32", "q2g32", "mxfp4", "nvfp4", "mxfp8")
PLAYGROUND_MEMORY_BYTES = 2 * 1024**3  # models kept loaded beyond this are evicted, least recently used first


@st.cache_resource
def engines() -> Engines:
    """The dashboard process's engines (the same text engine and model pool the API server uses), shared by
    every session; models load on first use, least recently used evicted beyond the pool's budget."""
    allowed = [f"{name}@{tag}" for name in REGISTRY for tag in PLAYGROUND_TAGS]
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


def error(e: Exception) -> None:
    """One clear message; a LabError's text is written for the user, anything else is summarised."""
    if isinstance(e, LabError):
        st.error(str(e))
    else:
        st.error(f"Something went wrong: {type(e).__name__}: {e}")


def demo_toggle() -> bool:
    return st.sidebar.toggle("Demo mode", key="demo_mode",
                             help="Show only the prepared demo sweep (made by `./lab demo`), so every chart is "
                                  "populated in seconds.")


def mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f} MB"
