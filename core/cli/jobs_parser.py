"""The `python -m core jobs` parser: list, submit (eval, sensitivity, sweep, export, train), show, cancel, wait, worker. Submitted runs
take exactly the flags of the commands that run them in the foreground."""
from __future__ import annotations

import argparse
import sys

from core.cli import jobs_commands
from core.cli.flags import add_config_flags
from core.options import bits_list, positive_int


class _JobsParser(argparse.ArgumentParser):
    def error(self, message):  # one clear line naming the full subcommand, exit code 2 as every bad input
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _submit_flags(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the job's record instead of its id")
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends (exit 0 when done)")
    parser.add_argument("--no-worker", action="store_true", help="only queue it; `jobs worker` runs it later")


def _submit_commands(jobs, commands: dict) -> None:
    """submit eval (EvalConfig's flags, --q-bits a list); submit sensitivity, sweep, export and train (the flags of
    those commands, from their parsers in `commands`). Every kind of the registry (core.jobs.kinds), one command."""
    from core.jobs.kinds import KINDS

    submit = jobs.add_parser("submit", help="queue a run as a background job; starts a worker unless one runs")
    kinds = submit.add_subparsers(dest="kind", required=True, parser_class=_JobsParser)
    p = kinds.add_parser("eval", help="evaluate one configuration per width in --q-bits (as `eval` does)")
    add_config_flags(p, KINDS["eval"].config,
                     bits=dict(type=bits_list, default=[16],
                               help="comma-separated widths, one evaluation each (e.g. 4 or 8,4,3)"))
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the cache")
    _submit_flags(p)
    p = kinds.add_parser("sensitivity", parents=[commands["sensitivity"]], add_help=False,
                         help="per-layer sensitivity table (the flags of `sensitivity`)")
    _submit_flags(p, json_flag=False)  # --json comes with sensitivity's flags
    p = kinds.add_parser("sweep", parents=[commands["sweep"]], add_help=False,
                         help="every combination of models, methods, widths and group sizes (the flags of `sweep`)")
    p.add_argument("--hostfile", default=None, help="run it on these hosts through mlx.launch (this machine first; "
                   "a JSON hostfile as mlx.distributed_config writes it)")
    _submit_flags(p, json_flag=False)
    for name in ("export", "train"):
        p = kinds.add_parser(name, parents=[commands[name]], add_help=False, help=f"the flags of `{name}`")
        _submit_flags(p)
    for p in kinds.choices.values():  # one command for every kind of run: its registry entry says how
        p.set_defaults(func=jobs_commands.cmd_jobs_submit)


def _jobs_commands(sub) -> None:
    """`jobs` and its subcommands; added after the commands whose flags `jobs submit` takes."""
    p = sub.add_parser("jobs", help="background jobs: list (default), submit, show, cancel, wait, worker")
    p.set_defaults(func=jobs_commands.cmd_jobs_list, json=False)
    jobs = p.add_subparsers(dest="jobs_command", parser_class=_JobsParser)
    q = jobs.add_parser("list", help="every job, newest first: id, kind, state, progress, title, message")
    q.add_argument("--json", action="store_true", help="print the records as one JSON list")
    q.set_defaults(func=jobs_commands.cmd_jobs_list)
    _submit_commands(jobs, sub.choices)
    q = jobs.add_parser("show", help="one job: state, times, error or result")
    q.add_argument("id")
    q.add_argument("--json", action="store_true", help="print the record")
    q.set_defaults(func=jobs_commands.cmd_jobs_show)
    q = jobs.add_parser("cancel", help="cancel a queued job, or ask a running one to stop")
    q.add_argument("id")
    q.set_defaults(func=jobs_commands.cmd_jobs_cancel)
    q = jobs.add_parser("wait", help="follow a job until it ends: exit 0 when done, 1 otherwise")
    q.add_argument("id")
    q.add_argument("--timeout", type=float, default=None, metavar="S", help="give up (exit 1) after S seconds")
    q.set_defaults(func=jobs_commands.cmd_jobs_wait)
    q = jobs.add_parser("worker", help="run queued jobs in the foreground (submit starts one in the background)")
    q.add_argument("--idle-exit", type=positive_int, default=600, metavar="S",
                   help="exit after S seconds without a job (default 600)")
    q.set_defaults(func=jobs_commands.cmd_jobs_worker)
