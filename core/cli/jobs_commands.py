"""`python -m core jobs ...`: submit runs as background jobs, follow them, cancel them, and run the worker that
executes them (core.jobs). A submitted job outlives this command; `jobs wait` follows it from any terminal."""
from __future__ import annotations

import json
import sys
import time

from core.cli.commands import stderr_progress
from core.cli.flags import config_from_args, sweep_from_args
from core.jobs.kinds import KINDS
from core.jobs.store import Job, JobStore
from core.jobs.worker import ensure_worker, live_worker, run_worker

WAIT_POLL_S = 0.5


def _percent(job: Job) -> str:
    return f"{100 * job.progress:.0f} %"


def cmd_jobs_list(args) -> int:
    jobs = JobStore().jobs()
    if args.json:
        print(json.dumps([job.as_dict() for job in jobs]))
        return 0
    if not jobs:
        print("no jobs yet: `./lab jobs submit eval --model resnet20 --q-bits 4` queues one", file=sys.stderr)
    for job in jobs:
        print(f"{job.id}  {job.kind:11} {job.state:11} {_percent(job):>5}  {job.title}  {job.error or job.message}")
    return 0


def _submit(args, kind: str, spec: dict) -> int:
    store = JobStore()
    job = store.submit(kind, spec)
    worker = "no worker started (--no-worker): `./lab jobs worker` runs it" if args.no_worker else \
        f"worker {ensure_worker(store)} runs it"
    print(f"submitted job {job.id}: {job.title}; {worker}", file=sys.stderr)
    print(json.dumps(job.as_dict()) if args.json else job.id, flush=True)
    return _wait(store, job.id, None) if args.wait else 0


def cmd_jobs_submit(args) -> int:
    """Queue the run `args.kind` names (core.jobs.kinds): its config from the flags its own command takes (eval:
    one evaluation per width in --q-bits; sweep: --hostfile too), every config checked before the job is queued."""
    kind = KINDS[args.kind]
    if kind.name == "eval":
        configs = [config_from_args(kind.config, args, bits=b) for b in args.bits]
    elif kind.name == "sweep":
        configs = [sweep_from_args(args, hostfile=args.hostfile)]
    else:
        configs = [config_from_args(kind.config, args)]
    return _submit(args, kind.name, kind.spec_of(configs, use_cache=not args.no_cache if kind.cached else None))


def summary(job: Job) -> str:
    """A job as `jobs show` prints it: its state, times, error or result."""
    lines = [f"{job.id}  {job.kind}: {job.title}",
             f"  state: {job.state} ({_percent(job)}){': ' + job.message if job.message else ''}",
             f"  submitted {job.created}" + (f", started {job.started}" if job.started else "")
             + (f", finished {job.finished}" if job.finished else "")]
    if job.error:
        lines.append(f"  error: {job.error}")
    result = job.result or {}
    for row in result.get("rows", [])[:50] if job.kind in ("eval", "sweep") else []:
        lines.append(f"  {row['model']} {row['tag']}: {row['metric']} {row['value']:.4f} ± {row['stderr']:.4f} "
                     f"(n={row['n']}), {row['bits_per_weight']:.3f} bits/weight")
    if job.kind not in ("eval", "sweep") and result:
        lines.append(f"  result: {', '.join(f'{k}={v}' for k, v in result.items() if not isinstance(v, (list, dict)))}"
                     f"{' (rows: see --json)' if 'rows' in result else ''}")
    return "\n".join(lines)


def cmd_jobs_show(args) -> int:
    job = JobStore().get(args.id)
    print(json.dumps(job.as_dict()) if args.json else summary(job))
    return 0


def cmd_jobs_cancel(args) -> int:
    job = JobStore().request_cancel(args.id)
    if job.state == "running":
        print(f"job {job.id} asked to stop; it stops at its next progress step (`./lab jobs wait {job.id}`)")
    else:
        print(f"job {job.id} is {job.state}")
    return 0


def _wait(store: JobStore, job_id: str, timeout: float | None) -> int:
    """Follow a job until it ends: 0 when done, 1 when it failed, was cancelled or interrupted, or outlasted
    `timeout` seconds."""
    began, warned = time.monotonic(), False
    job = store.get(job_id)
    while job.active:
        stderr_progress(job.progress, f"{job.state}: {job.message}"[:60])
        if job.state == "queued" and not warned and live_worker(store) is None:
            print("\nno worker is running: `./lab jobs worker` (or any `./lab jobs submit`) starts one",
                  file=sys.stderr)
            warned = True
        if timeout is not None and time.monotonic() - began > timeout:
            print(f"\njob {job_id} is still {job.state} after {timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(WAIT_POLL_S)
        job = store.get(job_id)
    print(file=sys.stderr)
    print(summary(job))
    return 0 if job.state == "done" else 1


def cmd_jobs_wait(args) -> int:
    return _wait(JobStore(), args.id, args.timeout)


def cmd_jobs_worker(args) -> int:
    return run_worker(JobStore(), idle_exit_s=args.idle_exit)
