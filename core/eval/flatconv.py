"""Fast CPU inference for the CIFAR ResNets: 3x3 convolutions as nine shifted matrix products.

On the Linux CPU, MLX's conv2d builds an im2col matrix with a strided copy that is slow on the CPU, so the 16-channel
layers spend most of their time copying, not multiplying. Here the activations of a whole batch live as one
matrix of padded pixels, [rows, channels], rows = (batch + 2) images of (H+2) x (W+2) pixels, the zero padding ring
included, plus one all-zero image at each end. Tap (i, j) of a 3x3, stride-1 convolution then reads the same
matrix shifted by a constant number of rows, a contiguous slice that BLAS takes without a copy, so the
convolution is nine GEMMs accumulated with `mx.addmm`. The outputs in the padding ring are garbage and are
zeroed by a mask; each convolution's output is 2 x (W+3) rows shorter than its input (the taps reach that far),
which the zero images at both ends absorb. The stride-2 convolutions (two per network) run through mx.conv2d on
the padded images.

BatchNorm is folded into the kernels. The result equals the module forward to float32 rounding
(tests/eval/test_flatconv.py); core.eval.pipeline uses it for the de-quantized evaluation path on the CPU.
`classify` spreads the batches over one CPU stream per core (core.eval.parallel)."""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core.eval.parallel import map_batches
from core.models.resnet import CifarResNet, folded_batchnorm

FLAT_BATCH = 200  # images per call: larger batches fall out of the CPU caches (measured 100-500)


@dataclass
class _Folded:
    """A 3x3 convolution with its BatchNorm folded in: OHWI kernel, per-channel bias, stride, and for stride 1
    the nine [in, out] tap matrices, tap (i, j) at index 3 i + j."""
    weight: mx.array
    bias: mx.array
    stride: int
    taps: list[mx.array]


def _fold(conv, bn) -> _Folded | None:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm) or conv.weight.shape[1:3] != (3, 3):
        return None
    if getattr(conv, "groups", 1) != 1 or tuple(np.atleast_1d(conv.padding)) not in ((1,), (1, 1)):
        return None
    weight, bias = folded_batchnorm(conv, bn)
    stride = int(np.atleast_1d(conv.stride)[0])
    taps = [mx.contiguous(weight[:, i, j, :].T) for i in range(3) for j in range(3)] if stride == 1 else []
    return _Folded(weight, bias, stride, taps)


@dataclass
class _Rows:
    """A batch as padded-pixel rows; `start` is the global row index of data[0] (rows shrink at both ends)."""
    data: mx.array
    start: int
    height: int
    width: int


class FlatResNet:
    """Callable like the model (NHWC float32 batch -> logits), for inference only."""

    def __init__(self, model: CifarResNet):
        self.stem = _fold(model.conv1, model.bn1)
        self.blocks = []
        for stage in (model.layer1, model.layer2, model.layer3):
            for block in stage:
                self.blocks.append((_fold(block.conv1, block.bn1), _fold(block.conv2, block.bn2),
                                    block.shortcut_pad))
        self.head = model.linear
        if self.stem is None or any(a is None or b is None for a, b, _ in self.blocks) or \
                not isinstance(self.head, nn.Linear):
            raise ValueError("FlatResNet needs float Conv2d + BatchNorm layers (de-quantize first)")
        mx.eval([(f.weight, f.bias, f.taps) for f in [self.stem] + [f for a, b, _ in self.blocks for f in (a, b)]])
        self._masks: dict[tuple[int, int, int], mx.array] = {}

    @classmethod
    def try_build(cls, model) -> "FlatResNet | None":
        """The fast form of `model`, or None where it does not apply (quantized or wrapped layers, not a ResNet)."""
        try:
            return cls(model)
        except (ValueError, AttributeError):
            return None

    def classify(self, inputs: mx.array, batch_size: int = FLAT_BATCH, progress=None) -> np.ndarray:
        """Logits for every input row, batches spread over the CPU streams (core.eval.parallel)."""
        n = inputs.shape[0]
        batches = [inputs[lo: lo + batch_size] for lo in range(0, n, batch_size)]
        return np.concatenate([np.array(logits) for logits in
                               map_batches(self, batches, progress=progress, message="classifying")])

    def __call__(self, x: mx.array) -> mx.array:
        batch = x.shape[0]
        rows = self._to_rows(x)
        rows = self._conv(rows, self.stem, batch)
        rows.data = nn.relu(rows.data)
        for first, second, shortcut_pad in self.blocks:
            if first.stride == 1:
                rows = self._room_for_two(rows, batch)
                shortcut = rows
                inner = self._conv(rows, first, batch)
                inner.data = nn.relu(inner.data)
            else:
                images = self._images(rows, batch)
                inner = self._to_rows(nn.relu(mx.conv2d(images, first.weight, stride=first.stride) + first.bias))
                p = shortcut_pad
                shortcut = self._to_rows(mx.pad(images[:, 1:-1:2, 1:-1:2, :], [(0, 0), (0, 0), (0, 0), (p, p)]))
            out = self._conv(inner, second, batch)
            offset = out.start - shortcut.start
            out.data = nn.relu(out.data + shortcut.data[offset: offset + out.data.shape[0]])
            rows = out
        pooled = self._images(rows, batch)[:, 1:-1, 1:-1, :].mean(axis=(1, 2))
        return self.head(pooled)

    @staticmethod
    def _to_rows(x: mx.array) -> _Rows:
        _, h, w, c = x.shape
        padded = mx.pad(x, [(1, 1), (1, 1), (1, 1), (0, 0)])  # a zero image at each end, a zero ring around each
        return _Rows(padded.reshape(-1, c), 0, h, w)

    @staticmethod
    def _images(rows: _Rows, batch: int) -> mx.array:
        """The real images, [batch, H+2, W+2, C] with their zero rings."""
        per_image = (rows.height + 2) * (rows.width + 2)
        first = per_image - rows.start
        return rows.data[first: first + batch * per_image].reshape(batch, rows.height + 2, rows.width + 2, -1)

    def _room_for_two(self, rows: _Rows, batch: int) -> _Rows:
        """Fresh end images when two more convolutions would eat into the real ones (deep stages)."""
        per_image, reach = (rows.height + 2) * (rows.width + 2), rows.width + 3
        if rows.start + 2 * reach <= per_image:
            return rows
        return self._to_rows(self._images(rows, batch)[:, 1:-1, 1:-1, :])

    def _ring_mask(self, batch: int, height: int, width: int) -> mx.array:
        key = (batch, height, width)
        if key not in self._masks:
            mask = np.zeros((batch + 2, height + 2, width + 2, 1), np.float32)
            mask[1:-1, 1:-1, 1:-1] = 1.0
            self._masks[key] = mx.array(mask.reshape(-1, 1))
        return self._masks[key]

    def _conv(self, rows: _Rows, conv: _Folded, batch: int) -> _Rows:
        pitch = rows.width + 2
        reach = pitch + 1  # the farthest tap, in rows
        n = rows.data.shape[0] - 2 * reach
        out = None
        for tap, weight in enumerate(conv.taps):
            i, j = divmod(tap, 3)
            shift = reach + (i - 1) * pitch + (j - 1)
            part = rows.data[shift: shift + n]
            out = part @ weight if out is None else mx.addmm(out, part, weight)
        start = rows.start + reach
        mask = self._ring_mask(batch, rows.height, rows.width)[start: start + n]
        return _Rows((out + conv.bias) * mask, start, rows.height, rows.width)

