"""One function per `python -m core` command: turn the parsed flags into a config, call the core function that
does the work, print what it returns. Modules a command alone needs are imported inside it."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from core import runtime, settings
from core.cli.flags import config_from_args, sweep_from_args
from core.errors import LabError


def stderr_progress(fraction: float, message: str) -> None:
    print(f"\r[{fraction:6.1%}] {message:<40}", end="", file=sys.stderr, flush=True)


def cmd_eval(args) -> int:
    """Under `mlx.launch` every rank runs this: the items are split over the ranks, and rank 0 alone reports."""
    from core.dist.group import world
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval
    from core.report.summaries import result_text

    ranks = world()
    talk = ranks.root and not args.json
    result = run_eval(config_from_args(EvalConfig, args), use_cache=not args.no_cache,
                      progress=stderr_progress if talk else None, ranks=ranks)
    if not ranks.root:
        return 0
    if talk:
        print(file=sys.stderr)
    print(json.dumps(result.public()) if args.json else result_text(result))
    return 0


def cmd_sweep(args) -> int:
    """Every rank of an `mlx.launch` group runs this with the same flags: each computes its share of the
    configurations (core.eval.sweep) and rank 0 writes the CSV. SIGTERM (the launcher stopping the group when a
    rank fails) becomes KeyboardInterrupt, so the rank still reports what it lost."""
    import signal

    from core.cache import atomic_write_text
    from core.dist.group import world
    from core.eval.config import EvalResult
    from core.eval.sweep import default_csv, run_sweep
    from core.report.results import write_csv
    from core.report.summaries import result_text

    ranks = world()
    config = sweep_from_args(args)
    configs = config.configs()  # fail before any work
    if ranks.distributed:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    outcome = run_sweep(config, use_cache=not args.no_cache, ranks=ranks,
                        progress=None if ranks.distributed else stderr_progress)
    if not ranks.root:
        return 0
    for row in outcome.rows:
        print(json.dumps(row) if args.json else result_text(EvalResult.from_dict(row)))
    out = Path(config.out) if config.out else default_csv(list(config.models))
    written = write_csv(outcome.rows, out, EvalResult.public_fields())
    print(f"{len(configs)} configurations over {ranks.size} rank(s): computed {len(outcome.computed)}, "
          f"from the cache {len(outcome.cached)}", file=sys.stderr)
    print(f"wrote {written}", file=sys.stderr if args.json else sys.stdout)
    if args.summary:  # for a caller that cannot read rank 0's output apart from the other ranks' (core.jobs)
        atomic_write_text(Path(args.summary), json.dumps(
            {"rows": outcome.rows, "csv": str(written.resolve()), "configurations": len(configs),
             "ranks": ranks.size, "computed": len(outcome.computed), "cached": len(outcome.cached)}))
    return 0


def cmd_sensitivity(args) -> int:
    from core.jobs.kinds import KINDS
    from core.report.summaries import sensitivity_text

    kind = KINDS["sensitivity"]
    run = kind.run(config_from_args(kind.config, args), use_cache=not args.no_cache,
                   progress=None if args.json else stderr_progress)
    if args.json:
        print(json.dumps({**run.summary(), "seconds": run.seconds}))
        return 0
    print(file=sys.stderr)
    print(sensitivity_text(run.config.model, run.rows, run.allocation))
    print(f"{len({r['layer'] for r in run.rows})} layers x {len({r['bits'] for r in run.rows})} widths in "
          f"{run.seconds:.1f} s")
    return 0


def cmd_prepare(args) -> int:
    from core.models.gguf import prepare_smollm2

    print(f"smollm2-135m-instruct: {prepare_smollm2(settings.cache_root())}", file=sys.stderr)
    return 0


def cmd_make_model(args) -> int:
    from core.models.gguf import prepare_smollm2
    from core.models.synthetic import make_random_lm, parameter_count, shape_config

    tokenizer = Path(args.tokenizer) if args.tokenizer else prepare_smollm2(settings.cache_root())
    out = make_random_lm(args.shape, Path(args.out), tokenizer, seed=args.seed)
    count = parameter_count(shape_config(args.shape))
    print(f"{args.shape}: {count / 1e9:.2f} B parameters, random bfloat16 weights, in {out}")
    return 0


def cmd_blas(args) -> int:
    from core.blas import choice

    made = choice.choice(fresh=args.fresh)
    if args.preload:
        picked = choice.for_launcher(made)
        print(f"{picked[0]} {picked[1] or '-'}" if picked else "")
    else:
        print(made.summary() if made else "No tuned BLAS to choose here (Linux with Debian's libopenblas0-pthread "
                                          "or libblis4-pthread).")
    return 0


def cmd_results(args) -> int:
    from core.report.results import load_rows, write_csv

    rows = load_rows(Path(args.dir) if args.dir else settings.results_dir())
    if args.out:
        print(f"wrote {len(rows)} rows to {write_csv(rows, Path(args.out))}")
    else:
        for r in rows:
            print(f"{r['model']:24} {r['tag']:10} {r['metric']:14} {r['value']:10.4f} ± {r['stderr']:.4f} "
                  f"n={r['n']:<7} {r['bits_per_weight']:6.3f} bpw  {r['backend']} {r['device']}")
    return 0


def cmd_demo(args) -> int:
    from core.report.demo import prepare_demo

    keys = prepare_demo(progress=stderr_progress)
    print(f"\ndemo sweep ready: {len(keys)} runs; switch on Demo mode in the dashboard", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from core.serve.app import ServeSettings, default_models, serve

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else default_models()
    api = ServeSettings(models=models, api_key=args.api_key or settings.api_key(),
                        memory_budget_bytes=int(args.memory_budget_mb * 1024**2), dtype=args.dtype,
                        max_batch=args.max_batch, max_queue=args.max_queue, max_vision_queue=args.max_vision_queue,
                        request_timeout_s=args.request_timeout, allow_special_tokens=args.allow_special_tokens,
                        max_prompt_tokens=args.max_prompt_tokens, header_timeout_s=args.header_timeout,
                        body_timeout_s=args.body_timeout, shutdown_grace_s=args.shutdown_grace)
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise LabError(f"--request-timeout must be a positive number of seconds, not {args.request_timeout}.")
    where = f"http://{args.host}:{args.port}"
    banner = (f"serving {', '.join(models)} in {args.dtype or runtime.default_dtype()} on {where} "
              f"(OpenAI-compatible: {where}/v1)" + ("; API key required" if api.api_key else ""))
    serve(api, args.host, args.port, banner=banner)  # the banner once every entry is checked (a bad one: LabError)
    return 0


def cmd_loadtest(args) -> int:
    from core.models.registry import default_vision_model
    from core.serve.loadtest import run_load

    image_model = args.image_model or f"{default_vision_model()}@q8"
    report = run_load(args.url, args.chat_model, image_model, clients=args.clients, requests=args.requests,
                      chat_every=args.chat_every, max_tokens=args.max_tokens, api_key=args.api_key)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.errors == 0 else 1


def cmd_bench(args) -> int:
    from core.bench.run import SECTIONS, run_bench

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise LabError(f"Unknown bench section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}.")
    report = run_bench(sections, Path(args.out), "python -m core bench " + " ".join(sys.argv[2:]), quick=args.quick,
                       chunks=args.chunks, compare=args.compare_chunks, time_limit=args.time_limit)
    print(report.read_text())
    return 0


def cmd_export(args) -> int:
    from core.jobs.kinds import KINDS

    kind = KINDS["export"]
    config = config_from_args(kind.config, args)
    result = kind.run(config, progress=stderr_progress)
    lines = _gguf_lines(result) if config.format == "gguf" else _folder_lines(result)
    print("\n".join([f"\nexported {config.model} {result.tag} to {result.path}", *lines]), file=sys.stderr)
    print(result.path)
    return 0


def _folder_lines(result) -> list[str]:
    form = ("model.safetensors + quantization.json; reload with core.deploy.exported.load_exported(DIR)"
            if result.kind == "vision" else "mlx-lm folder; mlx_lm.load / python -m mlx_lm generate --model DIR")
    return [f"  {form}",
            f"  size: {result.size_bytes / 1e6:.2f} MB of arrays, {result.bits_per_weight:.3f} bits/weight; "
            f"{result.file_bytes / 1e6:.2f} MB on disk",
            f"  {result.report.summary()}; computes in {result.dtype}"]


def _gguf_lines(result) -> list[str]:
    kinds = ", ".join(f"{n} {t}" for t, n in sorted(Counter(result.tensor_types.values()).items()))
    lines = ["  GGUF; llama.cpp, Ollama and LM Studio load it (llama-cli -m FILE, llama-server -m FILE)",
             f"  {result.file_bytes / 1e6:.2f} MB; weight tensors {result.file_bits_per_weight:.3f} bits/weight "
             f"({kinds})",
             "  the lab's grids bit for bit" if result.gguf_type == "exact" else
             f"  {result.gguf_type} made by llama.cpp's quantizer from the lab's de-quantized weights"]
    if result.requantized:
        lines.append(f"  re-quantized to Q8_0 (no GGUF type holds their grid): {', '.join(result.requantized)}")
    return lines


def cmd_train(args) -> int:
    from core.jobs.kinds import KINDS
    from core.models.train import write_curve

    kind = KINDS["train"]
    config = config_from_args(kind.config, args)
    history = kind.run(config, progress=stderr_progress)
    curve = write_curve(Path(config.out)) or "needs plotly"
    print(f"\nfinal test top-1 {history[-1]['test_top1']:.2f} % after {len(history)} epochs "
          f"({sum(h['seconds'] for h in history):.0f} s of training); curve: {curve}", file=sys.stderr)
    return 0
