"""The `python -m core` parser: eval, sweep and export flags come from their config dataclasses (core.cli.flags);
each command is a function in core.cli.commands."""
from __future__ import annotations

import argparse
import os
import sys

from core import runtime, settings
from core.cli import commands
from core.cli.flags import add_config_flags
from core.cli.jobs_parser import _jobs_commands
from core.options import bits_list, group_sizes_list, names_list, positive_int

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
    """eval, sweep and export: the flags of EvalConfig (eval, sweep) and QuantConfig (export)."""
    from core.eval.config import EvalConfig
    from core.quant.config import QuantConfig

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
    add_config_flags(p, QuantConfig, skip=("act_bits",),
                     bits=dict(type=int, required=True, help="2, 3, 4, 5, 6, 8 (16: full precision)"),
                     seed=dict(help="seed of the calibration subset"),
                     ctx=dict(help="LM calibration chunk length in tokens"))
    p.add_argument("--out", required=True, help="folder to write (created; an earlier export there is replaced); "
                   "a .gguf file with --format gguf")
    p.add_argument("--format", choices=("mlx", "gguf"), default="mlx",
                   help="mlx (default): the folder mlx-lm loads; gguf: one file llama.cpp, Ollama and LM Studio load")
    p.add_argument("--gguf-type", default=None, metavar="TYPE",
                   help="with --format gguf: exact (default: the lab's grids, bit for bit where a GGUF type holds "
                   "them) or a llama.cpp type made by llama.cpp's quantizer from the lab's weights (Q4_K_M, Q6_K ...; "
                   "needs ./lab setup --peers)")
    p.add_argument("--force", action="store_true", help="replace a non-empty folder (or a file) export did not create")
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
    from core.quant.calibration import default_size

    p = sub.add_parser("sensitivity", help="per-layer sensitivity table: each layer quantized alone, KL against "
                       "full precision on calibration data (cached)")
    p.add_argument("--model", required=True, help="registry name, an mlx-lm folder or a Hugging Face id")
    p.add_argument("--bits", "--q-bits", dest="bits", type=bits_list, default=[2, 3, 4, 8],
                   help="comma-separated widths (default 2,3,4,8)")
    p.add_argument("--q-group-size", type=int, default=None, help="affine group size: 32, 64 (default) or 128")
    p.add_argument("--calib", type=positive_int, default=None, help=f"CIFAR-10 train images (default "
                   f"{default_size('sensitivity', 'vision')}) or WikiText-2 validation chunks (default "
                   f"{default_size('sensitivity', 'lm')}; a GPU affords more)")
    p.add_argument("--ctx", type=positive_int, default=512, help="LM calibration chunk length in tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration image choice")
    p.add_argument("--target-bpw", type=float, default=None, help="also print the mixed-precision allocation")
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
    p.add_argument("--model", default="resnet20", help="resnet20 (default), resnet32, resnet44 or resnet56")
    p.add_argument("--epochs", type=positive_int, default=200)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=positive_int, default=None, help="train on N images (smoke tests)")
    p.add_argument("--eval-every", type=positive_int, default=1, help="test accuracy every N epochs (curve)")
    p.add_argument("--out", default="cache/train/resnet20", help="checkpoints, history.json and curve.html")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core import runtime, settings
    from core.errors import LabError

    if args.func is not commands.cmd_blas:  # `blas` runs before any preload: it chooses the library
        runtime.warn_if_slow_blas()
    try:
        if getattr(args, "memory_limit", None) is not None:  # every stage and child process reads it from there
            os.environ[settings.MEMORY_LIMIT] = str(args.memory_limit)
        runtime.apply_memory_limit()
        return args.func(args)
    except LabError as error:
        print(f"\nerror: {error}" if not getattr(args, "json", False) else f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
