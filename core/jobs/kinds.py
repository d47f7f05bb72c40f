"""Every kind of run, in one registry: its frozen config (whose `validated()` fills in every default and checks
every setting, in words) and its one core run function, with what a job records of a run and how a listing names
it. The command line builds its flags and its jobs from it (core.cli), the worker runs jobs with it, and the
dashboard submits through it. A job's spec is plain JSON: its config's fields (eval: a list of configs under
"configs"), and "use_cache" for the kinds that read a cache. Model code is imported when a run starts."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from core.deploy.export_config import ExportConfig, export_summary, run_export
from core.errors import LabError
from core.eval.config import EvalConfig
from core.eval.sweep_config import SweepConfig
from core.jobs import sweep_job
from core.jobs.specs import check_keys, from_spec
from core.models.train_config import TrainConfig, run_train, train_summary
from core.quant.sensitivity_config import WIDTHS, SensitivityConfig, run_sensitivity

__all__ = ["KINDS", "RunKind", "from_spec"]
Progress = Callable[[float, str], None]  # fraction done, message; raises to cancel


@dataclass(frozen=True)
class RunKind:
    name: str
    config: type  # a frozen config dataclass with validated()
    run: Callable  # run(config, progress=..., use_cache=... where `cached`) -> the run's result
    summary: Callable[[object, object], dict]  # (validated config, result) -> what a job records (JSON)
    describe: Callable[[dict], str]  # spec -> a short title for listings
    what: str  # how messages name one run: "a sensitivity run"
    cached: bool = True  # reads and writes a cache: takes use_cache
    many: bool = False  # a job holds a list of configs ("configs"), run one after another
    paths: tuple[str, ...] = ()  # fields that are paths: absolute in a job (its worker runs elsewhere)

    def configs_of(self, spec: dict) -> list:
        """The validated configs a job's spec holds; a mistake in any is a LabError in words, before any work."""
        also = ("use_cache",) if self.cached else ()
        if not self.many:
            return [from_spec(self.config, spec, self.what, also).validated()]
        check_keys(spec, ("configs", *also), f"an {self.name} job", required=("configs",))
        if not isinstance(spec["configs"], list) or not spec["configs"]:
            raise LabError(f"An {self.name} job needs a non-empty list of configurations.")
        return [from_spec(self.config, c, self.what).validated() for c in spec["configs"]]

    def spec_of(self, configs: list, use_cache: bool | None = None) -> dict:
        """The spec of a job that runs `configs` (as given, their paths made absolute), each validated first so a
        mistake is reported before anything is queued; use_cache None leaves it to the worker (cached)."""
        for config in configs:
            config.validated()
        values = [{k: (_absolute(v) if k in self.paths and v is not None else v) for k, v in asdict(c).items()}
                  for c in configs]
        spec = {"configs": values} if self.many else values[0]
        return spec if use_cache is None or not self.cached else {**spec, "use_cache": use_cache}

    def run_job(self, spec: dict, progress: Progress) -> dict:
        """Run a job's spec: each config in order, the progress spread evenly over them."""
        configs = self.configs_of(spec)  # fail before any work
        cache = {"use_cache": bool(spec.get("use_cache", True))} if self.cached else {}
        done = []
        for i, cfg in enumerate(configs):
            def step(fraction, message, i=i, tag=getattr(cfg, "tag", "")):
                progress((i + fraction) / len(configs), f"{tag}: {message}")

            done.append(self.summary(cfg, self.run(cfg, progress=step if self.many else progress, **cache)))
        return {"rows": done} if self.many else done[0]


def _absolute(path) -> str:
    return str(Path(str(path).strip()).expanduser().resolve())


def _run_eval(config: EvalConfig, progress=None, use_cache: bool = True):
    from core.eval.pipeline import run_eval

    return run_eval(config, use_cache=use_cache, progress=progress)


def _describe_eval(spec: dict) -> str:
    configs = [c for c in spec.get("configs") or [] if isinstance(c, dict)]
    models = sorted({str(c.get("model")) for c in configs})
    bits = ", ".join(str(c.get("bits", 16)) for c in configs)
    limit = configs[0].get("limit") if configs else None
    return (f"evaluate {', '.join(models) or '?'} at {bits} bits"
            + (f" ({limit} items)" if limit else " (full test set)"))


def _describe_sensitivity(spec: dict) -> str:
    bits = spec.get("bits") or WIDTHS
    bits = ",".join(map(str, bits if isinstance(bits, (list, tuple)) else [bits]))
    budget = f", allocation for {spec['target_bpw']} bits/weight" if spec.get("target_bpw") else ""
    return f"sensitivity of {spec.get('model', '?')} at {bits} bits{budget}"


def _describe_export(spec: dict) -> str:
    return f"export {spec.get('model', '?')} at {spec.get('bits', 16)} bits to {spec.get('out', '?')}"


def _describe_train(spec: dict) -> str:
    default = {f.name: f.default for f in fields(TrainConfig)}
    return (f"train {spec.get('model', default['model'])} for {spec.get('epochs', default['epochs'])} epochs into "
            f"{spec.get('out', '?')}")


KINDS: dict[str, RunKind] = {kind.name: kind for kind in (
    RunKind("eval", EvalConfig, _run_eval, lambda cfg, result: result.public(), _describe_eval, "an evaluation",
            many=True),
    RunKind("sensitivity", SensitivityConfig, run_sensitivity, lambda cfg, run: run.summary(), _describe_sensitivity,
            "a sensitivity job"),
    RunKind("export", ExportConfig, run_export, lambda cfg, result: export_summary(result), _describe_export,
            "an export", cached=False, paths=("out",)),
    RunKind("train", TrainConfig, run_train, train_summary, _describe_train, "a training run", cached=False,
            paths=("out",)),
    RunKind("sweep", SweepConfig, sweep_job.run, lambda cfg, result: result, sweep_job.describe, "a sweep job",
            paths=("out", "hostfile")),
)}
