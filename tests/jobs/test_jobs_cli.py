"""`./lab jobs` as a user runs it: submit starts a worker process that runs the job, `jobs wait` follows it, the
row lands in the result cache; cancel stops a queued and a running job; bad input is one error line."""
import json
import threading
import time

from core.cache import ResultCache
from core.jobs.process import alive
from core.jobs.store import JobStore
from core.jobs.worker import ensure_worker, live_worker
from jobsupport import FAST_EVAL, cli, jobs_dir, long_eval_spec, stop_worker, wait_for  # noqa: F401  (fixture)
from test_cli import assert_one_error_line


def test_submit_runs_in_a_worker_and_lands_in_the_cache(jobs_dir, tmp_path):
    submitted = cli("jobs", "submit", "eval", *FAST_EVAL, "--q-bits", "4")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert "worker" in submitted.stderr and job_id in submitted.stderr
    waited = cli("jobs", "wait", job_id, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert "q4g64: top1_accuracy" in waited.stdout and "state: done" in waited.stdout
    rows = [body for _, body in ResultCache(tmp_path / "results").items()]
    assert {(r["model"], r["bits"], r["n"]) for r in rows} == {("resnet20-mlxq", 4, 100), ("resnet20-mlxq", 16, 100)}
    listed = cli("jobs", "list", "--json")
    [job] = json.loads(listed.stdout)
    assert job["id"] == job_id and job["state"] == "done" and job["progress"] == 1.0
    [row] = job["result"]["rows"]
    assert row["bits"] == 4 and row["value"] == next(r["value"] for r in rows if r["bits"] == 4)
    assert job["worker"]["pid"] == live_worker(JobStore())["pid"]  # it stays, idle, for the next job
    table = cli("jobs").stdout
    assert job_id in table and "done" in table and "100 %" in table
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert shown == job


def test_bad_input_is_one_error_line(jobs_dir):
    assert_one_error_line(cli("jobs", "submit", "eval", "--model", "resnet99"), "Unknown model 'resnet99'")
    assert_one_error_line(cli("jobs", "submit", "eval", "--model", "resnet20-mlxq", "--q-bits", "4,7"), "--q-bits 7")
    assert_one_error_line(cli("jobs", "submit", "sensitivity", "--model", "nope/../x"), "Unknown model")
    assert_one_error_line(cli("jobs", "show", "20260101-000000-000000-abcd"), "No job")
    assert_one_error_line(cli("jobs", "wait"), "jobs wait")
    assert not JobStore().jobs() and live_worker(JobStore()) is None  # nothing queued, no worker started


def test_cancel_a_queued_job(jobs_dir):
    submitted = cli("jobs", "submit", "eval", *FAST_EVAL, "--q-bits", "4", "--no-worker")
    job_id = submitted.stdout.strip()
    assert "--no-worker" in submitted.stderr
    assert cli("jobs", "show", job_id, "--json").stdout.count('"queued"') == 1
    cancelled = cli("jobs", "cancel", job_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    waited = cli("jobs", "wait", job_id)
    assert waited.returncode == 1 and "state: cancelled" in waited.stdout
    assert live_worker(JobStore()) is None


def test_cancel_a_running_job(jobs_dir):
    store = JobStore()
    job = store.submit("eval", long_eval_spec())
    ensure_worker(store)
    wait_for(lambda: store.get(job.id).state == "running" and store.get(job.id).progress > 0.05)
    asked = time.monotonic()
    cancelled = cli("jobs", "cancel", job.id)
    assert cancelled.returncode == 0 and "asked to stop" in cancelled.stdout
    waited = cli("jobs", "wait", job.id, "--timeout", "30")
    assert waited.returncode == 1 and "state: cancelled" in waited.stdout
    stopped = store.get(job.id)
    assert stopped.state == "cancelled" and stopped.progress < 1 and time.monotonic() - asked < 10
    assert not store.cancel_requested(job.id) and live_worker(store) is not None  # the worker goes on


def test_racing_ensure_worker_calls_start_one_worker(jobs_dir):
    store, pids = JobStore(), []
    callers = [threading.Thread(target=lambda: pids.append(ensure_worker(store))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(pids) == 2 and pids[0] == pids[1]
    beat = wait_for(lambda: (b := live_worker(store)) and not b["starting"] and b)  # its own heartbeat
    assert beat["pid"] == pids[0] and alive(beat)
    assert ensure_worker(store) == pids[0]  # a live worker is reused
    stop_worker(jobs_dir)
    assert live_worker(store) is None and not (jobs_dir / "worker.json").exists()
