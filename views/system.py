"""System: process and MLX memory, CPU, refreshing every second (also while a run goes on in another tab)."""
import pandas as pd
import plotly.express as px
import streamlit as st

from core import runtime
from views._ui import mb, memory_monitor

st.title("System")
env = runtime.describe()
st.caption(f"MLX {env['mlx']} on {env['backend'].upper()} ({env['device']}), {env['platform']}, "
           f"{env['cpu_count']} CPUs" + (f", OpenBLAS {'active' if env['openblas'] else 'MISSING'}"
                                         if env["openblas"] is not None else ""))
monitor = memory_monitor()


@st.fragment(run_every=1.0)
def live() -> None:
    history = monitor.history()
    if not history:
        st.info("Collecting the first readings...")
        return
    now = history[-1]
    cols = st.columns(5)
    cols[0].metric("Process RSS", mb(now["rss_bytes"]))
    cols[1].metric("MLX active", mb(now["mlx_active_bytes"]))
    cols[2].metric("MLX peak", mb(now["mlx_peak_bytes"]))
    cols[3].metric("System memory used", f"{now['system_used_bytes'] / now['system_total_bytes']:.0%}")
    cols[4].metric("CPU", f"{now['cpu_percent']:.0f} %")
    df = pd.DataFrame(history)
    df["seconds ago"] = df["time"] - now["time"]
    names = {"rss_bytes": "process RSS", "mlx_active_bytes": "MLX active", "mlx_peak_bytes": "MLX peak"}
    long = df.rename(columns=names).melt(id_vars="seconds ago", value_vars=list(names.values()),
                                         var_name="reading", value_name="bytes")
    long["MB"] = long["bytes"] / 1e6
    fig = px.line(long, x="seconds ago", y="MB", color="reading", title="Memory over the last 10 minutes")
    st.plotly_chart(fig, width="stretch", key="s_memory_chart")


live()
