"""What a job can be: each kind turns its spec (plain JSON, as the record stores it) into the core call that does
the work, and names the job for a listing. The heavy modules are imported inside each run, so listing jobs or
submitting one loads no model code."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from core.errors import LabError
from core.jobs import sweep_job
from core.options import has_default

Progress = Callable[[float, str], None]  # fraction done, message; raises to cancel


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[[dict, Progress], dict]  # spec, progress -> result (JSON)
    describe: Callable[[dict], str]  # spec -> a short title


def _check_keys(given: dict, allowed, what: str, required=()) -> None:
    """A LabError in words for a setting that `what` does not take, or one it needs and was not given."""
    if not isinstance(given, dict):
        raise LabError(f"The settings of {what} must be a dict of name: value.")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise LabError(f"{what.capitalize()} has no setting {', '.join(map(repr, unknown))}; it takes "
                       f"{', '.join(sorted(allowed))}.")
    missing = [name for name in required if name not in given]
    if missing:
        raise LabError(f"{what.capitalize()} needs {', '.join(map(repr, missing))}.")


def from_spec(cls, values: dict, what: str, **extra):
    """An instance of the dataclass `cls` from `values`, refusing names it has no field for, in words."""
    names = {f.name for f in fields(cls)}
    required = [f.name for f in fields(cls) if not has_default(f)]
    _check_keys(values, names, what, required)
    return cls(**{**values, **extra})


def _describe_eval(spec: dict) -> str:
    configs = [c for c in spec.get("configs") or [] if isinstance(c, dict)]
    models = sorted({str(c.get("model")) for c in configs})
    bits = ", ".join(str(c.get("bits", 16)) for c in configs)
    limit = configs[0].get("limit") if configs else None
    return (f"evaluate {', '.join(models) or '?'} at {bits} bits"
            + (f" ({limit} items)" if limit else " (full test set)"))


def _run_eval(spec: dict, progress: Progress) -> dict:
    """Each configuration in order, progress spread evenly over them; each row is cached as it finishes."""
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    _check_keys(spec, ("configs", "use_cache"), "an eval job", required=("configs",))
    if not isinstance(spec["configs"], list) or not spec["configs"]:
        raise LabError("An eval job needs a non-empty list of configurations.")
    configs = [from_spec(EvalConfig, c, "an evaluation").validated() for c in spec["configs"]]  # fail before work
    rows = []
    for i, cfg in enumerate(configs):
        def step(fraction, message, i=i, tag=cfg.tag):
            progress((i + fraction) / len(configs), f"{tag}: {message}")

        rows.append(run_eval(cfg, use_cache=bool(spec.get("use_cache", True)), progress=step).public())
    return {"rows": rows}


_SENSITIVITY = ("model", "bits", "group_size", "calib", "ctx", "seed", "target_bpw", "use_cache")


def _describe_sensitivity(spec: dict) -> str:
    bits = spec.get("bits") or [2, 3, 4, 8]
    bits = ",".join(map(str, bits if isinstance(bits, list) else [bits]))
    budget = f", allocation for {spec['target_bpw']} bits/weight" if spec.get("target_bpw") else ""
    return f"sensitivity of {spec.get('model', '?')} at {bits} bits{budget}"


def _run_sensitivity(spec: dict, progress: Progress) -> dict:
    """The per-layer table (as `sensitivity --json` prints it) and, given a budget, the allocation."""
    from core.models.registry import resolve
    from core.quant.calibration import Calibration, default_size
    from core.quant.mixed import allocation_for
    from core.quant.sensitivity import layer_sensitivity

    _check_keys(spec, _SENSITIVITY, "a sensitivity job", required=("model",))
    kind = resolve(spec["model"]).kind
    calibration = Calibration(spec.get("calib") or default_size("sensitivity", kind), spec.get("ctx") or 512,
                              spec.get("seed") or 0)
    rows = layer_sensitivity(spec["model"], spec.get("bits") or [2, 3, 4, 8], spec.get("group_size"), calibration,
                             progress=progress, use_cache=bool(spec.get("use_cache", True)))
    result = {"rows": rows}
    if spec.get("target_bpw"):
        allocation = allocation_for(rows, spec["target_bpw"])
        result.update(allocation=allocation.bits, predicted_bits_per_weight=allocation.predicted_bpw)
    return result


def _describe_export(spec: dict) -> str:
    return f"export {spec.get('model', '?')} at {spec.get('bits', 16)} bits to {spec.get('out', '?')}"


def _run_export(spec: dict, progress: Progress) -> dict:
    """Quantize and write the folder (core.deploy.export); the folder appears only when complete."""
    from core.deploy.export import export_model
    from core.quant.config import QuantConfig

    settings = {k: v for k, v in spec.items() if k not in ("out", "force", "format", "gguf_type")}
    if "out" not in spec:
        raise LabError("An export job needs 'out', the folder to write.")
    config = from_spec(QuantConfig, settings, "an export")
    if spec.get("format", "mlx") == "gguf":
        from core.deploy.gguf_export import export_gguf
        made = export_gguf(config, Path(spec["out"]), force=bool(spec.get("force")),
                           gguf_type=spec.get("gguf_type"), progress=progress)
        return {"path": str(made.path), "format": "gguf", "tag": made.tag, "file_bytes": made.file_bytes,
                "bits_per_weight": made.file_bits_per_weight}
    if spec.get("gguf_type") is not None:
        raise LabError("--gguf-type goes with --format gguf.")
    result = export_model(config, Path(spec["out"]), force=bool(spec.get("force")), progress=progress)
    return {"path": str(result.path), "kind": result.kind, "tag": result.tag, "size_bytes": result.size_bytes,
            "file_bytes": result.file_bytes, "bits_per_weight": result.bits_per_weight, "dtype": result.dtype}


def _describe_train(spec: dict) -> str:
    return f"train {spec.get('model', 'resnet20')} for {spec.get('epochs', 200)} epochs into {spec.get('out', '?')}"


def _run_train(spec: dict, progress: Progress) -> dict:
    """Train (or resume) a ResNet into `out`; a cancelled run resumes from its last finished epoch."""
    from core.models.train import Recipe, train

    recipe = from_spec(Recipe, {k: v for k, v in spec.items() if k not in ("out", "eval_every")}, "a training run")
    if "out" not in spec:
        raise LabError("A training job needs 'out', the folder for checkpoints and history.")
    history = train(recipe, Path(spec["out"]), progress=progress, eval_every=int(spec.get("eval_every", 1)))
    return {"final_top1": history[-1]["test_top1"], "epochs": len(history), "out": str(spec["out"])}


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (
    JobKind("eval", _run_eval, _describe_eval),
    JobKind("sensitivity", _run_sensitivity, _describe_sensitivity),
    JobKind("export", _run_export, _describe_export),
    JobKind("train", _run_train, _describe_train),
    JobKind("sweep", sweep_job.run, sweep_job.describe),
)}
