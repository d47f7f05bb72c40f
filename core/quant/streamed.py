"""Language models quantized one piece at a time, straight from their checkpoint.

The model starts as a structure with nothing read (core.quant.baseline.LazyBaseline). Each piece of the chain
(embedding, every block, final norm, an untied head) is read in float32, quantized and put into it; only one
piece is ever held in full precision. The calibrated methods run block by block in sequence, each block calibrated
on the outputs of the blocks already done, as GPTQ's reference implementation does: the calibration activations
are the only other thing held. Round-to-nearest reads no calibration data."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from core.models.lm import Chain
from core.quant.awq import awq_block, awq_config
from core.quant.baseline import LazyBaseline
from core.quant.calibration import AwqSettings, GptqSettings, RtnSettings, calibration_tokens
from core.quant.gptq import block_outputs, gptq_block
from core.quant.layers import QuantReport, quantize_model, swap
from core.quant.spec import QuantSpec

STREAMED_METHODS = ("rtn", "gptq", "awq")


def weight_paths(model: nn.Module) -> list[str]:
    """The model's weight layers, float or already quantized (a quantized checkpoint), in order, nothing read."""
    from mlx.utils import tree_flatten

    kinds = (nn.Linear, nn.Embedding, nn.QuantizedLinear, nn.QuantizedEmbedding)
    return [p for p, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module) if isinstance(m, kinds)]


def quantize_lm(baseline: LazyBaseline, tokenizer, spec: QuantSpec, keep: set[str],
                settings: RtnSettings | GptqSettings | AwqSettings, progress=None) -> tuple[nn.Module, QuantReport]:
    """The model quantized by the method `settings` are for (rtn, gptq or awq), built piece by piece; its float
    arrays in float32. A full-precision spec leaves every piece unread (it is read, in float32, when first used)."""
    step = progress or (lambda fraction, message: None)
    model = baseline.skeleton()
    if spec.full_precision:
        model.set_dtype(mx.float32)  # lazy casts: nothing is read until used
        return model, QuantReport()
    chain, report = Chain(model), QuantReport()
    method, calibrated = settings.method, not isinstance(settings, RtnSettings)
    x = None
    pieces = chain.paths
    for n, path in enumerate(pieces):
        step(n / len(pieces), f"{method} {path}")
        piece = baseline.piece(path)
        swap(model, path, piece)
        packed = {}
        if calibrated and path == "model.embed_tokens":
            x = piece(calibration_tokens(tokenizer, settings.data.size, settings.data.ctx))
            mx.eval(x)
        elif calibrated and path.startswith("model.layers."):
            x, packed = _calibrate_block(model, piece, path, x, chain.mask(x, piece), spec, method, keep)
        _merge(report, quantize_model(model, spec, keep, packed=packed, within=path))
    return model, report


def _calibrate_block(model: nn.Module, block: nn.Module, path: str, x: mx.array, mask, spec: QuantSpec,
                     method: str, keep: set[str]) -> tuple[mx.array, dict]:
    """Run `method` on one block; returns the next block's calibration inputs and any packed layers."""
    if method == "awq":
        return awq_block(block, path + ".", x, mask, awq_config(model), spec, {}), {}
    packed = gptq_block(block, path + ".", x, mask, spec, keep)  # its weights now hold the de-quantized ones
    return block_outputs(block, x, mask), packed


def _merge(report: QuantReport, part: QuantReport) -> None:
    report.quantized += part.quantized
    report.kept.update(part.kept)
    report.padded.update(part.padded)
