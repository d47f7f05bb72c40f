"""One evaluation run: load, quantize, benchmark the deployed form, measure quality, cache the result row."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import numpy as np

from core import data, evaluate, models, resnet, runtime
from core.benchmark import bench_classifier, bench_generation
from core.cache import ResultCache, digest
from core.errors import LabError
from core.flatconv import FlatResNet
from core.actquant import ACT_BITS
from core.methods import DEFAULT_CALIBRATION, METHODS, Calibration, apply_method
from core.quantize import QuantSpec, bits_per_weight, dequantize_model, size_bytes, weight_layer_paths

RESULTS_VERSION = 2  # bump when a change alters measured values, so old cache entries are not reused
EVAL_PATHS = ("auto", "dequant", "kernel")
BOS_POLICIES = ("auto", "always", "never")
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines a run; every field is part of the cache key."""

    model: str
    bits: int = 16
    group_size: int | None = None
    mode: str = "affine"
    method: str = "rtn"  # rtn, gptq, awq or mixed (core.methods)
    calib: int | None = None  # calibration images / chunks for calibrated methods (None: the method's default)
    target_bpw: float | None = None  # mixed precision: the bits-per-weight budget
    act_bits: int | None = None  # ResNets: simulated integer activations (8 = W*A8), ranges from train images
    quantizer: str = "minmax"
    limit: int | None = None  # images (vision) or 512-token chunks (LM); None = the full test set
    seed: int = 0
    keep_first: bool = False
    keep_last: bool = False
    eval_path: str = "auto"  # quality from the de-quantized weights ('dequant') or the quantized kernels
    dtype: str = "float32"  # LM compute dtype
    ctx: int = 512
    bos: str = "auto"  # BOS replaces each chunk's first token: 'auto' = when the tokenizer adds one (llama.cpp)
    bench: bool = True
    bench_prefill: int = 128
    bench_decode: int = 32

    def validated(self) -> "EvalConfig":
        info = models.resolve(self.model)
        spec = QuantSpec(self.bits, self.group_size, self.mode, self.quantizer).validated()
        if not spec.full_precision and self.method not in METHODS:
            raise LabError(f"Unknown method {self.method!r}; available: {', '.join(METHODS)}.")
        calibrated = not spec.full_precision and self.method != "rtn"
        if calibrated and spec.mode != "affine":
            raise LabError(f"Method {self.method} works on affine quantization; {spec.mode} is round-to-nearest only.")
        if calibrated and self.method == "awq" and info.kind == "vision":
            raise LabError("AWQ is for language models; for ResNets use gptq (with BatchNorm bias correction).")
        if calibrated and spec.quantizer != "minmax":
            raise LabError(f"Method {self.method} uses this project's min-max grid; drop --q-quantizer mlx.")
        if self.act_bits is not None and (self.act_bits not in ACT_BITS or info.kind != "vision"):
            raise LabError(f"--act-bits takes {', '.join(map(str, ACT_BITS))} and applies to the ResNets only.")
        if self.calib is not None and self.calib <= 0:
            raise LabError(f"--calib must be a positive number, not {self.calib}.")
        if self.method == "mixed" and not spec.full_precision and (self.target_bpw is None or self.target_bpw <= 0):
            raise LabError("Method mixed needs --target-bpw, the bits-per-weight budget (e.g. 4.5).")
        if self.eval_path not in EVAL_PATHS:
            raise LabError(f"--eval-path must be one of {', '.join(EVAL_PATHS)}.")
        if self.dtype not in DTYPES:
            raise LabError(f"--dtype must be one of {', '.join(DTYPES)}.")
        if self.limit is not None and self.limit <= 0:
            raise LabError(f"--limit must be a positive number, not {self.limit}.")
        if self.bos not in BOS_POLICIES:
            raise LabError(f"--bos must be one of {', '.join(BOS_POLICIES)}.")
        if info.kind == "lm" and (self.ctx < 8 or self.ctx % 2):
            raise LabError("--ctx must be an even number of tokens, at least 8.")
        return replace(self, bits=spec.bits, group_size=spec.group_size, mode=spec.mode, quantizer=spec.quantizer,
                       method="none" if spec.full_precision else self.method,
                       calib=(self.calib or self._default_calibration(info.kind)) if calibrated or self.act_bits else None,
                       target_bpw=self.target_bpw if calibrated and self.method == "mixed" else None,
                       keep_first=self.keep_first and not spec.full_precision,
                       keep_last=self.keep_last and not spec.full_precision)

    def _default_calibration(self, kind: str) -> int:
        """mixed measures every layer at every width: it defaults to the sensitivity table's smaller sizes."""
        if self.method == "mixed":
            from core.sensitivity import DEFAULT_CALIBRATION as SENSITIVITY_CALIBRATION

            return SENSITIVITY_CALIBRATION[kind]
        return DEFAULT_CALIBRATION[kind]

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, self.mode, self.quantizer)

    @property
    def tag(self) -> str:
        """The spec's tag, with the method when it is not round-to-nearest: 'q4g64', 'q4g64-gptq', 'mixed4.5'."""
        activations = f"-a{self.act_bits}" if self.act_bits else ""
        if self.method == "mixed":
            return f"mixed{self.target_bpw:g}-g{self.group_size}{activations}"
        return self.spec.tag + ("" if self.method in ("rtn", "none") else f"-{self.method}") + activations

    def baseline(self) -> "EvalConfig":
        return replace(self, bits=16, group_size=None, mode="affine", quantizer="minmax", method="none",
                       calib=None, target_bpw=None, act_bits=None, keep_first=False, keep_last=False)


@dataclass
class EvalResult:
    # The CLI contract's fields first.
    model: str
    method: str
    bits: int
    group_size: int | None
    mode: str
    metric: str
    value: float
    stderr: float
    n: int
    size_bytes: int
    bits_per_weight: float
    latency_ms_p50: float | None
    throughput: float | None
    peak_memory_bytes: int | None
    backend: str
    # Everything else needed to read and reproduce the number.
    tag: str = ""
    kind: str = ""
    baseline: str = ""
    protocol: str = ""
    ci95_low: float | None = None
    ci95_high: float | None = None
    top5: float | None = None
    agreement: float | None = None  # top-1 agreement with the full-precision model, percent
    kl_mean: float | None = None
    kl_stderr: float | None = None
    reference_value: float | None = None  # the full-precision model's metric on the same data
    latency_ms_p90: float | None = None
    throughput_unit: str = ""
    prefill_tokens_per_s: float | None = None
    rss_bytes: int | None = None
    bench_protocol: str = ""
    layers_quantized: int = 0
    layers_kept: dict = field(default_factory=dict)
    layers_padded: dict = field(default_factory=dict)
    layer_bits: dict = field(default_factory=dict)  # mixed precision: the width each layer got
    eval_path: str = ""
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    eval_seconds: float = 0.0
    created: str = ""
    cached: bool = False
    predictions: list | None = None  # vision top-1 per image; kept in the cache, not shown

    def public(self) -> dict:
        out = asdict(self)
        out.pop("predictions")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def cache_key(cfg: EvalConfig) -> str:
    env = runtime.describe()
    return digest({"config": asdict(cfg), "backend": env["backend"], "device": env["device"],
                   "mlx": env["mlx"], "mlx_lm": env["mlx_lm"], "version": RESULTS_VERSION})


def result_cache() -> ResultCache:
    """Where result rows live: MLXQ_RESULTS, or cache/results (tests point it at a temporary folder)."""
    return ResultCache(Path(os.environ.get("MLXQ_RESULTS", models.cache_root() / "results")))


def run_eval(config: EvalConfig, use_cache: bool = True, progress: evaluate.Progress | None = None) -> EvalResult:
    """Quantize, benchmark and evaluate one configuration; cached on disk under cache/results/."""
    cfg = config.validated()
    key, cache = cache_key(cfg), result_cache()
    if use_cache and (body := cache.read(key)) is not None:
        return replace(EvalResult.from_dict(body), cached=True)
    started = time.perf_counter()
    info = models.resolve(cfg.model)
    step = progress or (lambda fraction, message: None)
    step(0.0, f"loading {cfg.model}")
    model, tokenizer = models.load(info, DTYPES[cfg.dtype])
    layers = weight_layer_paths(model)
    keep = {p for p, wanted in ((layers[0], cfg.keep_first), (_output_layer(model, layers), cfg.keep_last)) if wanted}
    step(0.05, f"quantizing ({cfg.tag})")
    report = apply_method(model, tokenizer, info.kind, cfg.spec, cfg.method, keep,
                          Calibration(cfg.calib or 0, cfg.ctx, cfg.seed, cfg.target_bpw),
                          progress=lambda f, m: step(0.05 + 0.05 * f, m))
    if cfg.act_bits:
        from core.actquant import quantize_activations
        from core.methods import calibration_images

        quantize_activations(model, layers, calibration_images(cfg.calib, cfg.seed), cfg.act_bits)
    row = dict(size_bytes=size_bytes(model), bits_per_weight=bits_per_weight(model),
               layers_quantized=len(report.quantized), layers_kept=report.kept, layers_padded=report.padded,
               layer_bits=report.layer_bits)
    eval_path = cfg.eval_path if cfg.eval_path != "auto" else ("dequant" if runtime.backend() == "cpu" else "kernel")
    if cfg.spec.full_precision:
        eval_path = "float"
    if info.kind == "vision":
        result = _eval_vision(cfg, info, model, eval_path, row, step, use_cache)
    else:
        result = _eval_lm(cfg, info, model, tokenizer, eval_path, row, step)
    result.eval_seconds = time.perf_counter() - started
    cache.write(key, asdict(result))
    step(1.0, "done")
    return result


def _output_layer(model, layers: list[str]) -> str:
    """The layer producing the outputs: the last weight layer, or the embedding when the head is tied to it."""
    if getattr(getattr(model, "args", None), "tie_word_embeddings", False) and "lm_head" not in model:
        return next(p for p in layers if p.endswith("embed_tokens"))
    return layers[-1]


def _common(cfg: EvalConfig, info: models.ModelInfo, eval_path: str, speed, row: dict) -> dict:
    speed_fields = {} if speed is None else dict(
        latency_ms_p50=speed.latency_ms_p50, latency_ms_p90=speed.latency_ms_p90, throughput=speed.throughput,
        throughput_unit=speed.throughput_unit, peak_memory_bytes=speed.peak_memory_bytes,
        rss_bytes=speed.rss_bytes, bench_protocol=speed.protocol,
        prefill_tokens_per_s=speed.extra.get("prefill_tokens_per_s"))
    return dict(model=cfg.model, method=cfg.method, bits=cfg.bits, group_size=cfg.group_size, mode=cfg.mode,
                backend=runtime.backend(), tag=cfg.tag, kind=info.kind, baseline=info.baseline,
                eval_path=eval_path, config=asdict(cfg), environment=runtime.describe(),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **{"latency_ms_p50": None, "throughput": None, "peak_memory_bytes": None, **speed_fields}, **row)


def _eval_vision(cfg, info, model, eval_path, row, step, use_cache) -> EvalResult:
    images, labels = data.load_cifar10("test")
    idx = data.stratified_indices(labels, cfg.limit, cfg.seed)
    inputs = resnet.preprocess(images[idx])
    speed = None
    if cfg.bench:
        step(0.1, "benchmarking")
        speed = bench_classifier(model, inputs[:250])
    flat = None
    if eval_path in ("dequant", "float"):
        dequantize_model(model)
        flat = FlatResNet.try_build(model) if runtime.backend() == "cpu" else None
    step(0.2, f"evaluating {len(idx)} test images")
    progress = lambda f, m: step(0.2 + 0.75 * f, m)  # noqa: E731
    if flat is not None:  # the same logits, 4-5x faster on the CPU (core.flatconv, core.parallel)
        logits = flat.classify(inputs, progress=progress)
    else:
        logits = evaluate.classify_batches(model, inputs, progress=progress)
    acc = evaluate.accuracy(logits, labels[idx])
    agreement = reference = None
    if not cfg.spec.full_precision:
        step(0.95, "full-precision reference")
        base = run_eval(cfg.baseline(), use_cache=use_cache)  # same settings as a baseline run the user made
        agreement = 100.0 * float(np.mean(np.asarray(base.predictions) == acc.predictions))
        reference = base.value
    p = acc.top1
    return EvalResult(
        **_common(cfg, info, eval_path, speed, row), metric="top1_accuracy", value=100 * p,
        stderr=100 * float(np.sqrt(p * (1 - p) / acc.n)), n=acc.n, ci95_low=100 * acc.ci95[0],
        ci95_high=100 * acc.ci95[1], top5=100 * acc.top5, agreement=agreement, reference_value=reference,
        protocol=(f"CIFAR-10 test, {acc.n} images" + ("" if cfg.limit is None or cfg.limit >= 10000 else
                  f" (class-stratified subset, seed {cfg.seed})") + "; top-1 %, 95 % Wilson interval"
                  + (f"; activations simulated at {cfg.act_bits} bits, per-tensor ranges from {cfg.calib} CIFAR-10 "
                     "train images" if cfg.act_bits else "")),
        predictions=acc.predictions.tolist())


_TOKENS: dict[str, np.ndarray] = {}  # tokenized test text per model name (tokenizing takes seconds)


def wikitext_tokens(model_name: str, tokenizer) -> np.ndarray:
    if model_name not in _TOKENS:
        text = data.load_wikitext2_test()
        _TOKENS[model_name] = np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int32)
    return _TOKENS[model_name]


def _chunk_bos(policy: str, tokenizer) -> int | None:
    """llama-perplexity puts BOS first in each chunk only when the model's tokenizer adds a BOS (SmolLM2's does
    not); 'always' and 'never' override that."""
    bos = tokenizer.bos_token_id
    if bos is None or policy == "never":
        return None
    if policy == "always":
        return bos
    return bos if tokenizer.encode("x")[:1] == [bos] else None


def _eval_lm(cfg, info, model, tokenizer, eval_path, row, step) -> EvalResult:
    step(0.08, "tokenizing WikiText-2 test")
    tokens = wikitext_tokens(cfg.model, tokenizer)
    bos_id = _chunk_bos(cfg.bos, tokenizer)
    windows = evaluate.chunk_windows(tokens, cfg.ctx, bos_id)
    chosen = data.spread_indices(len(windows), cfg.limit)
    windows = windows[chosen]
    speed = None
    if cfg.bench:
        step(0.1, "benchmarking generation")
        prompt = tokens[: cfg.bench_prefill]
        speed = bench_generation(model, prompt, cfg.bench_decode)
    if eval_path == "dequant":
        dequantize_model(model, DTYPES[cfg.dtype])
    reference = None
    if not cfg.spec.full_precision:
        reference, _ = models.load(info, DTYPES[cfg.dtype])
    step(0.2, f"scoring {len(windows)} chunks")
    ppl = evaluate.perplexity(model, windows, reference, progress=lambda f, m: step(0.2 + 0.8 * f, m))
    subset = "" if len(chosen) == len(tokens) // cfg.ctx else f", {len(chosen)} of {len(tokens) // cfg.ctx} chunks evenly spread"
    return EvalResult(
        **_common(cfg, info, eval_path, speed, row), metric="perplexity", value=ppl.ppl, stderr=ppl.stderr,
        n=ppl.n_tokens, kl_mean=ppl.kl_mean, kl_stderr=ppl.kl_stderr, reference_value=ppl.reference_ppl,
        protocol=f"WikiText-2 raw test ({len(tokens)} tokens{subset}); "
                 + evaluate.PPL_PROTOCOL.format(ctx=cfg.ctx, bos="BOS" if bos_id is not None else "no BOS")
                 + "; PPL ± standard error; KL vs full precision")
