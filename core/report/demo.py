"""The demo sweep: a small, prepared set of runs so a presentation shows every chart at once."""
from __future__ import annotations

import json
from pathlib import Path

from core import settings
from core.cache import atomic_write_text
from core.eval.config import EvalConfig, cache_key
from core.eval.pipeline import run_eval
from core.report.results import all_result_rows

DEMO_CONFIGS = (
    [EvalConfig("resnet20", bits=b, limit=1000) for b in (16, 8, 6, 5, 4, 3)]
    + [EvalConfig("resnet20", bits=b, group_size=32, limit=1000) for b in (4, 3)]
    + [EvalConfig("resnet20", bits=4, mode="mxfp4", limit=1000)]
    + [EvalConfig("resnet56", bits=b, limit=1000) for b in (16, 8, 4)]
    + [EvalConfig("smollm2-135m-instruct", bits=b, limit=4, bench_prefill=64, bench_decode=16) for b in (16, 8, 6, 4)]
)


def manifest_path() -> Path:
    return settings.cache_root() / "demo.json"


def prepare_demo(progress=None) -> list[str]:
    """Run (or reuse) every demo configuration and record their cache keys."""
    keys = []
    for i, cfg in enumerate(DEMO_CONFIGS):
        if progress:
            progress(i / len(DEMO_CONFIGS), f"{cfg.model} {cfg.validated().spec.tag}")
        run_eval(cfg)
        keys.append(cache_key(cfg.validated()))
    atomic_write_text(manifest_path(), json.dumps({"keys": keys}))
    return keys


def demo_rows() -> list[dict]:
    """The demo sweep's rows, or none when it was not prepared."""
    try:
        keys = set(json.loads(manifest_path().read_text())["keys"])
    except (OSError, ValueError, KeyError):
        return []
    return [r for r in all_result_rows() if r["key"] in keys]
