"""Helpers shared by the dashboard pages: cached models, errors, demo mode. No inference or metrics here."""
from __future__ import annotations

import streamlit as st

from core import deploy, monitor
from core.errors import LabError

PLAYGROUND_TAGS = ("fp", "q8", "q6", "q5", "q4", "q4g32", "q3g32", "q2g32", "mxfp4", "nvfp4", "mxfp8")


@st.cache_resource(max_entries=6, show_spinner="Loading and quantizing the model...")
def deployed(name: str, tag: str) -> deploy.Deployed:
    """One shared, never-mutated model per (name, quantization)."""
    info, spec = deploy.parse_model_id(f"{name}@{tag}")
    return deploy.load_deployed(info, spec)


@st.cache_resource
def memory_monitor() -> monitor.MemoryMonitor:
    return monitor.MemoryMonitor()


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
