"""A sweep: every configuration of models x methods x bit widths x group sizes, run one after another, or spread
over the ranks of a group that `mlx.launch` started (core.dist).

Spread: the configurations are sorted by estimated work, largest first, and each goes to the rank with the least
work so far; every rank computes the same plan from the same command, so no coordination is needed to split.
Each rank runs its own configurations whole (one process per configuration: the ranks are the parallelism) and
caches each row as it finishes; at the end rank 0 gathers every rank's rows, stores the other ranks' rows in its
own cache and writes the CSV in the order the configurations were given. A rank that stops says which of its
configurations it lost; rerunning the same command reads the finished ones from the caches and computes only
those."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from core.dist import collect
from core.dist.group import SINGLE, Ranks
from core.eval.config import EvalConfig, EvalResult, cache_key, result_cache
from core.eval.pipeline import CIFAR10_TEST_IMAGES, run_eval
from core.eval.sweep_config import VARYING, SweepConfig, expand  # noqa: F401  (VARYING, expand: the sweep's words)
from core.models import resnet
from core.models.registry import resolve
from core.settings import cache_root

_LM_PARAMETERS = {"smollm2-135m-instruct": 135e6}
_OTHER_LM_PARAMETERS = 1e9  # an mlx-lm folder or hub id: assumed larger than the registry's model
_METHOD_WORK = {"none": 1.0, "rtn": 1.0, "gptq": 1.5, "awq": 1.5, "mixed": 3.0, "dwq": 6.0}
_WIKITEXT_CHUNKS = 592  # WikiText-2 test in 512-token chunks for SmolLM2; only a planning estimate


def default_csv(models: list[str]) -> Path:
    """Where a sweep's CSV goes unless told: cache/sweeps/<models>-<time>.csv."""
    name = "-".join(m.replace("/", "_") for m in models)[:80]
    return cache_root() / "sweeps" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.csv"


def work(cfg: EvalConfig) -> float:
    """Estimated compute of one configuration (arbitrary units, for ordering only): forward cost per item x items
    x the method's calibration overhead; a quantized language model is scored beside its reference."""
    info = resolve(cfg.model)
    if info.kind == "vision":
        depth = resnet.DEPTHS.get(cfg.model.replace("-mlxq", ""), 3)
        return (6 * depth + 2) * (cfg.limit or CIFAR10_TEST_IMAGES) * _METHOD_WORK.get(cfg.method, 1.0)
    per_chunk = _LM_PARAMETERS.get(cfg.model, _OTHER_LM_PARAMETERS) * cfg.ctx * 2 / 4e7
    scored_beside_reference = 1.0 if cfg.spec.full_precision else 2.0
    return per_chunk * (cfg.limit or _WIKITEXT_CHUNKS) * scored_beside_reference * _METHOD_WORK.get(cfg.method, 1.0)


def plan(configs: list[EvalConfig], size: int) -> list[list[int]]:
    """The indices of `configs` each of `size` ranks runs: largest first, each to the least-loaded rank."""
    loads, shares = [0.0] * size, [[] for _ in range(size)]
    for i in sorted(range(len(configs)), key=lambda i: (-work(configs[i]), i)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        loads[rank] += work(configs[i])
        shares[rank].append(i)
    return shares


def label(cfg: EvalConfig) -> str:
    return f"{cfg.model} {cfg.tag}"


@dataclass
class SweepOutcome:
    rows: list[dict] = field(default_factory=list)  # public rows, in the configurations' order
    computed: list[str] = field(default_factory=list)  # labels of the configurations computed (rank 0: by any rank)
    cached: list[str] = field(default_factory=list)  # ... and read from a cache


def run_sweep(config: SweepConfig, use_cache: bool = True, ranks: Ranks = SINGLE,
              progress: Callable[[float, str], None] | None = None, say: Callable[[str], None] | None = None
              ) -> SweepOutcome:
    """Run the sweep `config` describes (core.eval.sweep_config) here, or this rank's share of it; its hostfile is
    for core.jobs.sweep_job, which starts the ranks."""
    return run_configs(config.validated().configs(), use_cache, ranks, progress, say)


def run_configs(configs: list[EvalConfig], use_cache: bool = True, ranks: Ranks = SINGLE,
                progress: Callable[[float, str], None] | None = None, say: Callable[[str], None] | None = None
                ) -> SweepOutcome:
    """Run this rank's share of `configs`, then (on every rank together) gather the rows; rank 0's outcome holds
    them all. Anything that stops this rank (an error, a lost peer, SIGTERM as KeyboardInterrupt) is reported
    with the configurations lost, then raised again."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    mine = plan(configs, ranks.size)[ranks.rank]
    outcome, done = SweepOutcome(), []
    who = f"rank {ranks.rank}" if ranks.distributed else "sweep"
    try:
        for n, i in enumerate(mine):
            cfg = configs[i]
            step = None if progress is None else (
                lambda f, m, n=n, cfg=cfg: progress((n + f) / len(mine), f"{label(cfg)}: {m}"))
            result = run_eval(cfg, use_cache=use_cache, progress=step)
            done.append((i, cache_key(cfg), asdict(result)))
            say(f"{who} finished {n + 1} of {len(mine)}: {label(cfg)} ({'cached' if result.cached else 'computed'})")
        gathered = collect.gather_json(done, ranks)
    except BaseException as stop:
        _report_lost(configs, mine, done, ranks, stop, say)
        raise
    if ranks.root:
        every = [(i, body) for rank_rows in gathered for i, _, body in rank_rows]
        outcome.computed = [label(configs[i]) for i, body in every if not body["cached"]]
        outcome.cached = [label(configs[i]) for i, body in every if body["cached"]]
        outcome.rows = _merge(configs, gathered)
    return outcome


def _merge(configs: list[EvalConfig], gathered: list[list]) -> list[dict]:
    """Rank 0: every rank's rows in the configurations' order; rows other ranks measured go into this cache too
    (under their own keys: their environment, not this machine's), so the results table and charts show them."""
    cache, by_index = result_cache(), {}
    for rank_rows in gathered:
        for i, key, body in rank_rows:
            by_index[i] = body
            if cache.read(key) is None:
                cache.write(key, {**body, "cached": False})
    return [EvalResult.from_dict(by_index[i]).public() for i in range(len(configs)) if i in by_index]


def _report_lost(configs, mine, done, ranks: Ranks, stop: BaseException, say) -> None:
    finished = {i for i, _, _ in done}
    lost = [label(configs[i]) for i in mine if i not in finished]
    why = "interrupted" if isinstance(stop, KeyboardInterrupt) else (str(stop) or type(stop).__name__)
    who = f"rank {ranks.rank}" if ranks.distributed else "the sweep"
    if lost:
        say(f"{who} stopped ({why}); it lost {len(lost)} of its {len(mine)} configurations: {', '.join(lost)}. "
            "Rerun the same command: finished configurations come from the cache, only these are computed.")
    else:
        say(f"{who} stopped ({why}) after finishing its configurations; another rank did not report. Rerun the "
            "same command: finished configurations come from the cache.")
    if ranks.distributed and ranks.root:
        _report_others(configs, ranks, say)


def _report_others(configs, ranks: Ranks, say) -> None:
    """Rank 0 names what the other ranks had not cached (exact where they share this machine's cache)."""
    cache, shares = result_cache(), plan(configs, ranks.size)
    for rank in range(1, ranks.size):
        missing = [label(configs[i]) for i in shares[rank] if cache.read(cache_key(configs[i])) is None]
        if missing:
            say(f"rank {rank}'s configurations not in this machine's cache: {', '.join(missing)}")
