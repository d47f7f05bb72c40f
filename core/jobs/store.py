"""The job records: one JSON file per job in the jobs folder (settings.jobs_dir()), written atomically, so a page, a
terminal and a worker process can all read every job's state at any time and a crash never leaves half a record.

Who writes what: the submitter creates a record; the worker alone writes a running job's record (progress, end);
a page asks a running job to stop through a separate `<id>.cancel` marker that the worker polls, so two processes
never write the same file at once. The two transitions that can race (a worker claiming a queued job, a page
cancelling it) happen under one lock on the folder. Any reader turns a `running` record whose worker process is
gone into `interrupted`: no job stays "running" forever after a crash."""
from __future__ import annotations

import fcntl
import json
import re
import secrets
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from core import settings
from core.cache import atomic_write_text
from core.errors import LabError
from core.jobs import process

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
INTERRUPTED = ("the worker stopped while this job ran (killed or crashed); configurations it finished are cached; "
               "submit it again to compute the rest")
KEEP_FINISHED = 200  # finished jobs' records kept; older ones are removed when a worker starts
_ID = re.compile(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{4}")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    """UTC submission time to the microsecond, then a random tail: ids sort in submission order and never clash."""
    t = datetime.now(timezone.utc)
    return f"{t:%Y%m%d-%H%M%S}-{t.microsecond:06d}-{secrets.token_hex(2)}"


@dataclass
class Job:
    id: str
    kind: str
    spec: dict
    title: str = ""
    state: str = "queued"
    progress: float = 0.0  # 0..1
    message: str = ""
    created: str = ""  # ISO UTC, as are started and finished
    started: str | None = None
    finished: str | None = None
    worker: dict | None = None  # core.jobs.process.identity() of the process running it
    error: str | None = None  # for the user, in words
    result: dict | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        """The job a record holds; ValueError when it is not one (a foreign or damaged file)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not {"id", "kind", "spec"} <= d.keys() or d.get("state") not in STATES:
            raise ValueError("not a job record")
        return cls(**{k: v for k, v in d.items() if k in names})


class JobStore:
    def __init__(self, directory: Path | str | None = None):
        self.directory = Path(directory) if directory is not None else settings.jobs_dir()
        self._held = threading.local()  # how deep this thread is inside _locked()

    def __repr__(self) -> str:
        return f"JobStore({str(self.directory)!r})"

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.json"

    def cancel_path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.cancel"

    @contextmanager
    def _locked(self):
        """Exclusive across processes; the system releases it when its holder dies. Re-entrant within one store
        (a cancel reads its job under the lock, and reading may reconcile under it): a second flock of the same
        file from this process would wait for itself."""
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, job: Job) -> Job:
        atomic_write_text(self.path(job.id), json.dumps(job.as_dict(), indent=1))
        return job

    def _load(self, path: Path) -> Job | None:
        """The record as stored, or None (with a warning when it exists but is damaged)."""
        try:
            return Job.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as error:
            warnings.warn(f"job record {path.name} in {self.directory} is unreadable ({error}); it is skipped",
                          RuntimeWarning, stacklevel=3)
            return None

    def _reconciled(self, job: Job) -> Job:
        """A running job whose worker is gone is interrupted. Read again under the lock first: the worker may have
        written the job's end (and left) since `job` was read, and that end must not be overwritten."""
        if job.state != "running" or process.alive(job.worker):
            return job
        with self._locked():
            current = self._load(self.path(job.id))
            if current is None or current.state != "running" or current.worker != job.worker:
                return current or job
            current.state, current.message, current.finished = "interrupted", INTERRUPTED, now_iso()
            return self._write(current)

    def _ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if _ID.fullmatch(p.stem))

    def submit(self, kind: str, spec: dict, title: str | None = None) -> Job:
        """Queue a job of `kind` (core.jobs.kinds.KINDS); its settings are checked when it runs."""
        from core.jobs.kinds import KINDS

        if kind not in KINDS:
            raise LabError(f"Unknown job kind {kind!r}; the kinds are {', '.join(KINDS)}.")
        try:
            spec = json.loads(json.dumps(spec))
        except (TypeError, ValueError):
            spec = None
        if not isinstance(spec, dict):
            raise LabError("A job's settings must be a dict of plain values (text, numbers, lists, dicts).")
        job = Job(new_id(), kind, spec, title or KINDS[kind].describe(spec), created=now_iso(),
                  message="waiting for the worker")
        return self._write(job)

    def get(self, job_id: str) -> Job:
        path = self.path(job_id)
        if not _ID.fullmatch(job_id) or not path.is_file():
            raise LabError(f"No job {job_id!r} in {self.directory}; `./lab jobs` lists them.")
        job = self._load(path)
        if job is None:
            raise LabError(f"The record of job {job_id} is damaged (in {self.directory}); submit the job again.")
        return self._reconciled(job)

    def jobs(self) -> list[Job]:
        """Every readable job, newest first; a damaged record is reported and skipped."""
        loaded = (self._load(self.path(i)) for i in reversed(self._ids()))
        return [self._reconciled(job) for job in loaded if job is not None]

    def prune(self, keep: int = KEEP_FINISHED) -> int:
        """Remove the records of finished jobs beyond the newest `keep` (listings stay quick); returns how many."""
        ended = [job for job in self.jobs() if not job.active][keep:]
        for job in ended:
            self.path(job.id).unlink(missing_ok=True)
            self.cancel_path(job.id).unlink(missing_ok=True)
        return len(ended)

    def active(self) -> list[Job]:
        return [job for job in self.jobs() if job.active]

    def request_cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker polls the marker)."""
        with self._locked():
            job = self.get(job_id)
            if job.state == "queued":
                job.state, job.message, job.finished = "cancelled", "cancelled before it started", now_iso()
                return self._write(job)
        if job.state == "running":
            atomic_write_text(self.cancel_path(job_id), now_iso())
        return job

    def cancel_requested(self, job_id: str) -> bool:
        return self.cancel_path(job_id).exists()

    def claim_next(self, worker: dict) -> Job | None:
        """The oldest queued job, now running in `worker` (process.identity()); None when none waits. Exclusive:
        of several workers claiming at once, one gets each job."""
        with self._locked():
            for job_id in self._ids():
                job = self._load(self.path(job_id))
                if job is not None and job.state == "queued":
                    job.state, job.started, job.worker, job.message = "running", now_iso(), worker, "starting"
                    return self._write(job)
        return None

    def update(self, job: Job, progress: float | None = None, message: str | None = None) -> Job:
        """The worker's progress on its running job."""
        if progress is not None:
            job.progress = min(max(float(progress), 0.0), 1.0)
        if message is not None:
            job.message = message
        return self._write(job)

    def finish(self, job: Job, state: str, message: str = "", error: str | None = None,
               result: dict | None = None) -> Job:
        """The job's end: done (with its result), failed (with the error in words), cancelled or interrupted."""
        if state not in STATES or state in ACTIVE:
            raise ValueError(f"{state!r} is not a final state")
        job.state, job.message, job.error, job.finished = state, message, error, now_iso()
        if result is not None:
            job.result = result
        if state == "done":
            job.progress = 1.0
        self._write(job)
        self.cancel_path(job.id).unlink(missing_ok=True)
        return job
