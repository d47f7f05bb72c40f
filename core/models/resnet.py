"""CIFAR-10 ResNets (He et al. 2016, option-A shortcuts) in MLX, loading PyTorch-layout safetensors."""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core.errors import LabError

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm(planes)
        # Option A: subsample and zero-pad channels, no parameters.
        self.shortcut_pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def __call__(self, x: mx.array) -> mx.array:
        out = nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.shortcut_pad:
            p = self.shortcut_pad
            shortcut = mx.pad(x[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (p, p)])
        return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(16)
        widths, in_planes = (16, 32, 64), 16
        for stage, planes in enumerate(widths, start=1):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i == 0 and stage > 1) else 1))
                in_planes = planes
            setattr(self, f"layer{stage}", blocks)
        self.linear = nn.Linear(64, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        x = nn.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = block(x)
        return self.linear(x.mean(axis=(1, 2)))


def build(name: str) -> CifarResNet:
    if name not in DEPTHS:
        raise LabError(f"Unknown ResNet {name!r}; choose one of {', '.join(DEPTHS)}.")
    model = CifarResNet(DEPTHS[name])
    model.eval()
    return model


def load_pytorch_safetensors(model: CifarResNet, path: Path) -> CifarResNet:
    """Load PyTorch-named, OIHW float32 weights; convolution kernels become MLX's OHWI."""
    try:
        weights = mx.load(str(path))
    except Exception as cause:
        raise LabError(f"Could not read ResNet weights {path}: {cause}") from cause
    converted = [(k, v.transpose(0, 2, 3, 1) if v.ndim == 4 else v)
                 for k, v in weights.items() if not k.endswith("num_batches_tracked")]
    try:
        model.load_weights(converted, strict=True)
    except ValueError as cause:
        raise LabError(f"{path} does not hold the weights of this ResNet: {cause}") from cause
    mx.eval(model.parameters())
    model.eval()
    return model


def load_mlx_safetensors(model: CifarResNet, path: Path) -> CifarResNet:
    """Load weights saved by MLX itself (core/models/train.py): OHWI kernels, MLX parameter names."""
    try:
        model.load_weights(str(path), strict=True)
    except Exception as cause:
        raise LabError(f"Could not load ResNet weights {path}: {cause}") from cause
    mx.eval(model.parameters())
    model.eval()
    return model


def preprocess(images: np.ndarray) -> mx.array:
    """uint8 [N, 32, 32, 3] RGB -> normalised float32 NHWC, as the pretrained weights expect."""
    x = images.astype(np.float32) / 255.0
    return mx.array((x - MEAN) / STD)


class _Identity(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return x


def folded_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm) -> tuple[mx.array, mx.array]:
    """(kernel, bias) of the single convolution equal to conv followed by inference-mode bn:
    conv(x)·γ/σ + (β − μγ/σ)."""
    scale = bn.weight / mx.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale + (conv.bias * scale if "bias" in conv else 0)
    return conv.weight * scale[:, None, None, None], bias


def fold_batchnorm(model: CifarResNet) -> CifarResNet:
    """Fold each inference-mode BatchNorm into the float convolution before it, in place.

    conv(x)·γ/σ + (β − μγ/σ) is one convolution with scaled kernels and a bias: one pass over the activations
    fewer per layer. Only for float convolutions (quantize or de-quantize first, then fold)."""
    pairs = [(model, "conv1", "bn1")] + [(block, conv, bn) for stage in (model.layer1, model.layer2, model.layer3)
                                         for block in stage for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"))]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm):
            raise ValueError("fold_batchnorm needs float Conv2d layers followed by BatchNorm")
        folded = nn.Conv2d(conv.weight.shape[-1], conv.weight.shape[0], conv.weight.shape[1:3],
                           stride=conv.stride, padding=conv.padding, bias=True)
        folded.weight, folded.bias = folded_batchnorm(conv, bn)
        setattr(owner, conv_name, folded)
        setattr(owner, bn_name, _Identity())
    mx.eval(model.parameters())
    return model
