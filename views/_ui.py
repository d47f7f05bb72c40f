"""Helpers shared by the dashboard pages: cached models, errors, demo mode. No inference or metrics here."""
from __future__ import annotations

import streamlit as st

from core.deploy import ids
from core.errors import LabError
from core.report.demo import demo_rows
from core.report.results import all_result_rows, results_signature
from core.report.status import MemoryMonitor

PLAYGROUND_TAGS = ("fp", "q8", "q6", "q5", "q4", "q4g32", "q3g32", "q2g32", "mxfp4", "nvfp4", "mxfp8")


@st.cache_resource(max_entries=6, show_spinner="Loading and quantizing the model...")
def deployed(name: str, tag: str) -> ids.Deployed:
    """One shared, never-mutated model per (name, quantization)."""
    info, spec = ids.parse_model_id(f"{name}@{tag}")
    return ids.load_deployed(info, spec)


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
