"""A quantized 2-D convolution for MLX, which has none (`nn.quantize` converts only Linear and Embedding).

The OHWI weight is flattened to [O, K] with K = kh*kw*I, zero-padded to a multiple of the group size
(ResNet's 3x3x16 = 144 fits no group size) and packed with the affine or float quantizers. Two compute paths:
- 'dequant' (default): de-quantize the packed weight on each call, then run MLX's float convolution.
  The weights stay packed in memory; the extra work is one small de-quantization per layer and call.
- 'qmm': im2col, then `mx.quantized_matmul` on the packed weight, MLX's own quantized kernel.
tests/quant/test_quantize.py checks that both give the same outputs."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

COMPUTE_PATHS = ("dequant", "qmm")


class QuantizedConv2d(nn.Module):
    def __init__(self, wq, scales, biases, *, out_channels: int, kernel_size: tuple[int, int], in_channels: int,
                 stride: tuple[int, int], padding: tuple[int, int], bias, bits: int, group_size: int, mode: str,
                 compute: str = "dequant"):
        super().__init__()
        self.weight, self.scales = wq, scales
        if biases is not None:
            self.biases = biases
        if bias is not None:
            self.bias = bias
        self.out_channels, self.kernel_size, self.in_channels = out_channels, kernel_size, in_channels
        self.stride, self.padding = stride, padding
        self.bits, self.group_size, self.mode = bits, group_size, mode
        self.k = kernel_size[0] * kernel_size[1] * in_channels
        self.padded_k = -(-self.k // group_size) * group_size
        self.compute = compute
        self.freeze()  # packed integers are not trainable

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, spec, quantize_matrix) -> "QuantizedConv2d":
        if getattr(conv, "groups", 1) != 1 or _pair(getattr(conv, "dilation", 1)) != (1, 1):
            raise ValueError("QuantizedConv2d supports ungrouped, undilated convolutions only.")
        out_c, kh, kw, in_c = conv.weight.shape
        k = kh * kw * in_c
        padded_k = -(-k // spec.group_size) * spec.group_size
        flat = conv.weight.reshape(out_c, k)
        if padded_k != k:
            flat = mx.pad(flat, [(0, 0), (0, padded_k - k)])
        wq, scales, biases = quantize_matrix(flat, spec)
        q = cls(wq, scales, biases, out_channels=out_c, kernel_size=(kh, kw), in_channels=in_c,
                stride=_pair(conv.stride), padding=_pair(conv.padding), bias=conv.get("bias"),
                bits=spec.bits, group_size=spec.group_size, mode=spec.mode)
        mx.eval(q.parameters())
        return q

    def _dequantized(self, dtype) -> mx.array:
        kwargs = dict(group_size=self.group_size, bits=self.bits, mode=self.mode)
        if self.mode == "affine":
            w = mx.dequantize(self.weight, self.scales.astype(mx.float32), self.biases.astype(mx.float32), **kwargs)
        else:
            w = mx.dequantize(self.weight, self.scales, **kwargs)
        kh, kw = self.kernel_size
        return w[:, : self.k].astype(dtype).reshape(self.out_channels, kh, kw, self.in_channels)

    def to_float(self, dtype=mx.float32) -> nn.Conv2d:
        """An ordinary Conv2d holding exactly the de-quantized weights."""
        kh, kw = self.kernel_size
        conv = nn.Conv2d(self.in_channels, self.out_channels, (kh, kw), stride=self.stride,
                         padding=self.padding, bias="bias" in self)
        conv.weight = self._dequantized(dtype)
        if "bias" in self:
            conv.bias = self.bias.astype(dtype)
        return conv

    def __call__(self, x: mx.array) -> mx.array:
        y = self._conv_qmm(x) if self.compute == "qmm" else mx.conv2d(
            x, self._dequantized(x.dtype), stride=self.stride, padding=self.padding)
        return y + self.bias if "bias" in self else y

    def _conv_qmm(self, x: mx.array) -> mx.array:
        cols, (n, ho, wo) = im2col(x, self.kernel_size, self.stride, self.padding, self.padded_k)
        y = mx.quantized_matmul(cols, self.weight, self.scales, self.get("biases"), transpose=True,
                                group_size=self.group_size, bits=self.bits, mode=self.mode)
        return y.reshape(n, ho, wo, self.out_channels)


def im2col(x: mx.array, kernel_size, stride, padding, width: int | None = None):
    """NHWC input -> rows of patches [N*Ho*Wo, kh*kw*C] in the OHWI weight's (kh, kw, I) order, zero-padded on
    the right to `width` columns; also returns (N, Ho, Wo)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    x = mx.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    patches = [x[:, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw, :]
               for i in range(kh) for j in range(kw)]
    k = kh * kw * c
    cols = mx.concatenate(patches, axis=-1).reshape(n * ho * wo, k)
    if width is not None and width > k:
        cols = mx.pad(cols, [(0, 0), (0, width - k)])
    return cols, (n, ho, wo)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
