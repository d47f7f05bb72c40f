"""The `python -m core` parser: the flags of every run (eval, sweep, export, sensitivity, train) come from the
config dataclasses of the run kinds' registry (core.jobs.kinds, core.cli.flags); each command is a function in
core.cli.commands."""
from __future__ import annotations

import argparse
import os
import sys

from core import runtime, settings
from core.cli import commands
from core.cli.flags import add_config_flags, flag_for
from core.cli.jobs_parser import _jobs_commands
from core.errors import LabError
from core.options import bits_list, group_sizes_list, names_list, positive_float, positive_int

EXIT_BAD_INPUT = 2


def _memory_flag(p) -> None:
    p.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                   help="refuse up front what is predicted to need more memory than this, and hold MLX to it "
                        "(or set MLXQ_MEMORY_LIMIT)")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of argparse's usage dump
        print(f"error: {message} (see `python -m core {self.prog.split()[-1]} --help`)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _run_commands(sub) -> None:
    """eval, sweep and export: the flags of EvalConfig (eval, sweep; a sweep's varying fields as lists) and
    ExportConfig (export)."""
    from core.jobs.kinds import KINDS

    EvalConfig = KINDS["eval"].config
    p = sub.add_parser("eval", help="quantize, evaluate and benchmark one configuration")
    add_config_flags(p, EvalConfig)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the cache")
    _memory_flag(p)
    p.set_defaults(func=commands.cmd_eval)
    p = sub.add_parser("sweep", help="every combination of models, methods, bit widths and group sizes, written to "
                       "one CSV; under mlx.launch spread over the ranks")
    add_config_flags(p, EvalConfig, bits=dict(type=bits_list, required=True, help="comma-separated, e.g. 16,8,4,3"),
                     model=dict(type=names_list, help="comma-separated models (registry names, mlx-lm folders, hub ids)"),
                     method=dict(type=names_list, default=["rtn"], help="comma-separated methods (default rtn)"),
                     group_size=dict(type=group_sizes_list, default=[None],
                                     help="comma-separated affine group sizes, e.g. 32,64 (default: the mode's own)"))
    p.add_argument("--out", default=None, help="CSV path (default cache/sweeps/MODEL-TIME.csv)")
    p.add_argument("--json", action="store_true", help="print each row as one JSON line (rank 0)")
    p.add_argument("--summary", default=None, metavar="PATH", help="rank 0 also writes the rows and counts as one "
                   "JSON file here (for programs that start the sweep)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the cache")
    _memory_flag(p)
    p.set_defaults(func=commands.cmd_sweep)
    p = sub.add_parser("export", help="quantize one configuration and write it to a folder (mlx-lm folder for "
                       "language models, safetensors + quantization.json for ResNets) or to a GGUF file")
    add_config_flags(p, KINDS["export"].config)
    _memory_flag(p)
    p.set_defaults(func=commands.cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="MLX Quant Lab: quantize, evaluate and benchmark MLX models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_run_commands, _table_commands, _serving_commands, _other_commands, _jobs_commands):
        add(sub)
    return parser


def _table_commands(sub) -> None:
    """sensitivity and results: tables of measured rows."""
    from core.jobs.kinds import KINDS

    p = sub.add_parser("sensitivity", help="per-layer sensitivity table: each layer quantized alone, KL against "
                       "full precision on calibration data (cached)")
    add_config_flags(p, KINDS["sensitivity"].config)
    p.add_argument("--json", action="store_true", help="print one JSON object: rows (and the allocation)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the cache")
    _memory_flag(p)
    p.set_defaults(func=commands.cmd_sensitivity)
    p = sub.add_parser("results", help="list or export the cached result rows")
    p.add_argument("--dir", default=None, help="a folder of result rows (default: the cache)")
    p.add_argument("--out", default=None, help="write them as CSV here")
    p.set_defaults(func=commands.cmd_results)


def _serving_commands(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API for quantized models")
    p.add_argument("--models", default=None, help="comma-separated models to serve: registry ids, e.g. "
                   "smollm2-135m-instruct@q4g64,resnet20@q8 (quantized on load), and/or NAME=PATH, a folder served "
                   "as it is under NAME (letters, digits, '.', '_', '-'): a `python -m core export` folder or any "
                   "mlx-lm model folder, e.g. mine=exports/smollm2-gptq4 (default: a few registry ids)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set MLXQ_API_KEY)")
    p.add_argument("--memory-budget-mb", type=float, default=2048, help="evict least-recently-used models beyond this")
    p.add_argument("--dtype", choices=list(runtime.DTYPES), default=None,
                   help="compute dtype of the served models (default: float32 on a CPU, bfloat16 on Metal and CUDA)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="sequences the text engine decodes together")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="text requests that may wait beyond the running batch; more are answered 429")
    p.add_argument("--max-vision-queue", type=positive_int, default=256,
                   help="images that may wait for the vision lane; more are answered 429")
    p.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a generation that runs longer than this and answer 408 (default: no deadline)")
    p.add_argument("--allow-special-tokens", action="store_true",
                   help="parse chat-template control tokens in user text (off: typed text always stays text)")
    p.add_argument("--header-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                   help="close a connection that has not sent a request's headers within this (default 10)")
    p.add_argument("--body-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="answer 408 to a request whose body has not arrived within this (default 30)")
    p.add_argument("--shutdown-grace", type=positive_int, default=5, metavar="SECONDS",
                   help="on SIGTERM, how long requests in flight may finish before the server exits (default 5)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=None, metavar="N",
                   help="refuse longer prompts (default: each model's context length, as far as the memory budget "
                        "holds one forward pass over it)")
    _memory_flag(p)
    p.set_defaults(func=commands.cmd_serve)
    p = sub.add_parser("loadtest", help="bounded load test of a running server on this machine")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--chat-model", default="smollm2-135m-instruct@q4g64")
    p.add_argument("--image-model", default=None, help="default: resnet20@q8 (resnet20-mlxq@q8 without the mirror)")
    p.add_argument("--clients", type=positive_int, default=16)
    p.add_argument("--requests", type=positive_int, default=256)
    p.add_argument("--chat-every", type=positive_int, default=4, help="every Nth request is a chat completion")
    p.add_argument("--max-tokens", type=positive_int, default=8)
    p.add_argument("--api-key", default=None)
    p.set_defaults(func=commands.cmd_loadtest)


def _other_commands(sub) -> None:
    """bench, train, demo, prepare, make-model and blas."""
    from core.jobs.kinds import KINDS

    p = sub.add_parser("bench", help="performance comparison, written as CSV and markdown under docs/bench/")
    p.add_argument("--sections", default="resnet,eval-command,ppl,decode,llama-cpp", help="comma-separated sections")
    p.add_argument("--out", default="docs/bench", help="output folder")
    p.add_argument("--quick", action="store_true", help="subsets (1,000 images, 2 chunks) for a fast check")
    p.add_argument("--chunks", type=positive_int, default=None,
                   help="frontier sections: WikiText-2 test chunks, evenly spread (default: all 592)")
    p.add_argument("--compare-chunks", type=positive_int, default=None,
                   help="frontier sections: also score on this many evenly spread chunks (llama.cpp's types run "
                        "on those only: the CPU-bound peer)")
    p.add_argument("--time-limit", type=positive_int, default=None,
                   help="frontier sections: start no new subject after this many seconds (a device's limit); the "
                        "journal beside the report lets the next run go on")
    p.set_defaults(func=commands.cmd_bench)
    p = sub.add_parser("train", help="train a CIFAR-10 ResNet from scratch (resumes from --out)")
    add_config_flags(p, KINDS["train"].config)
    p.set_defaults(func=commands.cmd_train)
    p = sub.add_parser("demo", help="prepare the dashboard's demo sweep (cached runs for every chart)")
    p.set_defaults(func=commands.cmd_demo)
    p = sub.add_parser("prepare", help="fetch and convert the offline SmolLM2 model into cache/")
    p.set_defaults(func=commands.cmd_prepare)
    p = sub.add_parser("make-model", help="write a random-weight language model of a real shape (speed and memory "
                       "at real sizes; its perplexity means nothing)")
    p.add_argument("--shape", required=True, help="llama-3.2-1b, llama-3.2-3b, llama-3.1-8b or tiny")
    p.add_argument("--out", required=True, help="folder to write (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="folder with tokenizer.json (default: SmolLM2's, converted "
                   "by ./lab prepare)")
    p.set_defaults(func=commands.cmd_make_model)
    p = sub.add_parser("blas", help="the BLAS library and kernel measured fastest on this CPU (Linux; cached)")
    p.add_argument("--preload", action="store_true",
                   help="print only what ./lab uses: the library to preload and the OPENBLAS_CORETYPE ('-' for none)")
    p.add_argument("--fresh", action="store_true", help="measure again instead of reading the cached choice")
    p.set_defaults(func=commands.cmd_blas)


def _said(error: LabError, parser: argparse.ArgumentParser, args, argv: list[str]) -> str:
    """The error's words, after the flag of the setting it is about (and the value given) where there is one."""
    flag = flag_for(parser, args, error.setting, argv) if error.setting else None
    if flag is None or flag in str(error):
        return str(error)
    return f"{flag}{'' if error.value is None else f' {error.value}'}: {error}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func is not commands.cmd_blas:  # `blas` runs before any preload: it chooses the library
        runtime.warn_if_slow_blas()
    try:
        if getattr(args, "memory_limit", None) is not None:  # every stage and child process reads it from there
            os.environ[settings.MEMORY_LIMIT] = str(args.memory_limit)
        runtime.apply_memory_limit()
        return args.func(args)
    except LabError as error:
        said = _said(error, parser, args, sys.argv[1:] if argv is None else argv)
        print(f"\nerror: {said}" if not getattr(args, "json", False) else f"error: {said}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
