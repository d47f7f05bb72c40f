"""When things go wrong: a worker killed mid-run (its job reads interrupted, the cache holds only whole entries,
submitting again finishes the rest), SIGTERM, and jobs that fail, each with a message in words."""
import os
import signal
import subprocess
import sys

import psutil

from conftest import REPO
from core.cache import ResultCache
from core.jobs.store import JobStore
from core.jobs.worker import ensure_worker, live_worker
from jobsupport import cli, jobs_dir, long_eval_spec, wait_for  # noqa: F401  (fixture)

FINAL = ("done", "failed", "cancelled", "interrupted")


def test_a_killed_worker_leaves_an_interrupted_job_and_whole_cache_entries(jobs_dir, tmp_path):
    store, spec = JobStore(), long_eval_spec(limit=500, widths=(8, 4, 3))
    job = store.submit("eval", spec)
    ensure_worker(store)
    running = wait_for(lambda: (j := store.get(job.id)).progress > 0.4 and j)  # the first width is cached
    assert running.state == "running"
    worker = psutil.Process(running.worker["pid"])
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    interrupted = store.get(job.id)
    assert interrupted.state == "interrupted" and "killed or crashed" in interrupted.message
    assert live_worker(store) is None
    results = ResultCache(tmp_path / "results")
    entries = sorted(results.directory.glob("*.json"))
    assert len(entries) >= 2 and all(results.read(path.stem) is not None for path in entries)  # 16 and 8 bits
    again = store.submit("eval", spec)
    ensure_worker(store)
    finished = wait_for(lambda: (j := store.get(again.id)).state in FINAL and j, timeout=90)
    assert finished.state == "done", finished.error
    rows = finished.result["rows"]
    assert [r["bits"] for r in rows] == [8, 4, 3] and rows[0]["cached"] and not rows[-1]["cached"]


def test_sigterm_interrupts_the_running_job_and_the_worker_exits(jobs_dir):
    store = JobStore()
    job = store.submit("eval", long_eval_spec())
    worker = subprocess.Popen([sys.executable, "-m", "core", "jobs", "worker"], cwd=REPO, env=dict(os.environ),
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: store.get(job.id).progress > 0.05)
    worker.terminate()
    _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    stopped = store.get(job.id)
    assert stopped.state == "interrupted" and "worker was stopped" in stopped.message
    assert "stopped" in log and not (jobs_dir / "worker.json").exists()


def test_failing_jobs_fail_with_a_message_in_words(jobs_dir):
    store = JobStore()
    unknown = store.submit("eval", {"configs": [{"model": "resnet99", "bits": 4}]})
    extra = store.submit("eval", {"configs": [{"model": "resnet20-mlxq", "colour": "red"}]})
    broken = store.submit("eval", {"configs": [{"model": "resnet20-mlxq", "bits": 4, "limit": "many"}]})
    empty = store.submit("sensitivity", {"bits": [4]})
    worker = cli("jobs", "worker", "--idle-exit", "1")
    assert worker.returncode == 0, worker.stderr
    jobs = {job.id: job for job in store.jobs()}
    assert {job.state for job in jobs.values()} == {"failed"}
    assert "Unknown model 'resnet99'" in jobs[unknown.id].error
    assert "no setting 'colour'" in jobs[extra.id].error
    assert "needs 'model'" in jobs[empty.id].error
    assert jobs[broken.id].error.startswith("Something went wrong: ")
    for job in jobs.values():
        assert job.message == job.error and "Error" not in job.error and "Traceback" not in job.error
    assert "Traceback" in worker.stderr  # the unexpected one, for whoever reads the worker's log
    listed = cli("jobs")
    assert listed.stdout.count("failed") == 4 and "Unknown model 'resnet99'" in listed.stdout
