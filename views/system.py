"""System: process and MLX memory, CPU, refreshing every second (also while a run goes on in another tab)."""
import pandas as pd
import plotly.express as px
import streamlit as st

from core import runtime
from views._ui import mb, memory_monitor

st.title("System")
env = runtime.describe()
st.caption(f"MLX {env['mlx']} on {env['backend'].upper()} ({env['device']}), {env['platform']}, "
           f"{env['cpu_count']} CPUs" + (f", BLAS {env['blas_kernel'] or 'reference (slow): MISSING a tuned one'}"
                                         if env["fast_blas"] is not None else ""))
monitor = memory_monitor()


READING_HELP = {
    "Process RSS": "Resident memory of this dashboard process, from the operating system: Python, the libraries, "
                   "every model and dataset loaded, and MLX's buffers (active and cached). The lab keeps freed heap "
                   "pages for reuse, so it stays near its high-water mark.",
    "MLX active": "Bytes in MLX arrays alive now, in the whole process: loaded weights (Playground models "
                  "included), data on the device and the activations of work in progress.",
    "MLX peak": "The highest MLX active memory since the last reset: each speed benchmark resets it at its start, "
                "so after a run it is the weights plus the activations of the benchmark's largest input.",
    "MLX cache": "Freed MLX buffers kept for reuse: counted in the process RSS, not in MLX active.",
    "System memory used": "All processes on this machine: memory in use as a share of the total.",
    "CPU": "All processes on this machine: busy share of every core together.",
}


def readings(now: dict) -> list[tuple[str, str]]:
    return [("Process RSS", mb(now["rss_bytes"])),
            ("System memory used", f"{now['system_used_bytes'] / now['system_total_bytes']:.0%}"),
            ("CPU", f"{now['cpu_percent']:.0f} %"), ("MLX active", mb(now["mlx_active_bytes"])),
            ("MLX peak", mb(now["mlx_peak_bytes"])), ("MLX cache", mb(now["mlx_cache_bytes"]))]


@st.fragment(run_every=1.0)
def live() -> None:
    history = monitor.history()
    if not history:
        st.info("Collecting the first readings...")
        return
    now = history[-1]
    values = readings(now)
    for row in (values[:3], values[3:]):  # the process and machine, then MLX's own memory
        for col, (label, value) in zip(st.columns(3), row):
            col.metric(label, value, help=READING_HELP[label])
    df = pd.DataFrame(history)
    df["seconds ago"] = df["time"] - now["time"]
    names = {"rss_bytes": "process RSS", "mlx_active_bytes": "MLX active", "mlx_peak_bytes": "MLX peak",
             "mlx_cache_bytes": "MLX cache"}
    long = df.rename(columns=names).melt(id_vars="seconds ago", value_vars=list(names.values()),
                                         var_name="reading", value_name="bytes")
    long["MB"] = long["bytes"] / 1e6
    fig = px.line(long, x="seconds ago", y="MB", color="reading", title="Memory over the last 10 minutes")
    st.plotly_chart(fig, width="stretch", key="s_memory_chart")


live()
