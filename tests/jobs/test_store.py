"""The job records on disk: a round trip, a dead worker's job read as interrupted, a damaged record skipped, a
claim that several real processes racing for the queue never share, and progress writes that are few but never
lose the latest."""
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import REPO
from core.errors import LabError
from core.jobs.process import alive, identity
from core.jobs.store import INTERRUPTED, Job, JobStore, new_id
from core.jobs.worker import WRITE_EVERY_S, JobCancelled, Reporter
from jobsupport import jobs_dir  # noqa: F401  (fixture)

SPEC = {"configs": [{"model": "resnet20-mlxq", "bits": 4, "limit": 100, "bench": False}], "use_cache": True}


def dead_identity() -> dict:
    """The identity of a real process that has exited since."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ident = identity(child.pid)
    child.kill()
    child.wait()
    return ident


def test_round_trip_newest_first_and_default_folder(jobs_dir):
    store = JobStore()
    assert store.directory == jobs_dir
    first = store.submit("eval", SPEC)
    second = store.submit("sensitivity", {"model": "resnet20-mlxq", "bits": [4]}, title="mine")
    assert first.id < second.id and first.state == "queued" and "resnet20-mlxq" in first.title
    assert store.get(first.id) == first
    assert [j.id for j in store.jobs()] == [second.id, first.id]
    assert second.title == "mine" and {j.id for j in store.active()} == {first.id, second.id}
    claimed = store.claim_next(identity())
    assert claimed.id == first.id and claimed.state == "running" and alive(claimed.worker)
    store.update(claimed, 0.5, "half way")
    assert (store.get(first.id).progress, store.get(first.id).message) == (0.5, "half way")
    store.finish(claimed, "done", "done", result={"rows": [1]})
    again = store.get(first.id)
    assert again.state == "done" and again.progress == 1.0 and again.result == {"rows": [1]} and again.finished
    assert [j.id for j in store.active()] == [second.id]
    assert json.loads(store.path(first.id).read_text())["state"] == "done"


def test_bad_kind_id_and_spec_are_refused_in_words(jobs_dir):
    store = JobStore()
    with pytest.raises(LabError, match="Unknown job kind 'bake'.*eval"):
        store.submit("bake", {})
    with pytest.raises(LabError, match="No job '../etc'"):
        store.get("../etc")
    with pytest.raises(LabError, match="No job"):
        store.get(new_id())
    with pytest.raises(LabError, match="plain values"):
        store.submit("eval", {"configs": [object()]})
    with pytest.raises(LabError, match="a dict"):
        store.submit("eval", ["resnet20"])
    assert store.submit("sensitivity", {"bits": 4}).title == "sensitivity of ? at 4 bits"  # checked when it runs


def test_a_dead_workers_job_reads_interrupted(jobs_dir):
    store = JobStore()
    killed, reused = store.submit("eval", SPEC), store.submit("eval", SPEC)
    store.claim_next(dead_identity())
    store.claim_next({**identity(), "create_time": identity()["create_time"] - 100})  # our pid, another process
    for job_id in (killed.id, reused.id):
        job = store.get(job_id)
        assert job.state == "interrupted" and job.message == INTERRUPTED and job.finished
        assert "killed or crashed" in job.message and "submit it again" in job.message
    assert json.loads(store.path(killed.id).read_text())["state"] == "interrupted"  # rewritten, not only read
    assert store.active() == []


def test_a_damaged_record_is_reported_and_skipped(jobs_dir):
    store = JobStore()
    good = store.submit("eval", SPEC)
    half, foreign = new_id(), new_id()
    store.path(half).write_text('{"id": "' + half + '", "kind": "ev')
    store.path(foreign).write_text(json.dumps({"hello": 1}))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        listed = store.jobs()
    assert [j.id for j in listed] == [good.id]
    with pytest.warns(RuntimeWarning), pytest.raises(LabError, match="damaged"):
        store.get(half)
    assert store.claim_next(identity()).id == good.id
    with pytest.warns(RuntimeWarning):
        assert store.claim_next(identity()) is None  # the damaged ones are never claimed


def test_cancel_a_queued_job_at_once_and_mark_a_running_one(jobs_dir):
    store = JobStore()
    queued, running = store.submit("eval", SPEC), store.submit("eval", SPEC)
    assert store.request_cancel(queued.id).state == "cancelled"
    assert store.get(queued.id).finished and not store.cancel_requested(queued.id)
    claimed = store.claim_next(identity())
    assert claimed.id == running.id  # the cancelled one is never claimed
    assert store.request_cancel(running.id).state == "running" and store.cancel_requested(running.id)
    store.finish(claimed, "cancelled", "stopped")
    assert not store.cancel_requested(running.id)  # the marker goes with the job's end
    assert store.request_cancel(running.id).state == "cancelled"


CLAIMER = """
import sys, time
from pathlib import Path
from core.jobs.process import identity
from core.jobs.store import JobStore
store, me, got = JobStore(sys.argv[1]), identity(), []
while not Path(sys.argv[2]).exists():  # all start together
    time.sleep(0.005)
while (job := store.claim_next(me)) is not None:
    got.append(job.id)
print(" ".join(got))
"""


def test_racing_workers_never_claim_the_same_job(jobs_dir, tmp_path):
    store, go = JobStore(), tmp_path / "go"
    ids = [store.submit("eval", SPEC).id for _ in range(24)]
    racers = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(jobs_dir), str(go)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(0.5)
    go.touch()
    shares = [r.communicate(timeout=60)[0].split() for r in racers]
    claimed = [job_id for share in shares for job_id in share]
    assert sorted(claimed) == ids and max(Counter(claimed).values()) == 1
    assert {j.state for j in store.jobs()} == {"interrupted"}  # their claimers have exited since


def test_job_from_dict_refuses_what_is_not_a_record():
    with pytest.raises(ValueError):
        Job.from_dict({"id": "x", "kind": "eval", "spec": {}, "state": "sleeping"})
    assert Job.from_dict({"id": "x", "kind": "eval", "spec": {}, "state": "done", "later": 1}).state == "done"


def test_progress_is_throttled_the_latest_reaches_the_record_and_cancel_raises(jobs_dir):
    store = JobStore()
    store.submit("eval", SPEC)
    job = store.claim_next(identity())
    reporter = Reporter(store, job)
    for i in range(50):
        reporter(i / 100, f"step {i}")
    on_disk = store.get(job.id)
    assert on_disk.message == "step 0"  # the first is written, the burst after it is not
    time.sleep(WRITE_EVERY_S + 0.3)
    assert (store.get(job.id).message, store.get(job.id).progress) == ("step 49", 0.49)  # nor lost
    time.sleep(WRITE_EVERY_S + 0.05)
    reporter(0.6, "late")
    reporter(0.7, "later")
    reporter.close()
    time.sleep(WRITE_EVERY_S + 0.1)
    assert store.get(job.id).message == "late"  # closed: the job's end state comes next, nothing after it
    store.request_cancel(job.id)
    with pytest.raises(JobCancelled):
        reporter(0.8, "after cancel")
