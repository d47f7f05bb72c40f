"""The `resnet`, `eval-command`, `ppl`, `ppl-kl` and `full-eval` bench sections: evaluation speed on the CPU, the
plain path against the project's (images/s over CIFAR-10, perplexity tokens/s), the whole `eval` command against
one plain pass, and the wall time of a full test-set evaluation with the deployed models."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np

from core import data, runtime
from core.bench.rows import BenchRow, best_of
from core.blas import choice as blas_choice, loaded as loaded_blas
from core.deploy.ids import load_deployed
from core.eval import quality
from core.eval.flatconv import FLAT_BATCH, FlatResNet
from core.models import resnet
from core.models.registry import resolve
from core.quant.baseline import load_baseline
from core.quant.layers import dequantize_model
from core.quant.spec import QuantSpec


def resnet_eval_speed(names=("resnet20",), bits=(16, 8, 4), limit: int | None = None, trials: int = 1) -> list[BenchRow]:
    """Images/s over the CIFAR-10 test set: the plain evaluation (the quantized model's forward, glibc's default
    allocator) against the same forward with large buffers kept on the heap, and against the project's path
    (de-quantized weights, BatchNorm folded, core.eval.flatconv); top-1 agreement with the plain run."""
    images, labels = data.load_cifar10("test")
    idx = data.stratified_indices(labels, limit)
    x = resnet.preprocess(images[idx])
    rows = []
    for name in names:
        for b in bits:
            spec = QuantSpec(b).validated()
            model = load_deployed(resolve(name), spec).model
            with runtime.glibc_default_allocator():
                t_plain, logits = best_of(lambda: quality.classify_batches(model, x), trials,
                                           warmup=lambda: mx.eval(model(x[:500])))
            subject = f"{name} {spec.tag}"
            rows.append(BenchRow("resnet-eval", subject, "plain: quantized model's forward, glibc default allocator",
                                 len(idx) / t_plain, "images/s", f"{len(idx)} images, {t_plain:.1f} s"))
            variants = [("same forward, large buffers kept on the heap", lambda: model, 500)]
            if runtime.backend() == "cpu":
                variants.append(("project: de-quantized, BatchNorm folded, flat GEMM convolutions, one CPU stream per core",
                                 lambda: FlatResNet(dequantize_model(model)), None))
            for variant, build, batch in variants:
                fn = build()  # in order: the flat executor de-quantizes the model in place
                run = (lambda: fn.classify(x)) if batch is None else (lambda: quality.classify_batches(fn, x, batch))
                t, out = best_of(run, trials, warmup=lambda: mx.eval(fn(x[:batch or FLAT_BATCH])))
                same = float(np.mean(out.argmax(axis=1) == logits.argmax(axis=1))) * 100
                rows.append(BenchRow("resnet-eval", subject, variant, len(idx) / t, "images/s",
                                     f"{len(idx)} images, {t:.1f} s; {same:.2f} % same top-1; {t_plain / t:.2f}x"))
    return rows


EVAL_COMMAND = ("eval", "--model", "resnet20", "--q-bits", "4", "--q-group-size", "32", "--no-cache", "--no-bench",
                "--json")


def plain_pass_seconds(limit: int | None = None) -> tuple[float, int]:
    """(seconds, images) of one plain evaluation pass of the float32 ResNet-20 over the test set (its own forward,
    batches of 500, glibc's default allocator)."""
    images, labels = data.load_cifar10("test")
    x = resnet.preprocess(images[data.stratified_indices(labels, limit)])
    model, _ = load_baseline(resolve("resnet20"))
    with runtime.glibc_default_allocator():
        t_plain, _ = best_of(lambda: quality.classify_batches(model, x), 1, warmup=lambda: mx.eval(model(x[:500])))
    return t_plain, len(x)


def plain_pass_in_child(env: dict[str, str], limit: int | None = None) -> float:
    """plain_pass_seconds in a child process with `env` (another BLAS preloaded: core.blas.choice.preload_env)."""
    code = ("from core import runtime; runtime.configure_process(); "  # as `python -m core` does
            f"from core.bench.eval_speed import plain_pass_seconds as p; print(p({limit!r})[0])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _plain_with_openblas_own_pick(limit: int | None) -> float | None:
    """The plain pass in a child process on Debian's OpenBLAS with the kernel it picks itself: what plain MLX gets
    here from the usual preload. None where that is what this process runs already, or there is no OpenBLAS."""
    if loaded_blas.library() == "OpenBLAS" and not os.environ.get("OPENBLAS_CORETYPE"):
        return None
    made = blas_choice.choice()
    own = made.entries[0] if made and made.entries else None
    if own is None or own.library != "OpenBLAS" or own.coretype:
        return None
    return plain_pass_in_child(blas_choice.preload_env(own, runtime.usable_cpus()), limit)


def eval_command_speed(limit: int | None = None) -> list[BenchRow]:
    """The whole `python -m core eval` process for resnet20 int4 g32 (start-up, quantization, the full-precision
    reference and the quantized evaluation, no cache) against one plain evaluation pass of the float32 model
    (its own forward, batches of 500, glibc's default allocator) in the same run, on the same BLAS; and, where the
    lab chose another BLAS or kernel, against the plain pass on OpenBLAS's own pick too."""
    t_plain, n = plain_pass_seconds(limit)
    t_stock = _plain_with_openblas_own_pick(limit)
    command = [sys.executable, "-m", "core", *EVAL_COMMAND, *(["--limit", str(limit)] if limit else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=os.environ)
    t_command = time.perf_counter() - start
    shown = "python -m core " + " ".join(command[3:])
    blas = runtime.blas_kernel() or "MLX's bundled reference BLAS"
    rows = [BenchRow("resnet-eval", "resnet20 fp32 plain pass", "plain: the model's forward, batches of 500",
                     t_plain, "s", f"{n} images, one pass, glibc default allocator, {blas}")]
    versus = f"{t_plain / t_command:.2f}x the plain pass on the same BLAS"
    if t_stock is not None:
        rows.append(BenchRow("resnet-eval", "resnet20 fp32 plain pass", "plain, on OpenBLAS with its own kernel pick",
                             t_stock, "s", f"{n} images, one pass, glibc default allocator, a child process"))
        versus += f"; {t_stock / t_command:.2f}x the plain pass on OpenBLAS's own pick"
    rows.append(BenchRow("resnet-eval", "resnet20 q4g32 whole eval command", shown, t_command, "s",
                         f"whole process, full-precision reference included, {blas}; {versus}"))
    return rows


def ppl_eval_speed(chunks: int = 8, trials: int = 1) -> list[BenchRow]:
    """Window tokens/s: a plain fp32 forward of each 512-token chunk (all logits, glibc's default allocator)
    against the project's perplexity evaluation of the same chunks (scored half through the head, two windows
    per CPU stream, one stream per core)."""
    info = resolve("smollm2-135m-instruct")
    model, tokenizer = load_baseline(info)
    tokens = quality.wikitext_tokens(info.name, tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)[data.spread_indices(len(tokens) // 512, chunks)]

    def plain():
        for w in windows:
            logits = model(mx.array(w[None]))
            mx.eval(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    with runtime.glibc_default_allocator():
        t_plain, _ = best_of(plain, trials, warmup=lambda: mx.eval(model(mx.array(windows[:1]))))
    t_fast, _ = best_of(lambda: quality.perplexity(model, windows), trials,
                         warmup=lambda: quality.perplexity(model, windows[:1]))
    n = windows.size
    return [BenchRow("ppl-eval", "smollm2 fp32", "plain forward, one chunk at a time", n / t_plain, "tokens/s",
                     f"{len(windows)} chunks of 512"),
            BenchRow("ppl-eval", "smollm2 fp32", "project perplexity path", n / t_fast, "tokens/s",
                     f"{len(windows)} chunks of 512; {t_plain / t_fast:.2f}x")]


def ppl_kl_speed(chunks: int = 8, trials: int = 1) -> list[BenchRow]:
    """Perplexity with KL against the full-precision reference (what every quantized language-model evaluation
    computes): the reference's pass ordered before the model's, against the order the lazy graph picks, same
    chunks and models, alternating."""
    from core.eval.config import EvalConfig
    from core.quant.recipe import quantize

    info = resolve("smollm2-135m-instruct")
    reference, tokenizer = load_baseline(info)
    model = dequantize_model(quantize(EvalConfig(info.name, bits=4).validated()).model)
    tokens = quality.wikitext_tokens(info.name, tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)[data.spread_indices(len(tokens) // 512, chunks)]
    times = {True: [], False: []}
    quality.token_scores(model, windows[:2], reference)  # warm-up
    for _ in range(trials):
        for ordered in (False, True):
            t, _ = best_of(lambda: quality.token_scores(model, windows, reference, ordered=ordered), 1,
                           warmup=lambda: None)
            times[ordered].append(t)
    n, interleaved, ordered = windows.size, min(times[False]), min(times[True])
    note = f"{len(windows)} chunks of 512, int4 g64 model against the float32 reference"
    return [BenchRow("ppl-kl", "smollm2 int4 g64 + fp32 reference", "passes in the lazy graph's order", n / interleaved,
                     "tokens/s", note),
            BenchRow("ppl-kl", "smollm2 int4 g64 + fp32 reference", "reference pass first (mx.depends)", n / ordered,
                     "tokens/s", f"{note}; {interleaved / ordered:.2f}x")]


def full_eval_speed(names=tuple(resnet.DEPTHS), bits=(16, 8, 6, 5, 4, 3), lm_bits=(16, 8, 4)) -> list[BenchRow]:
    """Wall time of a full test-set evaluation with the deployed (quantized-kernel) model in the backend's
    compute dtype, load excluded:
    every ResNet on the 10,000 CIFAR-10 test images, SmolLM2 perplexity on all 592 WikiText-2 chunks."""
    images, labels = data.load_cifar10("test")
    x = resnet.preprocess(images)
    rows = []
    for name in names:
        for b in bits:
            spec = QuantSpec(b).validated()
            d = load_deployed(resolve(name), spec)
            model = d.model
            t, logits = best_of(lambda: quality.classify_batches(model, x, batch_size=2500), 2,
                                 warmup=lambda: quality.classify_batches(model, x[:2500], batch_size=2500))
            acc = quality.accuracy(logits, labels)
            rows.append(BenchRow("full-eval", f"{name} {spec.tag}, {d.dtype}", f"CIFAR-10 test, {len(x):,} images", t, "s",
                                 f"{len(x) / t:,.0f} images/s; top-1 {100 * acc.top1:.2f} %"))
    info = resolve("smollm2-135m-instruct")
    for b in lm_bits:
        spec = QuantSpec(b).validated()
        d = load_deployed(info, spec)
        model, tokenizer = d.model, d.tokenizer
        tokens = quality.wikitext_tokens(info.name, tokenizer)
        windows = quality.chunk_windows(tokens, 512, None)
        t, result = best_of(lambda: quality.perplexity(model, windows, batch_size=16), 1,
                             warmup=lambda: quality.perplexity(model, windows[:16], batch_size=16))
        rows.append(BenchRow("full-eval", f"smollm2 {spec.tag}, {d.dtype}", "WikiText-2 test, 592 chunks", t, "s",
                             f"{windows.size / t:,.0f} tokens/s; PPL {result.ppl:.3f} ± {result.stderr:.3f}"))
    return rows
