"""System: the job worker's memory (it runs the Quantize and Sensitivity jobs), this dashboard's own, and the
machine's, refreshing every second, with a chart of the last ten minutes."""
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
    "Worker RSS": "Resident memory of the job worker, the process that runs the Quantize and Sensitivity pages' "
                  "jobs (and `./lab jobs`): its models, data and MLX buffers. This is the number to watch during "
                  "a run.",
    "Worker MLX active": "Bytes in MLX arrays alive now in the worker: the model being quantized or measured and "
                         "the activations of its current step.",
    "Worker MLX peak": "The highest MLX active memory in the worker since its last reset (each speed benchmark "
                       "resets it at its start).",
    "Process RSS": "Resident memory of this dashboard process, from the operating system: Python, the libraries, "
                   "every model and dataset loaded, and MLX's buffers (active and cached). The lab keeps freed heap "
                   "pages for reuse, so it stays near its high-water mark.",
    "MLX active": "Bytes in MLX arrays alive now in this dashboard process: the Playground's models and data, "
                  "not the jobs (those run in the worker).",
    "MLX peak": "The highest MLX active memory in this dashboard process since its last reset (a speed benchmark "
                "resets it at its start; the jobs' benchmarks run in the worker).",
    "MLX cache": "Freed MLX buffers kept for reuse: counted in the process RSS, not in MLX active.",
    "System memory used": "All processes on this machine: memory in use as a share of the total.",
    "CPU": "All processes on this machine: busy share of every core together.",
}


def worker_readings(now: dict) -> list[tuple[str, str]]:
    return [("Worker RSS", mb(now["worker_rss_bytes"])), ("Worker MLX active", mb(now["worker_mlx_active_bytes"])),
            ("Worker MLX peak", mb(now["worker_mlx_peak_bytes"]))]


def readings(now: dict) -> list[tuple[str, str]]:
    return [("Process RSS", mb(now["rss_bytes"])),
            ("System memory used", f"{now['system_used_bytes'] / now['system_total_bytes']:.0%}"),
            ("CPU", f"{now['cpu_percent']:.0f} %"), ("MLX active", mb(now["mlx_active_bytes"])),
            ("MLX peak", mb(now["mlx_peak_bytes"])), ("MLX cache", mb(now["mlx_cache_bytes"]))]


def metrics(values: list[tuple[str, str]]) -> None:
    for col, (label, value) in zip(st.columns(3), values):
        col.metric(label, value, help=READING_HELP[label])


CHART = {"worker_rss_bytes": "worker RSS", "worker_mlx_active_bytes": "worker MLX active", "rss_bytes": "dashboard RSS",
         "mlx_active_bytes": "dashboard MLX active"}


@st.fragment(run_every=1.0)
def live() -> None:
    history = monitor.history()
    if not history:
        st.info("Collecting the first readings...")
        return
    now = history[-1]
    st.subheader("Job worker")
    if "worker_rss_bytes" in now:
        job = now.get("worker_job")
        st.caption(f"Process {now['worker_pid']}, " + (f"running job {job}." if job else "idle, waiting for jobs."))
        metrics(worker_readings(now))
    else:
        st.caption("No worker is running: the Quantize and Sensitivity pages start one when they submit a job.")
    st.subheader("This dashboard and the machine")
    values = readings(now)
    metrics(values[:3])
    metrics(values[3:])
    df = pd.DataFrame(history)
    df["seconds ago"] = df["time"] - now["time"]
    shown = {k: v for k, v in CHART.items() if k in df}
    long = df.rename(columns=shown).melt(id_vars="seconds ago", value_vars=list(shown.values()), var_name="reading",
                                         value_name="bytes").dropna()
    long["MB"] = long["bytes"] / 1e6
    fig = px.line(long, x="seconds ago", y="MB", color="reading", title="Memory over the last 10 minutes")
    st.plotly_chart(fig, width="stretch", key="s_memory_chart")


live()
