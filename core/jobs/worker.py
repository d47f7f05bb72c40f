"""The worker: a process of its own that takes queued jobs one at a time and runs them, so a run survives the page,
the browser tab or the terminal that asked for it. One worker per jobs folder (a lock it holds while it lives);
`worker.json` beside the records names it (pid and creation time, so a reused pid is not mistaken for it), and
`worker.log` keeps its output and the tracebacks of jobs that failed unexpectedly."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager

import psutil

from core import settings
from core.cache import atomic_write_text
from core.errors import LabError
from core.jobs import process
from core.jobs.kinds import KINDS
from core.jobs.readings import ReadingsPublisher
from core.jobs.store import Job, JobStore, now_iso

HEARTBEAT, LOG = "worker.json", "worker.log"
WRITE_EVERY_S = 0.25  # progress reaches the record at most this often: readers see it move, disks are spared
BEAT_EVERY_S = 5.0
TAKEOVER_WAIT_S = 5.0  # a new worker waits this long for one that is just exiting to let go of the folder
STOPPED = ("the worker was stopped while this job ran; configurations it finished are cached; submit it again to "
           "compute the rest")


class JobCancelled(Exception):
    """Raised from a job's progress callback once its cancel marker exists: the run unwinds at its next step."""


class WorkerStopped(BaseException):
    """SIGTERM: a BaseException, so no `except Exception` in the running code swallows it."""


class Reporter:
    """A job's progress callback: the record is rewritten at most every WRITE_EVERY_S, and the latest values are
    written when that interval is up even if no further call comes (a long silent step shows its real message);
    a requested cancel raises JobCancelled."""

    def __init__(self, store: JobStore, job: Job, beat=None):
        self.store, self.job, self.beat = store, job, beat or (lambda: None)
        self.written = self.beaten = 0.0
        self._lock, self._timer, self._dirty, self._closed = threading.Lock(), None, False, False

    def __call__(self, fraction: float, message: str) -> None:
        if self.store.cancel_requested(self.job.id):
            raise JobCancelled()
        with self._lock:
            self.job.progress, self.job.message = min(max(float(fraction), 0.0), 1.0), str(message)
            self._dirty = True
            wait = self.written + WRITE_EVERY_S - time.monotonic()
            if wait <= 0 or fraction >= 1.0:
                self._write()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._flush)
                self._timer.daemon = True
                self._timer.start()
        if time.monotonic() - self.beaten >= BEAT_EVERY_S:
            self.beat()
            self.beaten = time.monotonic()

    def _write(self) -> None:  # with the lock held
        self.store.update(self.job)
        self.written, self._dirty = time.monotonic(), False

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty and not self._closed:
                self._write()

    def close(self) -> None:
        """No write after this: the job's end state is written next and must stay the last."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()


def run_job(store: JobStore, job: Job, beat=None) -> Job:
    """Run one claimed job to its end state; only WorkerStopped and KeyboardInterrupt propagate (after the job is
    marked interrupted)."""
    reporter = Reporter(store, job, beat)
    try:
        try:
            if job.kind not in KINDS:
                raise LabError(f"Unknown job kind {job.kind!r}; the kinds are {', '.join(KINDS)}.")
            reporter(0.0, "starting")
            result = KINDS[job.kind].run_job(job.spec, reporter)
        finally:
            reporter.close()
    except JobCancelled:
        return store.finish(job, "cancelled", "stopped at a step boundary; configurations it finished are cached")
    except LabError as error:
        return store.finish(job, "failed", str(error), error=str(error))
    except (WorkerStopped, KeyboardInterrupt):
        store.finish(job, "interrupted", STOPPED)
        raise
    except Exception as error:
        print(f"job {job.id} ({job.kind}) failed:", file=sys.stderr)
        traceback.print_exc()
        detail = str(error).strip().rstrip(".")
        text = (f"Something went wrong{': ' + detail if detail else ''}. The details are in the worker's log "
                f"({store.directory / LOG}).")
        return store.finish(job, "failed", text, error=text)
    return store.finish(job, "done", "done", result=result)


def read_heartbeat(store: JobStore) -> dict | None:
    try:
        beat = json.loads((store.directory / HEARTBEAT).read_text())
        return beat if isinstance(beat, dict) else None
    except (OSError, ValueError):
        return None


def live_worker(store: JobStore) -> dict | None:
    """The heartbeat of the worker serving `store`, if that process is alive."""
    beat = read_heartbeat(store)
    return beat if process.alive(beat) else None


def _beat(store: JobStore, me: dict, job_id: str | None = None, starting: bool = False) -> None:
    """`starting`: written by the process that spawned the worker, until the worker writes its own."""
    atomic_write_text(store.directory / HEARTBEAT,
                      json.dumps({**me, "heartbeat": now_iso(), "job": job_id, "starting": starting}))


def _clear_beat(store: JobStore, me: dict) -> None:
    beat = read_heartbeat(store)
    if beat and beat.get("pid") == me["pid"]:
        (store.directory / HEARTBEAT).unlink(missing_ok=True)


@contextmanager
def _folder_lock(store: JobStore, name: str, wait_s: float | None):
    """An exclusive lock file in the jobs folder; yields whether it was taken (waits `wait_s`, None: forever)."""
    store.directory.mkdir(parents=True, exist_ok=True)
    with open(store.directory / name, "a") as handle:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if wait_s is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.1)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the job's record is being written as interrupted
    raise WorkerStopped()


def run_worker(store: JobStore | None = None, idle_exit_s: float = 600, poll_s: float = 0.5) -> int:
    """Run queued jobs one at a time until none has come for `idle_exit_s` seconds or SIGTERM; exits at once
    (returning 0) when another worker already serves the folder."""
    store = store or JobStore()
    me = process.identity()
    with _folder_lock(store, "worker.lock", TAKEOVER_WAIT_S) as held:
        if not held:
            print(f"another worker serves {store.directory}; this one exits", file=sys.stderr)
            return 0
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
        print(f"worker {me['pid']} serving {store.directory}", file=sys.stderr, flush=True)
        try:
            _serve(store, me, idle_exit_s, poll_s)
        except WorkerStopped:
            print(f"worker {me['pid']} stopped", file=sys.stderr)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            _clear_beat(store, me)
    return 0


def _serve(store: JobStore, me: dict, idle_exit_s: float, poll_s: float) -> None:
    """The loop: claim, run, repeat; before leaving, the heartbeat goes first and the queue is checked once more,
    so a job submitted while the worker decided to leave is run, or finds no live worker and starts one."""
    _beat(store, me)
    store.prune()
    readings = ReadingsPublisher(store, me["pid"])
    try:
        _loop(store, me, idle_exit_s, poll_s, readings)
    finally:
        readings.stop()


def _loop(store: JobStore, me: dict, idle_exit_s: float, poll_s: float, readings: ReadingsPublisher) -> None:
    idle_since = beaten = time.monotonic()
    while True:
        job = store.claim_next(me)
        if job is None and time.monotonic() - idle_since >= idle_exit_s:
            _clear_beat(store, me)
            job = store.claim_next(me)
            if job is None:
                return
        if job is not None:
            _beat(store, me, job.id)
            readings.job = job.id
            done = run_job(store, job, beat=lambda: _beat(store, me, job.id))
            readings.job = None
            print(f"job {done.id} ({done.kind}): {done.state}", file=sys.stderr, flush=True)
            _beat(store, me)
            idle_since = beaten = time.monotonic()
            continue
        if time.monotonic() - beaten >= BEAT_EVERY_S:
            _beat(store, me)
            beaten = time.monotonic()
        time.sleep(poll_s)


def ensure_worker(store: JobStore | None = None) -> int:
    """The pid of the worker serving `store`, started (detached, its output in worker.log) when none is alive.
    Callers that race are serialised by a lock, so they start one worker between them."""
    store = store or JobStore()
    with _folder_lock(store, "spawn.lock", None):
        beat = live_worker(store)
        if beat is not None:
            return beat["pid"]
        with open(store.directory / LOG, "ab") as log:
            child = subprocess.Popen([sys.executable, "-m", "core", "jobs", "worker"], cwd=settings.REPO_ROOT,
                                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "MLXQ_JOBS": str(store.directory)})
        try:
            _beat(store, process.identity(child.pid), starting=True)  # names it at once
        except psutil.Error:  # it has already exited (its log says why); the next call starts another
            pass
        return child.pid
