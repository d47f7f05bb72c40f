"""One evaluation run: quantize (core.quant.recipe), benchmark the deployed form in its compute dtype, measure
quality in float32, cache the row."""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core import data, runtime
from core.errors import LabError
from core.dist import collect
from core.dist.group import SINGLE, Ranks
from core.eval import blockwise, quality
from core.eval.config import EvalConfig, EvalResult, cache_key, result_cache
from core.eval.flatconv import FlatResNet
from core.parallel import parallel_steps
from core.eval.speed import bench_classifier, bench_generation
from core.models import resnet
from core.models.lm import Chain
from core.models.registry import ModelInfo, lm_path, resolve
from core.quant import footprint
from core.quant.baseline import LazyBaseline
from core.quant.layers import dequantize_model
from core.quant.precision import computing_in, deployed_size
from core.quant.recipe import quantize

CIFAR10_TEST_IMAGES = 10_000  # the size of CIFAR-10's test split, by the dataset's definition


def full_test_size(name: str, ctx: int | None = None) -> int:
    """How many items an evaluation of `name` on the whole test set uses: CIFAR-10 test images, or WikiText-2 test
    chunks of `ctx` tokens (default: the evaluation's) as the model's tokenizer cuts them (tokenized once, then
    reused by the run). Raises LabError when the model or the text is not available."""
    info, ctx = resolve(name), ctx or EvalConfig(name).ctx
    if info.kind == "vision":
        return CIFAR10_TEST_IMAGES
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(Path(lm_path(info)))
    return len(quality.wikitext_tokens(name, tokenizer)) // ctx


def run_eval(config: EvalConfig, use_cache: bool = True, progress: quality.Progress | None = None,
             ranks: Ranks = SINGLE) -> EvalResult:
    """Quantize, benchmark and evaluate one configuration; cached on disk under cache/results/.

    With `ranks` of a launched group (core.dist), every rank calls this together: each scores its share of the
    images or windows, the shares are assembled on every rank, rank 0 benchmarks alone and writes the row, and
    rank 0's cache decides for all whether there is anything to compute."""
    cfg = config.validated()
    key, cache = cache_key(cfg), result_cache()
    body = cache.read(key) if use_cache else None
    body = collect.from_root(body, ranks)
    if body is not None:
        return replace(EvalResult.from_dict(body), cached=True)
    started = time.perf_counter()
    step = progress or (lambda fraction, message: None)
    footprint.guard(cfg.model, "evaluate", cfg.spec, cfg.method, calib=cfg.calib or 0, ctx=cfg.ctx,
                    windows=cfg.limit or 1 << 30, dtype=cfg.dtype, parallel=parallel_steps())
    q = quantize(cfg, progress=lambda f, m: step(0.1 * f, m), loading_share=0.5)
    info, model, tokenizer, report = q.info, q.model, q.tokenizer, q.report
    size, bpw = deployed_size(model, cfg.dtype)  # from shapes: a model not read yet stays unread
    row = dict(size_bytes=size, bits_per_weight=bpw)
    row.update(layers_quantized=len(report.quantized), layers_kept=report.kept, layers_padded=report.padded,
               layer_bits=report.layer_bits, distillation=[asdict(p) for p in report.distillation])
    row["ranks"] = ranks.size
    eval_path = cfg.eval_path if cfg.eval_path != "auto" else ("dequant" if runtime.backend() == "cpu" else "kernel")
    eval_path = collect.from_root(eval_path, ranks)  # ranks on other backends follow rank 0's, which the row names
    if cfg.spec.full_precision:
        eval_path = "float"
    if info.kind == "vision":
        result = _eval_vision(cfg, info, model, eval_path, row, step, use_cache, ranks)
    else:
        result = _eval_lm(cfg, info, model, tokenizer, eval_path, row, step, ranks)
    result.eval_seconds = time.perf_counter() - started
    if ranks.root:
        cache.write(key, asdict(result))
    step(1.0, "done")
    return result


def _benchmark_alone(ranks: Ranks, bench):
    """Rank 0 benchmarks while the other ranks wait, so its timings are not shared with their work."""
    speed = bench() if ranks.root else None
    collect.barrier(ranks)
    collect.CLOCK.take()  # waiting for the benchmark is not communication
    return speed


def _assembled(local: np.ndarray, share: slice, n: int, ranks: Ranks, row: dict) -> np.ndarray:
    """The ranks' shares joined on every rank; the row records the collective's own time (after a barrier, so
    waiting for the slowest rank is not counted as communication)."""
    if not ranks.distributed:
        return local
    collect.barrier(ranks)
    collect.CLOCK.take()
    full = collect.assemble(local, share, n, ranks)
    row["allreduce_seconds"] = row.get("allreduce_seconds", 0.0) + collect.CLOCK.take()[0]
    return full


def _common(cfg: EvalConfig, info: ModelInfo, eval_path: str, speed, row: dict) -> dict:
    speed_fields = {} if speed is None else dict(
        latency_ms_p50=speed.latency_ms_p50, latency_ms_p90=speed.latency_ms_p90, throughput=speed.throughput,
        throughput_unit=speed.throughput_unit, peak_memory_bytes=speed.peak_memory_bytes,
        rss_bytes=speed.rss_bytes, bench_protocol=f"{speed.protocol}; computed in {cfg.dtype}",
        prefill_tokens_per_s=speed.extra.get("prefill_tokens_per_s"))
    return dict(model=cfg.model, method=cfg.method, bits=cfg.bits, group_size=cfg.group_size, mode=cfg.mode,
                backend=runtime.backend(), tag=cfg.tag, kind=info.kind, baseline=info.baseline,
                eval_path=eval_path, compute_dtype=cfg.dtype, quality_dtype="float32", config=asdict(cfg),
                environment=runtime.describe(),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **{"latency_ms_p50": None, "throughput": None, "peak_memory_bytes": None, **speed_fields}, **row)


def _benchmark_progress(step):
    """The benchmark's share of a run's progress (0.1 to 0.2): 'benchmarking: trial 4/13' moves the bar."""
    return lambda fraction, message: step(0.1 + 0.1 * fraction, f"benchmarking: {message}")


def _eval_vision(cfg, info, model, eval_path, row, step, use_cache, ranks) -> EvalResult:
    images, labels = data.load_cifar10("test")
    idx = data.stratified_indices(labels, cfg.limit, cfg.seed)
    inputs = resnet.preprocess(images[idx])
    speed = None
    if cfg.bench:
        step(0.1, "benchmarking")
        with computing_in(model, cfg.dtype):
            speed = _benchmark_alone(ranks, lambda: bench_classifier(model, inputs[:250],
                                                                     progress=_benchmark_progress(step)))
    flat = None
    if eval_path in ("dequant", "float"):
        dequantize_model(model)
        flat = FlatResNet.try_build(model) if runtime.backend() == "cpu" else None
    _enough_items(len(idx), ranks)
    share = collect.part(len(idx), ranks)
    step(0.2, f"evaluating {share.stop - share.start} test images" + _of_ranks(len(idx), ranks))
    progress = lambda f, m: step(0.2 + 0.75 * f, m)  # noqa: E731
    if flat is not None:  # the same logits, several times faster on the CPU (core.eval.flatconv)
        logits = flat.classify(inputs[share.start:share.stop], progress=progress)
    else:
        logits = quality.classify_batches(model, inputs[share.start:share.stop], progress=progress)
    acc = quality.accuracy(_assembled(logits, share, len(idx), ranks, row), labels[idx])
    agreement = reference = None
    if not cfg.spec.full_precision:
        step(0.95, "full-precision reference")
        base = run_eval(cfg.baseline(), use_cache=use_cache, ranks=ranks,  # as a baseline run the user made
                        progress=lambda f, m: step(0.95 + 0.05 * f, f"full-precision reference: {m}"))
        agreement = 100.0 * float(np.mean(np.asarray(base.predictions) == acc.predictions))
        reference = base.value
    p = acc.top1
    return EvalResult(
        **_common(cfg, info, eval_path, speed, row), metric="top1_accuracy", value=100 * p,
        stderr=100 * float(np.sqrt(p * (1 - p) / acc.n)), n=acc.n, ci95_low=100 * acc.ci95[0],
        ci95_high=100 * acc.ci95[1], top5=100 * acc.top5, agreement=agreement, reference_value=reference,
        protocol=(f"CIFAR-10 test, {acc.n} images" + ("" if acc.n >= CIFAR10_TEST_IMAGES else
                  f" (class-stratified subset, seed {cfg.seed})") + "; top-1 %, 95 % Wilson interval; computed in float32"
                  + (f"; activations simulated at {cfg.act_bits} bits, per-tensor ranges from {cfg.calib} CIFAR-10 "
                     "train images" if cfg.act_bits else "") + _split_note(ranks)),
        predictions=acc.predictions.tolist())


def _eval_lm(cfg, info, model, tokenizer, eval_path, row, step, ranks) -> EvalResult:
    step(0.08, "tokenizing WikiText-2 test")
    tokens = quality.wikitext_tokens(cfg.model, tokenizer)
    bos_id = quality.chunk_bos(cfg.bos, tokenizer)
    windows = quality.chunk_windows(tokens, cfg.ctx, bos_id)
    chosen = data.spread_indices(len(windows), cfg.limit)
    windows = windows[chosen]
    speed = None
    if cfg.bench:
        step(0.1, "benchmarking generation")
        prompt = tokens[: cfg.bench_prefill]
        with computing_in(model, cfg.dtype):
            speed = _benchmark_alone(ranks, lambda: bench_generation(model, prompt, cfg.bench_decode,
                                                                     progress=_benchmark_progress(step)))
    # One piece of one model in memory at a time: the full-precision reference is read from the checkpoint piece
    # by piece, the quantized model's pieces de-quantized one at a time on the CPU (core.eval.blockwise).
    baseline = LazyBaseline(info)
    pieces = baseline if cfg.spec.full_precision else blockwise.ModelPieces(model, eval_path == "dequant")
    reference = None if cfg.spec.full_precision else baseline
    _enough_items(len(windows), ranks)
    share = collect.part(len(windows), ranks)
    step(0.2, f"scoring {share.stop - share.start} chunks" + _of_ranks(len(windows), ranks))
    scores = blockwise.token_scores(Chain(model), pieces, windows[share], reference,
                                    progress=lambda f, m: step(0.2 + 0.8 * f, m))
    ppl = quality.summarize({name: _assembled(part, share, len(windows), ranks, row)
                             for name, part in scores.items()})
    subset = "" if len(chosen) == len(tokens) // cfg.ctx else f", {len(chosen)} of {len(tokens) // cfg.ctx} chunks evenly spread"
    return EvalResult(
        **_common(cfg, info, eval_path, speed, row), metric="perplexity", value=ppl.ppl, stderr=ppl.stderr,
        n=ppl.n_tokens, kl_mean=ppl.kl_mean, kl_stderr=ppl.kl_stderr, reference_value=ppl.reference_ppl,
        protocol=f"WikiText-2 raw test ({len(tokens)} tokens{subset}); "
                 + quality.PPL_PROTOCOL.format(ctx=cfg.ctx, bos="BOS" if bos_id is not None else "no BOS")
                 + "; PPL ± standard error; KL vs full precision; computed in float32" + _split_note(ranks))


def _enough_items(n: int, ranks: Ranks) -> None:
    """Every rank needs a share; every rank sees the same n, so all of them stop here together."""
    if n < ranks.size:
        raise LabError(f"{n} items cannot be split over {ranks.size} ranks: evaluate at least {ranks.size}.")


def _of_ranks(n: int, ranks: Ranks) -> str:
    return f" of {n} (rank {ranks.rank} of {ranks.size})" if ranks.distributed else ""


def _split_note(ranks: Ranks) -> str:
    return f"; items split over {ranks.size} ranks (mx.distributed), joined by all_sum" if ranks.distributed else ""
