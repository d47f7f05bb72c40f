"""What every frontier subject is measured on: the same WikiText-2 test windows, the same float32 reference and
one record per subject in a journal, so that a run stopped part-way (a device's time limit) resumes."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core import data, runtime
from core.bench.rows import BenchRow
from core.eval import quality
from core.quant.config import QuantConfig
from core.quant.layers import dequantize_model
from core.quant.recipe import Quantized, quantize

MODEL = "smollm2-135m-instruct"
CTX = 512


@dataclass
class View:
    """A set of windows every subject is scored on, and the text that names it."""
    key: str
    windows: np.ndarray
    where: str


@dataclass
class Protocol:
    """The full-precision baseline, its float32 copy (the reference) and the views subjects are scored on: the
    chosen windows, and optionally a smaller evenly spread subset that CPU-bound peers (llama.cpp here) afford."""
    baseline: Quantized
    reference: object
    views: list[View]
    deadline: float | None = None  # time.monotonic() after which no new subject starts (a device's time limit)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @property
    def windows(self) -> np.ndarray:
        return self.views[0].windows

    def score(self, tool: str, recipe: str, bpw: float, model, make_s: float) -> list["Measured"]:
        """`model` (float, the de-quantized weights) scored on every view against the reference."""
        out = []
        for view in self.views:
            r = quality.perplexity(model, view.windows, reference=self.reference)
            if not (np.isfinite(r.ppl) and np.isfinite(r.kl_mean)):
                raise ValueError("the quantized model's outputs are not finite (NaN or inf)")
            out.append(Measured(tool, recipe, bpw, r.ppl, r.stderr, r.kl_mean, r.kl_stderr, make_s, view=view.key))
        return out

    def failed(self, tool: str, recipe: str, error: str) -> list["Measured"]:
        nan = float("nan")
        return [Measured(tool, recipe, nan, nan, nan, nan, nan, error=error, view=v.key) for v in self.views]


def _view(total: int, picked: np.ndarray, tokens: np.ndarray) -> View:
    subset = "all" if len(picked) == total else f"{len(picked)} evenly spread, of"
    where = (f"WikiText-2 raw test, {subset} {total} chunks of {CTX} tokens, second half scored, the lab's tokens; "
             "KL against the lab's float32 full-precision model; quantized weights evaluated in float32; "
             f"{runtime.backend()}")
    return View(f"{MODEL} ctx {CTX} chunks {len(picked)}/{total}",
                quality.chunk_windows(tokens, CTX, None)[picked], where)


def protocol(chunks: int | None, compare: int | None = None, time_limit: float | None = None) -> Protocol:
    """The frontier's protocol: every test chunk (chunks=None) or `chunks` of them evenly spread; with `compare`,
    a second view of that many evenly spread chunks; with `time_limit`, no subject starts after that many seconds."""
    start = time.monotonic()
    baseline = quantize(QuantConfig(MODEL, bits=16, dtype="float32"))
    reference = dequantize_model(baseline.model)
    tokens = quality.wikitext_tokens(MODEL, baseline.tokenizer)
    total = len(tokens) // CTX
    views = [_view(total, data.spread_indices(total, chunks), tokens)]
    if compare and compare < len(views[0].windows):
        views.append(_view(total, data.spread_indices(total, compare), tokens))
    return Protocol(baseline, reference, views, start + time_limit if time_limit else None)


@dataclass
class Measured:
    """One subject's numbers: tool ('lab', 'mlx-lm', 'llama.cpp'), its recipe, bits per weight as stored,
    perplexity and KL with their standard errors, and the seconds it took to make (quantize) the subject."""
    tool: str
    recipe: str
    bpw: float
    ppl: float
    ppl_se: float
    kl: float
    kl_se: float
    make_s: float = float("nan")
    error: str = ""
    view: str = ""  # the key of the view (windows) it was scored on

    @property
    def subject(self) -> str:
        return f"{self.tool} {self.recipe}"

    def rows(self, where: str) -> list[BenchRow]:
        if self.error:
            return [BenchRow("frontier", self.subject, "not measured", float("nan"), "", self.error)]
        made = f"; made in {self.make_s:.0f} s" if self.make_s == self.make_s else ""
        return [BenchRow("frontier", self.subject, "bits/weight", self.bpw, "bits",
                         "every weight matrix as stored" + made),
                BenchRow("frontier", self.subject, "perplexity", self.ppl, "PPL", f"± {self.ppl_se:.3f}; {where}"),
                BenchRow("frontier", self.subject, "KL", self.kl, "nats/token", f"± {self.kl_se:.2g}; {where}")]


class Journal:
    """Measured subjects, one JSON line per subject and view: a subject measured on every view of the protocol is
    not measured again. Failures are written too (with their reason) but never count as done."""

    def __init__(self, path: Path | None, protocol: Protocol):
        self.path = path
        self.views = [v.key for v in protocol.views]
        self.records: dict[tuple[str, str], Measured] = {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                measured = Measured(**json.loads(line))
                if not measured.error:
                    self.records[measured.view, measured.subject] = measured

    def done(self, subject: str) -> list[Measured] | None:
        """The subject's measurements on every view, or None when one is missing."""
        found = [self.records.get((v, subject)) for v in self.views]
        return None if None in found else found

    def add(self, measured: list[Measured]) -> list[Measured]:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(json.dumps(asdict(m)) + "\n" for m in measured)
        self.records.update({(m.view, m.subject): m for m in measured if not m.error})
        return measured


def timed(make):
    """(result of make(), seconds it took)."""
    start = time.perf_counter()
    out = make()
    return out, time.perf_counter() - start
