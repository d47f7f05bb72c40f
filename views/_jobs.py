"""Runs as background jobs (core.jobs) seen from the dashboard: pages submit a run to the worker process and follow
its record, so leaving the page, reloading the browser or opening a second tab never loses or blocks one. The
sidebar of every page lists the jobs in progress with a Cancel button each."""
from __future__ import annotations

from datetime import datetime, timezone

import streamlit as st

from core.errors import LabError
from core.jobs.store import Job, JobStore
from core.jobs.worker import ensure_worker, live_worker

STATE_NOTES = {"queued": "waiting for the worker", "running": "running", "done": "done", "failed": "failed",
               "cancelled": "cancelled", "interrupted": "interrupted"}
CANCELLING = "cancelling after the current step"
RECENT = 3  # finished jobs the sidebar still names
ORPHAN_S = 10  # a job queued this long with no live worker gets one (submitting starts one; this covers a worker lost)
_SEEN = "jobs_seen_active"  # the active job ids the panel showed last time: one that ends refreshes the page


def store() -> JobStore:
    return JobStore()  # settings.jobs_dir() read each time: tests point MLXQ_JOBS elsewhere


def submit(kind: str, spec: dict) -> Job:
    """Queue a run and make sure a worker is there to take it."""
    jobs = store()
    job = jobs.submit(kind, spec)
    ensure_worker(jobs)
    return job


def latest(kinds: tuple[str, ...]) -> Job | None:
    """The newest job of one of `kinds`, from the records on disk (the same after a reload and in every tab)."""
    return next((job for job in store().jobs() if job.kind in kinds), None)


def cancel(job_id: str) -> None:
    try:
        store().request_cancel(job_id)
    except LabError as e:  # the record went away meanwhile
        st.session_state["jobs_error"] = str(e)


def _waited(job: Job) -> float:
    """Seconds since `job` was submitted."""
    return (datetime.now(timezone.utc) - datetime.fromisoformat(job.created)).total_seconds()


def cancelling(job: Job) -> bool:
    """A running job asked to stop: seen in every tab at once, since the marker is on disk."""
    return job.state == "running" and store().cancel_requested(job.id)


def job_line(job: Job, active: list[Job] | None = None) -> str:
    """The job's title and state; a queued one says how many jobs the worker takes first (it runs one at a time,
    oldest first), counted in `active` when the caller has already read the records."""
    line = f"{job.title}: {STATE_NOTES[job.state]}"
    if cancelling(job):
        return f"{job.title}: {CANCELLING}"
    if job.state == "queued" and (ahead := sum(other.id < job.id for other in
                                               (store().active() if active is None else active))):
        line += f" ({ahead} ahead)"
    elif job.state == "running" and job.message:
        line += f" — {job.message}"
    return line


@st.fragment(run_every=1.0)
def jobs_panel() -> None:
    """Every page's sidebar: each job in progress with its bar and Cancel, the last few that ended; when a job
    this session saw running ends, the whole page reruns so it shows the result."""
    jobs = store().jobs()
    active = [job for job in jobs if job.active]
    if any(job.state == "queued" and _waited(job) > ORPHAN_S for job in active) and live_worker(store()) is None:
        ensure_worker(store())  # the worker left (idle, or killed) while a job waited: start another
    ended = [job for job in jobs if not job.active][:RECENT]
    seen = st.session_state.get(_SEEN, set())
    st.session_state[_SEEN] = {job.id for job in active}
    st.markdown("**Jobs**")
    if message := st.session_state.pop("jobs_error", None):
        st.caption(message)
    if not active:
        st.caption("No run in progress. Runs go to a worker process: leave the page or reload, they go on.")
    for job in active:
        st.progress(job.progress, text=job_line(job, active))
        st.button("Cancel", key=f"jobs_cancel_{job.id}", on_click=cancel, args=(job.id,), disabled=cancelling(job),
                  help="Stops the run at its next step; what it finished stays cached.")
    for job in ended:
        st.caption(f"{job.title}: {STATE_NOTES[job.state]}" + (f" — {job.error}" if job.error else ""))
    if seen - st.session_state[_SEEN]:
        st.rerun()  # a job ended: the page (not only this panel) shows its result


def follow(kinds: tuple[str, ...], key: str) -> Job | None:
    """A page's view of its newest job of one of `kinds`: live progress and Cancel while it runs, its message once it
    stopped without a result. Returns the job (None if there never was one) for the page to show a result."""
    job = latest(kinds)
    if job is None:
        return None
    if job.active:
        _live(job.id, key)
    elif job.state == "failed":
        st.error(job.error or "The run failed; the worker's log has the details.")
    elif job.state in ("cancelled", "interrupted"):
        st.warning(f"The last run was {job.state}: {job.message}")
    return job


@st.fragment(run_every=1.0)
def _live(job_id: str, key: str) -> None:
    """Redrawn every second from the record; when the job ends, the whole page reruns to show how it ended."""
    try:
        job = store().get(job_id)
    except LabError:
        return
    if not job.active:
        st.rerun()
    st.progress(job.progress, text=job_line(job))
    st.button("Cancel", key=f"{key}_cancel", on_click=cancel, args=(job.id,), disabled=cancelling(job),
              help="Stops the run at its next step; configurations it finished stay cached.")
