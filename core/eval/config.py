"""An evaluation run's configuration (a quantization config plus how to measure it), its result row, and the
cache key that row is stored under."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from core import runtime, settings
from core.cache import ResultCache, digest
from core.errors import LabError
from core.options import option, positive_int
from core.quant.config import QuantConfig

RESULTS_VERSION = 4  # bump when a change alters measured values, so old cache entries are not reused
EVAL_PATHS = ("auto", "dequant", "kernel")
BOS_POLICIES = ("auto", "always", "never")
# Where the dashboard's evaluation form starts (the command line starts from the fields' defaults): one width close
# to full precision and one that shows the loss, on a subset that runs in about a minute on a laptop's CPU.
FORM_WIDTHS = (8, 4)
FORM_LIMIT = {"vision": 1000, "lm": 4}


@dataclass(frozen=True)
class EvalConfig(QuantConfig):
    """Everything that defines a run; every field is part of the cache key."""

    limit: int | None = option(None, "evaluate on a deterministic subset: N images or N 512-token chunks "
                               "(default: all)", parse=positive_int)
    eval_path: str = option("auto", "auto, dequant or kernel: how quality is computed")
    bos: str = option("auto", "perplexity: BOS first in each chunk: auto (if the tokenizer adds one, as "
                      "llama.cpp), always or never")
    bench: bool = option(True, "skip the speed and memory benchmark", negate="--no-bench")
    bench_prefill: int = option(128, "LM benchmark prompt tokens", parse=positive_int)
    bench_decode: int = option(32, "LM benchmark decode steps", parse=positive_int)

    def validated(self) -> "EvalConfig":
        if self.eval_path not in EVAL_PATHS:
            raise LabError(f"The quality path must be one of {', '.join(EVAL_PATHS)}, not {self.eval_path!r}.",
                           "eval_path", self.eval_path)
        if self.limit is not None and self.limit <= 0:
            raise LabError(f"The evaluation subset must be a positive number of items, not {self.limit}.", "limit",
                           self.limit)
        if self.bos not in BOS_POLICIES:
            raise LabError(f"The BOS policy must be one of {', '.join(BOS_POLICIES)}, not {self.bos!r}.", "bos",
                           self.bos)
        return super().validated()


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
    distillation: list = field(default_factory=list)  # DWQ: held-out KL curve, dicts of core.quant.dwq.DwqPoint
    eval_path: str = ""
    compute_dtype: str = ""  # what the deployed model computes in: size, latency, throughput and memory
    quality_dtype: str = ""  # what the quality numbers were computed in (float32: the de-quantized weights)
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    ranks: int = 1  # processes the items were split over (core.dist; 1: this process alone)
    allreduce_seconds: float | None = None  # time in the collectives that joined the ranks' shares
    eval_seconds: float = 0.0
    created: str = ""
    cached: bool = False
    predictions: list | None = None  # vision top-1 per image; kept in the cache, not shown

    def public(self) -> dict:
        out = asdict(self)
        out.pop("predictions")
        return out

    @classmethod
    def public_fields(cls) -> list[str]:
        """The names `public()` gives, in order: a sweep CSV's columns."""
        return [f.name for f in fields(cls) if f.name != "predictions"]

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def cache_key(cfg: EvalConfig) -> str:
    env = runtime.describe()
    key = {"config": asdict(cfg), "backend": env["backend"], "device": env["device"], "mlx": env["mlx"],
           "mlx_lm": env["mlx_lm"], "version": RESULTS_VERSION}
    if cfg.method == "dwq":  # distillation's own version: a change there leaves every other cached result valid
        from core.quant.dwq import CHECKPOINT_VERSION
        key["dwq"] = CHECKPOINT_VERSION
    return digest(key)


def result_cache() -> ResultCache:
    """Where result rows live: MLXQ_RESULTS, or cache/results (tests point it at a temporary folder)."""
    return ResultCache(settings.results_dir())
