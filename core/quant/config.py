"""What decides a quantized model: the model, its weight grid, the method and its calibration. One frozen
dataclass, validated once; evaluation (core.eval.config.EvalConfig) extends it, export takes it as it is, and the
CLI builds its flags from the fields' metadata."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

from core import runtime
from core.cache import digest
from core.errors import LabError
from core.models import registry
from core.options import option, positive_int
from core.quant import calibration
from core.quant.actquant import ACT_BITS
from core.quant.calibration import (AwqSettings, CalibrationData, Distillation, GptqSettings, MethodSettings,
                                    MixedSettings, RtnSettings)
from core.quant.dwq import CHECKPOINT_VERSION, DwqSettings
from core.quant.methods import DWQ_STARTS, METHODS, MIXED_LAYERS, check_method
from core.quant.spec import QuantSpec
from core.settings import cache_root

_CALIB_HELP = ("calibration size for calibrated methods: CIFAR-10 train images (default "
               f"{calibration.default_size('gptq', 'vision')}; mixed {calibration.default_size('mixed', 'vision')}) "
               f"or WikiText-2 validation chunks (default {calibration.default_size('gptq', 'lm')}; mixed "
               f"{calibration.default_size('mixed', 'lm')})")


# Distillation per model kind: steps, Adam rate, items per step, items held out, steps between held-out checks.
_DWQ_DEFAULTS = {"lm": dict(steps=100, lr=2e-4, batch=1, held_out=4, eval_every=20),
                 "vision": dict(steps=300, lr=1e-5, batch=64, held_out=512, eval_every=50)}


def dwq_default(kind: str, name: str):
    """Distillation's default `name` (steps, lr, batch, held_out, eval_every) for a model of `kind`."""
    return _DWQ_DEFAULTS[kind][name]


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides the quantized weights, flat (the CLI's flags, the cache keys); `validated()` fills in
    every default, `method_settings()` gives the method what it takes (core.quant.calibration)."""

    model: str = option(MISSING, "registry name (e.g. resnet20, smollm2-135m-instruct), an mlx-lm folder or a "
                        "Hugging Face id")
    bits: int = option(16, "2, 3, 4, 5, 6, 8, or 16 (full precision, default)", flag="--q-bits")
    group_size: int | None = option(None, "affine: 32, 64 (default) or 128", flag="--q-group-size", parse=int)
    mode: str = option("affine", "affine (default), mxfp4, nvfp4 or mxfp8", flag="--q-mode")
    method: str = option("rtn", f"{' | '.join(METHODS)}: round to nearest (default), GPTQ, AWQ (language models), "
                         "mixed (per-layer bit widths from measured sensitivities; needs --target-bpw) or dwq "
                         "(scales, biases and norms distilled from the full-precision model, from --dwq-from)")
    calib: int | None = option(None, _CALIB_HELP, parse=positive_int)
    target_bpw: float | None = option(None, "mixed: bits-per-weight budget, e.g. 4.5", parse=float)
    mixed_layers: str | None = option(None, f"mixed: how each layer is quantized at its width, {' | '.join(MIXED_LAYERS)} "
                                      "(default rtn; awq for language models)", parse=str)
    act_bits: int | None = option(None, "ResNets: simulate 8-bit activations (W8A8 with --q-bits 8), ranges "
                                  "calibrated on CIFAR-10 train images (evaluation only)", parse=int)
    quantizer: str = option("minmax", "affine rounding: minmax (default), mlx (mx.quantize) or symmetric (zero-centred, "
                                                  "as GGUF's Q4_0/Q5_0/Q8_0 store)", flag="--q-quantizer")
    dwq_from: str | None = option(None, f"dwq: the method it starts from, {' | '.join(DWQ_STARTS)} (default awq for "
                                  "language models, gptq for ResNets)", parse=str)
    dwq_steps: int | None = option(None, "dwq: training steps (default "
                                   f"{_DWQ_DEFAULTS['lm']['steps']} for language models, "
                                   f"{_DWQ_DEFAULTS['vision']['steps']} for ResNets)", parse=positive_int)
    dwq_lr: float | None = option(None, "dwq: Adam learning rate (default "
                                  f"{_DWQ_DEFAULTS['lm']['lr']:g} / {_DWQ_DEFAULTS['vision']['lr']:g})", parse=float)
    seed: int = option(0, "seed of the evaluation subset and of the calibration choice")
    keep_first: bool = option(False, "keep the first layer in full precision")
    keep_last: bool = option(False, "keep the output layer in full precision")
    dtype: str | None = option(None, "compute dtype of the deployed model (activations, full-precision layers, "
                               "scales): float32, bfloat16 or float16 (default: float32 on a CPU, bfloat16 on Metal "
                               "and CUDA, or MLXQ_DTYPE)", parse=str)
    ctx: int = option(512, "LM chunk length in tokens (perplexity and calibration)", parse=positive_int)

    def validated(self):
        """The same config with every default filled in, or a LabError that says what is wrong."""
        info = registry.resolve(self.model)
        dtype = runtime.resolve_dtype(self.dtype)
        spec = QuantSpec(self.bits, self.group_size, self.mode, self.quantizer,
                         QuantSpec.scales_for(dtype)).validated()
        check_method(self.method, info.kind, spec)
        calibrated = not spec.full_precision and self.method != "rtn"
        if self.act_bits is not None and (self.act_bits not in ACT_BITS or info.kind != "vision"):
            raise LabError(f"Simulated activations take {', '.join(map(str, ACT_BITS))} bits and apply to the ResNets "
                           "only.", "act_bits", self.act_bits)
        if self.calib is not None and self.calib <= 0:
            raise LabError(f"The calibration size must be a positive number, not {self.calib}.", "calib", self.calib)
        if self.method == "mixed" and not spec.full_precision and (self.target_bpw is None or self.target_bpw <= 0):
            raise LabError("Method mixed needs a bits-per-weight budget (e.g. 4.5).", "target_bpw", self.target_bpw)
        if info.kind == "lm" and (self.ctx < 8 or self.ctx % 2):
            raise LabError(f"The chunk length must be an even number of tokens, at least 8, not {self.ctx}.", "ctx",
                           self.ctx)
        calib = None
        if calibrated or self.act_bits:
            calib = self.calib or calibration.default_size(self.method, info.kind)
        dwq = dict(dwq_from=None, dwq_steps=None, dwq_lr=None)
        if calibrated and self.method == "dwq":
            dwq = self._dwq_settings(info.kind, spec, calib)
        mixed = calibrated and "mixed" in (self.method, dwq["dwq_from"])
        layers = self._mixed_layers(info.kind, spec, mixed)
        return replace(self, bits=spec.bits, group_size=spec.group_size, mode=spec.mode, quantizer=spec.quantizer,
                       dtype=dtype,
                       method="none" if spec.full_precision else self.method, calib=calib,
                       target_bpw=self.target_bpw if mixed else None, mixed_layers=layers,
                       **dwq,
                       keep_first=self.keep_first and not spec.full_precision,
                       keep_last=self.keep_last and not spec.full_precision)

    def _mixed_layers(self, kind: str, spec: QuantSpec, mixed: bool) -> str | None:
        if self.mixed_layers is None or not mixed:
            if self.mixed_layers not in (None, "rtn") and not spec.full_precision:
                raise LabError("How layers are quantized at their widths applies to method mixed (or dwq from "
                               "mixed).", "mixed_layers", self.mixed_layers)
            return "rtn" if mixed else None
        if self.mixed_layers not in MIXED_LAYERS:
            raise LabError(f"Mixed precision quantizes its layers with {', '.join(MIXED_LAYERS)}, not "
                           f"{self.mixed_layers!r}.", "mixed_layers", self.mixed_layers)
        check_method(self.mixed_layers, kind, spec)
        return self.mixed_layers

    def _dwq_settings(self, kind: str, spec: QuantSpec, calib: int) -> dict:
        start = self.dwq_from or ("awq" if kind == "lm" else "gptq")
        if start not in DWQ_STARTS:
            raise LabError(f"Distillation starts from {', '.join(DWQ_STARTS)}, not {start!r}.", "dwq_from", start)
        check_method(start, kind, spec)
        if start == "mixed" and (self.target_bpw is None or self.target_bpw <= 0):
            raise LabError("Distillation from mixed needs a bits-per-weight budget (e.g. 4.5).", "target_bpw",
                           self.target_bpw)
        defaults = _DWQ_DEFAULTS[kind]
        if calib <= defaults["held_out"]:
            raise LabError(f"Method dwq holds out {defaults['held_out']} calibration items; give a calibration size "
                           f"above that (not {calib}).", "calib", calib)
        lr = self.dwq_lr if self.dwq_lr is not None else defaults["lr"]
        if not 0 < lr < 1:
            raise LabError(f"Distillation's learning rate must be between 0 and 1, not {lr:g}.", "dwq_lr", lr)
        return dict(dwq_from=start, dwq_steps=self.dwq_steps or defaults["steps"], dwq_lr=lr)

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, self.mode, self.quantizer,
                         QuantSpec.scales_for(runtime.resolve_dtype(self.dtype)))

    @property
    def tag(self) -> str:
        """The spec's tag, with the method when it is not round-to-nearest: 'q4g64', 'q4g64-gptq', 'mixed4.5'."""
        activations = f"-a{self.act_bits}" if self.act_bits else ""
        if self.method == "dwq":
            return replace(self, method=self.dwq_from).tag + "-dwq"
        if self.method == "mixed":
            layers = "" if self.mixed_layers in (None, "rtn") else f"-{self.mixed_layers}"
            return f"mixed{self.target_bpw:g}-g{self.group_size}{layers}{activations}"
        return self.spec.tag + ("" if self.method in ("rtn", "none") else f"-{self.method}") + activations

    def method_settings(self) -> MethodSettings:
        """What the method of this (validated) config takes: its calibration data and its own settings, each
        default filled in (core.quant.calibration)."""
        kind = registry.resolve(self.model).kind
        if self.method != "dwq":
            return self._settings(self.method, kind, self.calib or 0)
        d = _DWQ_DEFAULTS[kind]
        training = DwqSettings(self.dwq_steps, self.dwq_lr, d["batch"], d["held_out"], d["eval_every"], self.seed)
        start = self._settings(self.dwq_from, kind, calibration.default_size(self.dwq_from, kind))
        return Distillation(start, CalibrationData(self.calib, self.ctx, self.seed), training, self.dwq_checkpoint())

    def _settings(self, method: str, kind: str, size: int) -> RtnSettings | GptqSettings | AwqSettings | MixedSettings:
        """`method`'s settings with `size` calibration items (the other methods a config's method starts from, or
        quantizes its layers with, take their own default size)."""
        data = CalibrationData(size, self.ctx, self.seed)
        if method in ("rtn", "none"):
            return RtnSettings()
        if method == "gptq":
            return GptqSettings(data)
        if method == "awq":
            return AwqSettings(data)
        if method == "mixed":
            layers = self.mixed_layers or "rtn"
            layer_settings = self._settings(layers, kind, calibration.default_size(layers, kind))
            return MixedSettings(data, self.target_bpw, layer_settings)
        raise LabError(f"Unknown method {method!r}; available: {', '.join(METHODS)}.")

    def dwq_checkpoint(self) -> Path:
        """Where distillation keeps this config's resumable state: one folder per quantization config (an
        evaluation's own settings do not change the weights)."""
        quant_fields = {f.name: getattr(self, f.name) for f in fields(QuantConfig)}
        return cache_root() / "dwq" / digest({"config": quant_fields, "version": CHECKPOINT_VERSION})

    def baseline(self):
        """The full-precision config with the same data settings."""
        return replace(self, bits=16, group_size=None, mode="affine", quantizer="minmax", method="none",
                       calib=None, target_bpw=None, mixed_layers=None, act_bits=None, keep_first=False, keep_last=False,
                       dwq_from=None, dwq_steps=None, dwq_lr=None)
