"""Simulated integer activations (W8A8 and the like) for the ResNets, with ranges calibrated on train images.

Each weight layer's input is rounded to `bits`-bit integers on an asymmetric per-tensor grid and de-quantized
before the layer runs ("fake quantization"): the numbers an integer kernel would see, computed in float. The grid
of every layer is min..max of its inputs over the calibration images (CIFAR-10 train, never test), so an
activation outside the calibrated range is clipped, as it would be on integer hardware."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from core.quant.layers import module_at, swap

ACT_BITS = (8,)


class QuantizedInput(nn.Module):
    """Rounds the input of `layer` to a fixed grid [low, high] with 2^bits levels, then calls the layer."""

    def __init__(self, layer: nn.Module, low: float, high: float, bits: int):
        super().__init__()
        self.layer = layer
        self.act_bits, self.low, self.high = bits, low, high
        self._scale = max(high - low, 1e-12) / (2**bits - 1)

    def __call__(self, x: mx.array) -> mx.array:
        q = mx.clip(mx.round((x - self.low) / self._scale), 0, 2**self.act_bits - 1)
        return self.layer(q * self._scale + self.low)


class _RangeCatcher(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self._low, self._high = float("inf"), float("-inf")

    def __call__(self, x: mx.array) -> mx.array:
        self._low, self._high = min(self._low, x.min().item()), max(self._high, x.max().item())
        return self.layer(x)


def quantize_activations(model: nn.Module, paths: list[str], images: mx.array, bits: int = 8,
                         batch: int = 256) -> dict[str, tuple]:
    """Calibrate the input range of the layers at `paths` (core.quant.layers.weight_layer_paths of the float model)
    on `images`, then wrap them; returns {path: (low, high)}."""
    catchers = {p: _RangeCatcher(module_at(model, p)) for p in paths}
    for p, c in catchers.items():
        swap(model, p, c)
    for i in range(0, images.shape[0], batch):
        mx.eval(model(images[i:i + batch]))
    ranges = {}
    for p, c in catchers.items():
        ranges[p] = (c._low, c._high)
        swap(model, p, QuantizedInput(c.layer, c._low, c._high, bits))
    return ranges
