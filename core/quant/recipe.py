"""The one way a config becomes a model: load the full-precision baseline, quantize it with the config's method
(keeping the layers it says), and simulate integer activations where asked. Evaluation, export and the server
all call `quantize`, so the exported model is the evaluated one by construction. The model comes back
computing in float32 (the quality path); `Quantized.deploy()` casts it to the config's compute dtype."""
from __future__ import annotations

from dataclasses import dataclass

import mlx.nn as nn

from core.models.lm import output_layer_path
from core.models.registry import ModelInfo, resolve
from core.quant.actquant import quantize_activations
from core.quant.baseline import LazyBaseline, load_baseline
from core.quant.calibration import calibration_images
from core.quant.config import QuantConfig
from core.quant.kernels import use_measured_kernels
from core.quant.layers import QuantReport, weight_layer_paths
from core.quant.methods import apply_method
from core.quant.precision import cast_to
from core.quant.streamed import STREAMED_METHODS, quantize_lm, weight_paths


@dataclass
class Quantized:
    """A model quantized as its config says, with what happened to each layer."""

    config: QuantConfig
    info: ModelInfo
    model: nn.Module
    tokenizer: object | None
    report: QuantReport

    def deploy(self) -> nn.Module:
        """The model computing in the config's dtype with this machine's kernel choice, in place (for serving and
        export; evaluation does the same only while it measures speed, core.quant.precision.computing_in)."""
        return use_measured_kernels(cast_to(self.model, self.config.dtype))


def keep_set(model: nn.Module, config: QuantConfig, layers: list[str] | None = None) -> set[str]:
    """The layer paths `keep_first` / `keep_last` ask to leave in full precision (the output layer of a model
    whose head is tied to its embedding is the embedding)."""
    layers = layers or weight_layer_paths(model)
    wanted = ((layers[0], config.keep_first), (output_layer_path(model, layers), config.keep_last))
    return {path for path, keep in wanted if keep}


def quantize(config: QuantConfig, progress=None, loading_share: float = 0.0) -> Quantized:
    """The quantized model `config` describes, fresh (never shared: quantization replaces layers in place).
    progress(fraction, message) is optional; loading the baseline takes `loading_share` of it, the method the rest."""
    cfg = config.validated()
    step = progress or (lambda fraction, message: None)
    info = resolve(cfg.model)
    step(0.0, f"loading {cfg.model}")
    if info.kind == "lm" and cfg.method in STREAMED_METHODS:  # one piece in memory at a time
        baseline = LazyBaseline(info)
        tokenizer, skeleton = baseline.tokenizer(), baseline.chain.model
        layers = weight_paths(skeleton)
        model, report = quantize_lm(baseline, tokenizer, cfg.spec, keep_set(skeleton, cfg, layers),
                                    cfg.method_settings(), progress=step)
    else:
        model, tokenizer = load_baseline(info)
        layers = weight_layer_paths(model)  # of the float model: the paths activations are calibrated at
        step(loading_share, f"quantizing ({cfg.tag})")
        report = apply_method(model, tokenizer, info.kind, cfg.spec, keep_set(model, cfg), cfg.method_settings(),
                              progress=lambda f, m: step(loading_share + (1 - loading_share) * f, m))
    if cfg.act_bits:
        quantize_activations(model, layers, calibration_images(cfg.calib, cfg.seed), cfg.act_bits)
    model.eval()
    return Quantized(cfg, info, model, tokenizer, report)
