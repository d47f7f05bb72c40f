"""Command line: `python -m core eval|sweep ...`. Flags are parsed here; the work is done by core functions."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from core.errors import LabError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of argparse's usage dump
        print(f"error: {message} (see `python -m core {self.prog.split()[-1]} --help`)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _bits_list(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit widths like 16,8,4,3, got {text!r}")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry name (e.g. resnet20, smollm2-135m-instruct), "
                   "an mlx-lm folder or a Hugging Face id")
    p.add_argument("--q-group-size", type=int, default=None, help="affine: 32, 64 (default) or 128")
    p.add_argument("--q-mode", default="affine", help="affine (default), mxfp4, nvfp4 or mxfp8")
    p.add_argument("--q-quantizer", default="minmax", help="affine rounding: minmax (default) or mlx (mx.quantize)")
    p.add_argument("--method", default="rtn", help="rtn (round to nearest, default), gptq, awq (language models) "
                   "or mixed (per-layer bit widths from measured sensitivities; needs --target-bpw)")
    p.add_argument("--calib", type=_positive_int, default=None, help="calibration size for calibrated methods: "
                   "CIFAR-10 train images (default 512) or WikiText-2 validation chunks (default 32)")
    p.add_argument("--target-bpw", type=float, default=None, help="mixed: bits-per-weight budget, e.g. 4.5")
    p.add_argument("--act-bits", type=int, default=None, help="ResNets: simulate 8-bit activations (W8A8 with "
                   "--q-bits 8), ranges calibrated on CIFAR-10 train images")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate on a deterministic subset: N images or N 512-token chunks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset choice")
    p.add_argument("--keep-first", action="store_true", help="keep the first layer in full precision")
    p.add_argument("--keep-last", action="store_true", help="keep the output layer in full precision")
    p.add_argument("--eval-path", default="auto", help="auto, dequant or kernel: how quality is computed")
    p.add_argument("--dtype", default="float32", help="LM compute dtype: float32, bfloat16 or float16")
    p.add_argument("--ctx", type=_positive_int, default=512, help="perplexity chunk length in tokens")
    p.add_argument("--bos", default="auto", help="perplexity: BOS first in each chunk: auto (if the tokenizer "
                   "adds one, as llama.cpp), always or never")
    p.add_argument("--no-bench", action="store_true", help="skip the speed and memory benchmark")
    p.add_argument("--bench-prefill", type=_positive_int, default=128, help="LM benchmark prompt tokens")
    p.add_argument("--bench-decode", type=_positive_int, default=32, help="LM benchmark decode steps")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the cache")


def _config(args, bits: int):
    from core.pipeline import EvalConfig

    return EvalConfig(model=args.model, bits=bits, group_size=args.q_group_size, mode=args.q_mode,
                      method=args.method, calib=args.calib, target_bpw=args.target_bpw, act_bits=args.act_bits,
                      quantizer=args.q_quantizer, limit=args.limit, seed=args.seed,
                      keep_first=args.keep_first, keep_last=args.keep_last, eval_path=args.eval_path,
                      dtype=args.dtype, ctx=args.ctx, bos=args.bos, bench=not args.no_bench, bench_prefill=args.bench_prefill,
                      bench_decode=args.bench_decode)


def _stderr_progress(fraction: float, message: str) -> None:
    print(f"\r[{fraction:6.1%}] {message:<40}", end="", file=sys.stderr, flush=True)


def _summary(r) -> str:
    unit = "%" if r.metric == "top1_accuracy" else ""
    lines = [f"{r.model} {r.tag} ({r.method}, {r.backend}): {r.metric} = {r.value:.4f}{unit} ± {r.stderr:.4f} (n={r.n})",
             f"  protocol: {r.protocol}",
             f"  size: {r.size_bytes / 1e6:.2f} MB, {r.bits_per_weight:.3f} bits/weight"]
    if r.reference_value is not None:
        lines.append(f"  full precision on the same data: {r.reference_value:.4f}{unit}")
    if r.agreement is not None:
        lines.append(f"  top-1 agreement with full precision: {r.agreement:.2f} %")
    if r.kl_mean is not None:
        lines.append(f"  KL(full || quantized): {r.kl_mean:.5f} ± {r.kl_stderr:.5f} nats/token")
    if r.latency_ms_p50 is not None:
        lines.append(f"  latency p50 {r.latency_ms_p50:.2f} ms, p90 {r.latency_ms_p90:.2f} ms; "
                     f"{r.throughput:.1f} {r.throughput_unit}; peak MLX memory {r.peak_memory_bytes / 1e6:.1f} MB")
    if r.layers_kept:
        lines.append(f"  kept in full precision: {r.layers_kept}")
    if r.layers_padded:
        lines.append(f"  padded to the group size: {r.layers_padded}")
    if r.layer_bits:
        counts = {b: sum(1 for v in r.layer_bits.values() if v == b) for b in sorted(set(r.layer_bits.values()))}
        lines.append("  mixed precision, layers per width: " + ", ".join(f"{n} at {b} bits" for b, n in counts.items()))
    lines.append(f"  {'from cache' if r.cached else f'computed in {r.eval_seconds:.1f} s'}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from core.pipeline import run_eval

    if args.q_bits is None:
        args.q_bits = 16
    result = run_eval(_config(args, args.q_bits), use_cache=not args.no_cache,
                      progress=None if args.json else _stderr_progress)
    if not args.json:
        print(file=sys.stderr)
    print(json.dumps(result.public()) if args.json else _summary(result))
    return 0


def cmd_sweep(args) -> int:
    from core.pipeline import EvalResult, run_eval

    configs = [_config(args, b).validated() for b in args.q_bits]  # reject a bad width before any work
    rows = []
    for cfg in configs:
        print(f"{cfg.model} {cfg.tag} ...", file=sys.stderr, flush=True)
        rows.append(run_eval(cfg, use_cache=not args.no_cache, progress=_stderr_progress).public())
        print(file=sys.stderr)
        print(_summary(EvalResult.from_dict({**rows[-1], "predictions": None})))
    out = Path(args.out or f"cache/sweeps/{args.model.replace('/', '_')}-{datetime.now():%Y%m%d-%H%M%S}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [f.name for f in fields(EvalResult) if f.name != "predictions"]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    print(f"wrote {out}")
    return 0


def cmd_sensitivity(args) -> int:
    import time

    from core.methods import Calibration
    from core.models import resolve
    from core.sensitivity import DEFAULT_CALIBRATION, allocate_bits, layer_sensitivity, predicted_bpw

    kind = resolve(args.model).kind
    calibration = Calibration(args.calib or DEFAULT_CALIBRATION[kind], args.ctx, args.seed)
    started = time.perf_counter()
    rows = layer_sensitivity(args.model, args.bits, args.q_group_size, calibration, use_cache=not args.no_cache,
                             progress=None if args.json else _stderr_progress)
    seconds = time.perf_counter() - started
    if not args.json:
        print(file=sys.stderr)
    allocation = allocate_bits(rows, args.target_bpw) if args.target_bpw else None
    if args.json:
        extra = {} if allocation is None else {"allocation": allocation,
                                               "predicted_bits_per_weight": predicted_bpw(rows, allocation)}
        print(json.dumps({"rows": rows, **extra, "seconds": seconds}))
        return 0
    widths = sorted({r["bits"] for r in rows})
    by_layer = {}
    for r in rows:
        by_layer.setdefault(r["layer"], {})[r["bits"]] = r
    print(f"{args.model}: each layer quantized alone, group {rows[0]['group_size']}\n  protocol: {rows[0]['protocol']}")
    print(f"{'layer':36} {'weights':>9} " + " ".join(f"{f'KL@{b}':>9}" for b in widths) + "  "
          + " ".join(f"{f'agree@{b}':>8}" for b in widths) + ("  chosen" if allocation else ""))
    for layer, cells in by_layer.items():
        print(f"{layer:36} {next(iter(cells.values()))['weights']:>9} "
              + " ".join(f"{cells[b]['kl']:>9.2e}" for b in widths) + "  "
              + " ".join(f"{cells[b]['agreement']:>8.2f}" for b in widths)
              + (f"  {allocation[layer]}" if allocation else ""))
    if allocation:
        total = sum(by_layer[p][b]["kl"] for p, b in allocation.items())
        print(f"allocation for {args.target_bpw:g} bits/weight: predicted {predicted_bpw(rows, allocation):.3f} "
              f"bits/weight, summed KL {total:.4g}")
    print(f"{len(by_layer)} layers x {len(widths)} widths in {seconds:.1f} s")
    return 0


def cmd_prepare(args) -> int:
    from core.gguf import prepare_smollm2
    from core.models import cache_root

    print(f"smollm2-135m-instruct: {prepare_smollm2(cache_root())}", file=sys.stderr)
    return 0


def cmd_results(args) -> int:
    from core.pipeline import result_cache
    from core.results import load_rows, write_csv

    rows = load_rows(Path(args.dir) if args.dir else result_cache().directory)
    if args.out:
        print(f"wrote {len(rows)} rows to {write_csv(rows, Path(args.out))}")
    else:
        for r in rows:
            print(f"{r['model']:24} {r['tag']:10} {r['metric']:14} {r['value']:10.4f} ± {r['stderr']:.4f} "
                  f"n={r['n']:<7} {r['bits_per_weight']:6.3f} bpw  {r['backend']} {r['device']}")
    return 0


def cmd_demo(args) -> int:
    from core.demo import prepare_demo

    keys = prepare_demo(progress=_stderr_progress)
    print(f"\ndemo sweep ready: {len(keys)} runs; switch on Demo mode in the dashboard", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from core.serve import ServeSettings, default_models, serve

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else default_models()
    settings = ServeSettings(models=models, api_key=args.api_key or os.environ.get("MLXQ_API_KEY"),
                             memory_budget_bytes=int(args.memory_budget_mb * 1024**2))
    where = f"http://{args.host}:{args.port}"
    print(f"serving {', '.join(models)} on {where} (OpenAI-compatible: {where}/v1)"
          + ("; API key required" if settings.api_key else ""), file=sys.stderr)
    serve(settings, args.host, args.port)
    return 0


def cmd_loadtest(args) -> int:
    from core.loadtest import run_load

    from core.models import default_vision_model

    image_model = args.image_model or f"{default_vision_model()}@q8"
    report = run_load(args.url, args.chat_model, image_model, clients=args.clients, requests=args.requests,
                      chat_every=args.chat_every, max_tokens=args.max_tokens, api_key=args.api_key)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.errors == 0 else 1


def cmd_bench(args) -> int:
    from core.bench import SECTIONS, run_bench

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise LabError(f"Unknown bench section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}.")
    report = run_bench(sections, Path(args.out), "python -m core bench " + " ".join(sys.argv[2:]), quick=args.quick)
    print(report.read_text())
    return 0


def cmd_export(args) -> int:
    from core.export import export_model
    from core.pipeline import EvalConfig

    config = EvalConfig(model=args.model, bits=args.q_bits, group_size=args.q_group_size, mode=args.q_mode,
                        method=args.method, calib=args.calib, target_bpw=args.target_bpw, quantizer=args.q_quantizer,
                        seed=args.seed, keep_first=args.keep_first, keep_last=args.keep_last, dtype=args.dtype,
                        ctx=args.ctx, bench=False)
    result = export_model(config, Path(args.out), force=args.force, progress=_stderr_progress)
    form = ("model.safetensors + quantization.json; reload with core.export.load_exported(DIR)"
            if result.kind == "vision" else "mlx-lm folder; mlx_lm.load / python -m mlx_lm generate --model DIR")
    lines = [f"\nexported {args.model} {result.tag} to {result.path}",
             f"  {form}",
             f"  size: {result.size_bytes / 1e6:.2f} MB of arrays, {result.bits_per_weight:.3f} bits/weight; "
             f"{result.file_bytes / 1e6:.2f} MB on disk",
             f"  {result.report.summary()}; full-precision layers in {args.dtype}"]
    print("\n".join(lines), file=sys.stderr)
    print(result.path)
    return 0


def cmd_train(args) -> int:
    from core.train import Recipe, train, write_curve

    recipe = Recipe(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    weight_decay=args.weight_decay, seed=args.seed, limit=args.limit)
    out = Path(args.out)
    history = train(recipe, out, progress=_stderr_progress, eval_every=args.eval_every)
    print(f"\nfinal test top-1 {history[-1]['test_top1']:.2f} % after {len(history)} epochs "
          f"({sum(h['seconds'] for h in history):.0f} s of training); curve: {write_curve(out) or 'needs plotly'}",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="MLX Quant Lab: quantize, evaluate and benchmark MLX models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("eval", help="quantize, evaluate and benchmark one configuration")
    _add_run_flags(p)
    p.add_argument("--q-bits", type=int, default=None, help="2, 3, 4, 5, 6, 8, or 16 (full precision, default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("sweep", help="run several bit widths and write a CSV")
    _add_run_flags(p)
    p.add_argument("--q-bits", type=_bits_list, required=True, help="comma-separated, e.g. 16,8,4,3")
    p.add_argument("--out", default=None, help="CSV path (default cache/sweeps/MODEL-TIME.csv)")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("sensitivity", help="per-layer sensitivity table: each layer quantized alone, KL against "
                       "full precision on calibration data (cached)")
    p.add_argument("--model", required=True, help="registry name, an mlx-lm folder or a Hugging Face id")
    p.add_argument("--bits", "--q-bits", dest="bits", type=_bits_list, default=[2, 3, 4, 8],
                   help="comma-separated widths (default 2,3,4,8)")
    p.add_argument("--q-group-size", type=int, default=None, help="affine group size: 32, 64 (default) or 128")
    p.add_argument("--calib", type=_positive_int, default=None, help="CIFAR-10 train images (default 256) or "
                   "WikiText-2 validation chunks (default 2; about 18 min per width at 512 tokens on a 2-core CPU)")
    p.add_argument("--ctx", type=_positive_int, default=512, help="LM calibration chunk length in tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration image choice")
    p.add_argument("--target-bpw", type=float, default=None, help="also print the mixed-precision allocation")
    p.add_argument("--json", action="store_true", help="print one JSON object: rows (and the allocation)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the cache")
    p.set_defaults(func=cmd_sensitivity)
    p = sub.add_parser("results", help="list or export the cached result rows")
    p.add_argument("--dir", default=None, help="a folder of result rows (default: the cache)")
    p.add_argument("--out", default=None, help="write them as CSV here")
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API for quantized models")
    p.add_argument("--models", default=None, help="comma-separated ids to serve, e.g. "
                   "smollm2-135m-instruct@q4g64,resnet20@q8 (default: a few of each)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set MLXQ_API_KEY)")
    p.add_argument("--memory-budget-mb", type=float, default=2048, help="evict least-recently-used models beyond this")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("loadtest", help="bounded load test of a running server on this machine")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--chat-model", default="smollm2-135m-instruct@q4g64")
    p.add_argument("--image-model", default=None, help="default: resnet20@q8 (resnet20-mlxq@q8 without the mirror)")
    p.add_argument("--clients", type=_positive_int, default=16)
    p.add_argument("--requests", type=_positive_int, default=256)
    p.add_argument("--chat-every", type=_positive_int, default=4, help="every Nth request is a chat completion")
    p.add_argument("--max-tokens", type=_positive_int, default=8)
    p.add_argument("--api-key", default=None)
    p.set_defaults(func=cmd_loadtest)
    p = sub.add_parser("export", help="quantize one configuration and write it to a folder (mlx-lm folder for "
                       "language models, safetensors + quantization.json for ResNets)")
    p.add_argument("--model", required=True, help="registry name, an mlx-lm folder or a Hugging Face id")
    p.add_argument("--q-bits", type=int, required=True, help="2, 3, 4, 5, 6, 8 (16: full precision)")
    p.add_argument("--q-group-size", type=int, default=None, help="affine: 32, 64 (default) or 128")
    p.add_argument("--q-mode", default="affine", help="affine (default), mxfp4, nvfp4 or mxfp8")
    p.add_argument("--q-quantizer", default="minmax", help="affine rounding: minmax (default) or mlx")
    p.add_argument("--method", default="rtn", help="rtn (default), gptq, awq or mixed, as for eval")
    p.add_argument("--calib", type=_positive_int, default=None, help="calibration size for calibrated methods")
    p.add_argument("--target-bpw", type=float, default=None, help="mixed: bits-per-weight budget")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--ctx", type=_positive_int, default=512, help="LM calibration chunk length in tokens")
    p.add_argument("--keep-first", action="store_true", help="keep the first layer in full precision")
    p.add_argument("--keep-last", action="store_true", help="keep the output layer in full precision")
    p.add_argument("--dtype", default="float32", help="LM dtype of the full-precision layers: float32, "
                   "bfloat16 or float16")
    p.add_argument("--out", required=True, help="folder to write (created; an earlier export there is replaced)")
    p.add_argument("--force", action="store_true", help="replace a non-empty folder export did not create")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("bench", help="performance comparison, written as CSV and markdown under docs/bench/")
    p.add_argument("--sections", default="resnet,ppl,decode,llama-cpp", help="comma-separated sections")
    p.add_argument("--out", default="docs/bench", help="output folder")
    p.add_argument("--quick", action="store_true", help="subsets (1,000 images, 2 chunks) for a fast check")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("train", help="train a CIFAR-10 ResNet from scratch (resumes from --out)")
    p.add_argument("--model", default="resnet20", help="resnet20 (default), resnet32, resnet44 or resnet56")
    p.add_argument("--epochs", type=_positive_int, default=200)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=_positive_int, default=None, help="train on N images (smoke tests)")
    p.add_argument("--eval-every", type=_positive_int, default=1, help="test accuracy every N epochs (curve)")
    p.add_argument("--out", default="cache/train/resnet20", help="checkpoints, history.json and curve.html")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="prepare the dashboard's demo sweep (cached runs for every chart)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("prepare", help="fetch and convert the offline SmolLM2 model into cache/")
    p.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core import runtime

    runtime.warn_if_slow_blas()
    try:
        return args.func(args)
    except LabError as error:
        print(f"\nerror: {error}" if not getattr(args, "json", False) else f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
