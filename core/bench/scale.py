"""The `scale` bench section: the lab at real model sizes, beside mlx-lm on the same model.

A random-weight model of a real shape (core.models.synthetic: Llama-3.2-1B's on a CPU, Llama-3.1-8B's on a GPU)
is quantized, evaluated and exported by the lab's own commands, each in a child process that reports its peak
memory (core.bench.peak_memory); mlx-lm quantizes the same folder (`mlx_lm.convert`, and its GPTQ on the lab's
calibration tokens). Every lab row names its predicted peak (core.quant.footprint) beside the measured one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import runtime, settings
from core.bench.peak_memory import parse
from core.bench.rows import BenchRow
from core.parallel import parallel_steps
from core.quant import footprint
from core.quant.spec import QuantSpec
from core.settings import REPO_ROOT

GB = 1e9
WINDOWS = {"cpu": 2}  # evaluation windows; 16 elsewhere
GPU_LIMIT_GB = 16  # off a CPU the lab's runs are held to a 16 GB Mac's budget (--memory-limit)
CALIB = 32  # GPTQ's and AWQ's default calibration chunks of 512 tokens (core.quant.calibration)


def memory_goal(shape: footprint.Shape, spec: QuantSpec) -> float:
    """The CPU goal for a whole run's peak: the quantized model + half the bfloat16 model + 1 GiB."""
    return footprint.model_bytes(shape, spec, "float32") + shape.parameters() * 2 / 2 + 2**30


def shape_for_backend() -> str:
    return "llama-3.2-1b" if runtime.backend() == "cpu" else "llama-3.1-8b"


def model_folder(shape: str) -> Path:
    """The random model of `shape` in the cache, made once (in the child that makes it: bounded memory)."""
    folder = settings.cache_root() / "scale" / shape
    if not (folder / "config.json").is_file():
        _run(["core", "make-model", "--shape", shape, "--out", str(folder)], limit=None)
    return folder


def _run(argv: list[str], limit: float | None, env: dict | None = None) -> tuple[float, dict, str]:
    """(seconds, peak, stdout) of `python -m core.bench.peak_memory ARGV`; a child past `limit` seconds is stopped."""
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "core.bench.peak_memory", *argv], cwd=REPO_ROOT,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=limit,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, {}, "timeout"
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr[-2000:]}")
    return seconds, parse(proc.stderr) or {}, proc.stdout


def _memory_note(peak: dict, predicted: float | None, bound: float | None) -> str:
    parts = [f"peak RSS {peak.get('rss_bytes', 0) / GB:.2f} GB", f"MLX peak {peak.get('mlx_bytes', 0) / GB:.2f} GB"]
    if predicted:
        measured = peak.get("rss_bytes", 0) if runtime.backend() == "cpu" else peak.get("mlx_bytes", 0)
        parts.append(f"predicted {predicted / GB:.2f} GB ({100 * (predicted / measured - 1):+.0f} %)")
    if bound:
        parts.append(f"goal <= {bound / GB:.2f} GB")
    return "; ".join(parts)


def _lab_rows(folder: Path, shape: footprint.Shape, subject: str, windows: int, limit: float | None,
              evals=("rtn", "gptq", "awq"), exports=("rtn", "gptq")) -> list[BenchRow]:
    """The lab's eval (perplexity + KL on `windows` chunks) and export of the model at 4 bits, group 64, each with
    its predicted and measured peak; off a CPU under --memory-limit 16."""
    spec = QuantSpec(4, 64).validated()
    bound = memory_goal(shape, spec)
    on_cpu, parallel = runtime.backend() == "cpu", parallel_steps()
    flags = ["--q-bits", "4", "--q-group-size", "64", *([] if on_cpu else ["--memory-limit", str(GPU_LIMIT_GB)])]
    goal = bound if on_cpu else GPU_LIMIT_GB * GB
    rows = []
    for method in evals:
        stage = {s.stage: s for s in footprint.predict(shape, spec, method, calib=CALIB, windows=windows,
                                                       parallel=parallel)}
        seconds, peak, out = _run(["core", "eval", "--model", str(folder), *flags, "--method", method, "--limit",
                                   str(windows), "--no-bench", "--no-cache", "--json"], limit)
        note = "did not finish in the time limit" if out == "timeout" else _memory_note(
            peak, stage["evaluate"].peak_bytes, goal)
        rows.append(BenchRow("scale", subject, f"lab eval {method} q4g64 ({windows} windows, perplexity + KL)",
                             seconds, "s", note))
    with tempfile.TemporaryDirectory(dir=settings.cache_root()) as tmp:
        for method in exports:
            out_dir = Path(tmp) / method
            stage = {s.stage: s for s in footprint.predict(shape, spec, method, calib=CALIB, parallel=parallel)}
            seconds, peak, out = _run(["core", "export", "--model", str(folder), *flags, "--method", method,
                                       "--out", str(out_dir)], limit)
            note = "did not finish in the time limit" if out == "timeout" else _memory_note(
                peak, stage["quantize"].peak_bytes, goal)
            rows.append(BenchRow("scale", subject, f"lab export {method} q4g64", seconds, "s", note))
            shutil.rmtree(out_dir, ignore_errors=True)
    return rows


def _peer_rows(folder: Path, subject: str, limit: float | None, gptq: bool = True) -> list[BenchRow]:
    rows = []
    with tempfile.TemporaryDirectory(dir=settings.cache_root()) as tmp:
        seconds, peak, _ = _run(["mlx_lm.convert", "--hf-path", str(folder), "--mlx-path", str(Path(tmp) / "c"),
                                 "-q", "--q-bits", "4", "--q-group-size", "64"], limit)
        rows.append(BenchRow("scale", subject, "mlx_lm.convert -q (4-bit g64, mx.quantize)", seconds, "s",
                             _memory_note(peak, None, None)))
    if not gptq:
        return rows
    seconds, peak, out = _run(["core.bench.mlx_lm_peer", str(folder), str(CALIB)], limit)
    note = "did not finish in the time limit" if out == "timeout" else _memory_note(peak, None, None)
    rows.append(BenchRow("scale", subject, f"mlx-lm gptq_quantize (4-bit g64, the lab's {CALIB} calibration chunks)",
                         seconds, "s", note))
    return rows


def _serve_rows(folder: Path, shape: footprint.Shape, subject: str, limit: float | None,
                streams: int = 16) -> list[BenchRow]:
    """The lab's 4-bit export of the model loaded by mlx-lm, then served by the lab's server (NAME=PATH) to
    `streams` concurrent streams, beside mlx_lm.server on the same folder."""
    from core.bench.serving import concurrent_round, running_server

    rows = []
    with tempfile.TemporaryDirectory(dir=settings.cache_root()) as tmp:
        export = Path(tmp) / "q4g64"
        _run(["core", "export", "--model", str(folder), "--q-bits", "4", "--q-group-size", "64", "--out", str(export)],
             limit)
        seconds, peak, out = _run(["core.bench.mlx_lm_peer", "--load", str(export)], limit)
        rows.append(BenchRow("scale", subject, "mlx_lm.load of the lab's 4-bit export, 16 greedy tokens", seconds, "s",
                             f"{out.strip()}; {_memory_note(peak, None, None)}"))
        predicted = {f.stage: f for f in footprint.predict(shape, QuantSpec(4, 64).validated(), streams=streams,
                                                           context=1024, dtype=runtime.default_dtype())}["serve"]
        for name, command in (("lab server (--models big=EXPORT)",
                               [sys.executable, "-m", "core", "serve", "--models", f"big={export}",
                                "--max-batch", str(streams), "--memory-budget-mb", "100000"]),
                              ("mlx_lm.server", [sys.executable, "-m", "mlx_lm.server", "--model", str(export),
                                                 "--decode-concurrency", str(streams)])):
            with running_server(command, Path(tmp) / "server.log") as url:
                model = "big" if "lab" in name else str(export)
                concurrent_round(url, model, 2, 8)  # warm-up
                r = concurrent_round(url, model, streams, 128)
            rows.append(BenchRow("scale", subject, f"{name}: {streams} concurrent streams, 128 tokens each",
                                 r.tokens_per_s, "tokens/s", f"TTFT p50 {r.ttft_p50_ms:.0f} ms, inter-token p50 "
                                 f"{r.itl_p50_ms:.1f} ms; predicted server peak {predicted.peak_bytes / GB:.1f} GB"))
    return rows


PARTS = {"rtn": dict(evals=("rtn",), exports=()), "gptq": dict(evals=("gptq",), exports=()),
         "awq": dict(evals=("awq",), exports=()), "export": dict(evals=(), exports=("rtn", "gptq")),
         "export-rtn": dict(evals=(), exports=("rtn",))}


def scale(quick: bool = False, parts: tuple[str, ...] = ("rtn", "gptq", "awq", "export", "peers", "serve")) -> list[BenchRow]:
    """The section's rows: the lab's eval and export at a real shape, mlx-lm's quantizers on the same folder, and
    the export served to concurrent streams by both servers (`parts`: a device's time limit runs them apart)."""
    shape_name = shape_for_backend()
    folder = model_folder(shape_name)
    shape = footprint.Shape.from_config(json.loads((folder / "config.json").read_text()))
    windows = WINDOWS.get(runtime.backend(), 16)
    subject = f"{shape_name} shape, random bfloat16 weights ({shape.parameters() / 1e9:.2f} B parameters)"
    limit = float(os.environ.get("MLXQ_SCALE_LIMIT_S", 900 if quick else 3600))  # a device call's own limit
    rows = []
    for part in parts:
        if part in PARTS:
            rows += _lab_rows(folder, shape, subject, windows, limit, **PARTS[part])
        elif part in ("peers", "convert"):
            rows += _peer_rows(folder, subject, limit, gptq=part == "peers")
        else:
            rows += _serve_rows(folder, shape, subject, limit)
    return rows


SECTIONS = {"scale": scale, **{f"scale-{part}": (lambda quick=False, part=part: scale(quick, (part,)))
                               for part in (*PARTS, "peers", "convert", "serve")}}
