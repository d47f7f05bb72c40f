"""Fast CPU inference for the CIFAR ResNets: 3x3 convolutions as nine shifted matrix products.

On the Linux CPU, MLX's conv2d builds an im2col matrix with a strided copy that is slow on the CPU, so the 16-channel
layers spend most of their time copying, not multiplying. Here the activations of a whole batch live as one
matrix of pixels, [rows, channels]: each image is H+1 rows of W+1 pixels, its real pixels plus one zero column on
the right and one zero row at the bottom, images back to back, with one all-zero image at each end. In a
row-major layout one zero column serves both sides (the pixel left of column 0 is the previous row's zero column)
and one zero row serves two neighbouring images, so the padding costs fewer rows than a full ring. Tap (i, j) of a
3x3, stride-1 convolution then reads the same matrix shifted by a constant number of rows, a contiguous slice that
BLAS takes without a copy, so the convolution is nine GEMMs accumulated with `mx.addmm`. The outputs in the
padding are garbage and are zeroed by a mask; each convolution's output is 2 x (W+2) rows shorter than its input
(the taps reach that far), which the zero images at both ends absorb. The stride-2 convolutions (two per network)
run through mx.conv2d on the images.

BatchNorm is folded into the kernels. The result equals the module forward to float32 rounding
(tests/eval/test_flatconv.py); core.eval.pipeline uses it for the de-quantized evaluation path on the CPU.
`classify` spreads the batches over one CPU stream per core (core.parallel)."""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core.parallel import map_batches
from core.models.resnet import CifarResNet, folded_batchnorm

FLAT_BATCH = 200  # images per call: larger batches fall out of the CPU caches (measured 100-500)


@dataclass
class _Folded:
    """A 3x3 convolution with its BatchNorm folded in: OHWI kernel, per-channel bias, stride, and the nine
    [in, out] tap matrices, tap (i, j) at index 3 i + j."""
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
    taps = [mx.contiguous(weight[:, i, j, :].T) for i in range(3) for j in range(3)]
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
        """Logits for every input row, batches spread over the CPU streams (core.parallel)."""
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
                phases = self._phases(self._interior(rows, batch))
                inner = self._conv_stride2(phases, first, batch)
                inner.data = nn.relu(inner.data)
                even, p = phases[0], shortcut_pad  # the even rows and columns: the shortcut's pixels
                shortcut = _Rows(mx.pad(even.data, [(0, 0), (p, p)]), even.start, even.height, even.width)
            out = self._conv(inner, second, batch)
            offset = out.start - shortcut.start
            out.data = nn.relu(out.data + shortcut.data[offset: offset + out.data.shape[0]])
            rows = out
        return self.head(self._interior(rows, batch).mean(axis=(1, 2)))

    @staticmethod
    def _to_rows(x: mx.array) -> _Rows:
        _, h, w, c = x.shape
        padded = mx.pad(x, [(1, 1), (0, 1), (0, 1), (0, 0)])  # a zero image at each end, a zero row and column
        return _Rows(padded.reshape(-1, c), 0, h, w)

    @staticmethod
    def _interior(rows: _Rows, batch: int) -> mx.array:
        """The real images, [batch, H, W, C]."""
        h, w = rows.height, rows.width
        per_image = (h + 1) * (w + 1)
        first = per_image - rows.start
        images = rows.data[first: first + batch * per_image].reshape(batch, h + 1, w + 1, -1)
        return images[:, :h, :w, :]

    def _room_for_two(self, rows: _Rows, batch: int) -> _Rows:
        """Fresh end images when two more convolutions would eat into the real ones (deep stages)."""
        per_image, reach = (rows.height + 1) * (rows.width + 1), rows.width + 2
        if rows.start + 2 * reach <= per_image:
            return rows
        return self._to_rows(self._interior(rows, batch))

    def _pad_mask(self, batch: int, height: int, width: int) -> mx.array:
        key = (batch, height, width)
        if key not in self._masks:
            mask = np.zeros((batch + 2, height + 1, width + 1, 1), np.float32)
            mask[1:-1, :height, :width] = 1.0
            self._masks[key] = mx.array(mask.reshape(-1, 1))
        return self._masks[key]

    def _phases(self, images: mx.array) -> list[_Rows]:
        """The four stride-2 phases of the images (rows even/odd x columns even/odd), each laid out as rows. An odd
        height or width gets a zero row or column first: the convolution's own padding there."""
        _, h, w, _ = images.shape
        if h % 2 or w % 2:
            images = mx.pad(images, [(0, 0), (0, h % 2), (0, w % 2), (0, 0)])
        return [self._to_rows(images[:, a::2, b::2, :]) for a in (0, 1) for b in (0, 1)]

    def _conv_stride2(self, phases: list[_Rows], conv: _Folded, batch: int) -> _Rows:
        """A 3x3, stride-2 convolution as nine GEMMs over the input's phases: output (y, x) reads input rows
        2y-1, 2y, 2y+1, i.e. odd-phase row y-1, even-phase row y, odd-phase row y (and the same for columns), so
        every tap is a phase shifted by 0 or -1 pixel, a contiguous slice again."""
        pitch = phases[0].width + 1
        return self._nine_products(phases[0], conv, batch,
                                   lambda i, j: (phases[2 * (i != 1) + (j != 1)].data, -(i == 0) * pitch - (j == 0)))

    def _conv(self, rows: _Rows, conv: _Folded, batch: int) -> _Rows:
        pitch = rows.width + 1
        return self._nine_products(rows, conv, batch, lambda i, j: (rows.data, (i - 1) * pitch + (j - 1)))

    def _nine_products(self, layout: _Rows, conv: _Folded, batch: int, tap) -> _Rows:
        """The convolution's output rows: tap(i, j) gives the matrix tap (i, j) reads and its shift in rows from
        the output row; `layout` is the input's (its start, size and image shape)."""
        reach = layout.width + 2  # the farthest tap, in rows
        n = layout.data.shape[0] - 2 * reach
        out = None
        for index, weight in enumerate(conv.taps):
            data, shift = tap(*divmod(index, 3))
            part = data[reach + shift: reach + shift + n]
            out = part @ weight if out is None else mx.addmm(out, part, weight)
        start = layout.start + reach
        mask = self._pad_mask(batch, layout.height, layout.width)[start: start + n]
        return _Rows((out + conv.bias) * mask, start, layout.height, layout.width)
