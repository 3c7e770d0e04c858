"""CIFAR-style ResNets with named hook points and an attention slot in every BasicBlock.

Family of He et al. 2016 §4.2 [source]: 3×3 conv stem (16) + BN + ReLU, no max-pool, three
stages of n BasicBlocks with 16, 32, 64 channels and strides 1, 2, 2, global average pooling,
linear classifier; depth = 6n + 2 (ResNet-20: n = 3, 0.27M parameters at 10 classes, ≈ 41M
multiply-adds at 3×32×32). Shortcut option A [source]: identity, or for a change of width or
stride, subsampling x[:, :, ::2, ::2] and zero-padding the new channels (parameter-free; the
zeros go half before and half after the existing channels, as in common re-implementations
[ours]).

ResNet-18, CIFAR variant [source: the widely used CIFAR adaptation of He et al.'s ImageNet
ResNet-18]: 3×3 conv stem (64) + BN + ReLU, no max-pool, four stages of two BasicBlocks with
64, 128, 256, 512 channels and strides 1, 2, 2, 2, projection shortcuts (1×1 conv + BN, option B)
where width or stride change.

BasicBlock with attention (methods.md §4):
    out = relu(shortcut(x) + attn(bn2(conv2(relu(bn1(conv1(x)))))))
``attn`` is ``build_attention(attention, C, stage=i, **attention_kwargs)``, i the stage index.

Hook points, in forward order: ``stem`` (after the stem ReLU), every block (``layer1.0``,
``layer1.1``, …; the block's output after its final ReLU), ``pool`` (global average, B × C),
``fc`` (logits). ``model.stages`` lists the block names per stage. No operation is in-place.
Any input size works (stride-2 convs with padding 1 give ⌈H/2⌉, as does option A's ::2).

Initialisation [ours, as torchvision]: every Conv2d weight Kaiming normal (fan_out, ReLU gain),
conv bias 0; every BatchNorm weight 1, bias 0; Linear layers keep PyTorch's default init.
Deterministic under ``torch.manual_seed``.

Without BatchNorm (``bn=False``, for experiment E8's contrast; registry names
``resnet{depth}nobn``) [ours]: every BatchNorm module is an ``nn.Identity`` under the same name
(``stem.bn``, ``layer1.0.bn1``, …, so hook names and module order are unchanged) and every
convolution that fed one gets a bias (initialised 0). The last convolution of each residual
branch (``conv2``) starts at zero weights, so every block is the identity at initialisation: the
role torchvision's ``zero_init_residual`` gives BatchNorm's γ, without which the variance of the
residual sum grows with depth and training at the default rate diverges.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import build_attention
from .registry import positive_int


class PadShortcut(nn.Module):
    """Option A shortcut: x[:, :, ::stride, ::stride], then zero channels up to ``out_channels``
    (⌊extra/2⌋ before, the rest after)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A shortcut cannot reduce channels ({in_channels} → "
                             f"{out_channels})")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN; ``attn`` on the branch before the addition; final ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str,
                 attn: nn.Module, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=not bn)
        self.bn1 = _norm(out_channels, bn)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not bn)
        self.bn2 = _norm(out_channels, bn)
        self.attn = attn
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not bn),
                bn=_norm(out_channels, bn)))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.attn(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.relu(self.shortcut(x) + branch)


def _norm(channels: int, bn: bool) -> nn.Module:
    """BatchNorm over ``channels``, or an identity under the same name when ``bn`` is off."""
    return nn.BatchNorm2d(channels) if bn else nn.Identity()


class GlobalAvgPool(nn.Module):
    """Global average pooling, flattened: B × C × H × W → B × C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ResNet(nn.Module):
    """Stem → stages of BasicBlocks (``layer1``, ``layer2``, …) → ``pool`` → ``fc``."""

    #: the input hook ``input`` is not analysed by default (``embed.input: true`` adds it)
    analyse_input: bool = False

    def __init__(self, *, blocks: Sequence[int], widths: Sequence[int],
                 strides: Sequence[int], shortcut: str, in_channels: int, num_classes: int,
                 attention: str = "none", attention_kwargs: dict[str, Any] | None = None,
                 bn: bool = True) -> None:
        super().__init__()
        if not isinstance(bn, bool):
            raise ValueError(f"ResNet: bn must be true or false, got {bn!r}")
        attention_kwargs = dict(attention_kwargs or {})
        stem_width = widths[0]
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=not bn),
            bn=_norm(stem_width, bn),
            relu=nn.ReLU()))
        self.stages: list[list[str]] = []
        width = stem_width
        for stage, (n, out_width, stride) in enumerate(zip(blocks, widths, strides)):
            layer = []
            for b in range(n):
                attn = build_attention(attention, out_width, stage=stage, **attention_kwargs)
                layer.append(BasicBlock(width, out_width, stride if b == 0 else 1, shortcut,
                                        attn, bn))
                width = out_width
            name = f"layer{stage + 1}"
            self.add_module(name, nn.Sequential(*layer))
            self.stages.append([f"{name}.{b}" for b in range(n)])
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(width, num_classes)
        self.hook_names: list[str] = ["stem", *(b for s in self.stages for b in s), "pool", "fc"]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if not bn:  # every residual branch starts as zero: each block the identity (module doc)
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(len(self.stages)):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.pool(x))


def _check_common(name: str, in_channels: int, num_classes: int,
                  image_size: int) -> tuple[int, int]:
    positive_int(image_size, "image_size", name)  # any size works; checked for a clear error
    return (positive_int(in_channels, "in_channels", name),
            positive_int(num_classes, "num_classes", name))


def cifar_resnet(*, depth: int, in_channels: int, num_classes: int, image_size: int,
                 attention: str = "none", attention_kwargs: dict[str, Any] | None = None,
                 bn: bool = True) -> ResNet:
    """CIFAR ResNet of ``depth`` = 6n + 2 (n ≥ 1): stages of n blocks, 16/32/64 channels,
    option A shortcuts [source: He et al. 2016 §4.2]; ``bn=False``: no BatchNorm (module
    doc) [ours]."""
    depth = positive_int(depth, "depth", "cifar_resnet")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 with n ≥ 1 (8, 14, 20, 32, 44, "
                         f"56, 110, …), got {depth}")
    c, k = _check_common(f"resnet{depth}", in_channels, num_classes, image_size)
    n = (depth - 2) // 6
    return ResNet(blocks=(n, n, n), widths=(16, 32, 64), strides=(1, 2, 2), shortcut="A",
                  in_channels=c, num_classes=k, attention=attention,
                  attention_kwargs=attention_kwargs, bn=bn)


def _cifar_alias(depth: int):
    def builder(*, in_channels: int, num_classes: int, image_size: int,
                attention: str = "none", attention_kwargs: dict[str, Any] | None = None,
                bn: bool = True) -> ResNet:
        return cifar_resnet(depth=depth, in_channels=in_channels, num_classes=num_classes,
                            image_size=image_size, attention=attention,
                            attention_kwargs=attention_kwargs, bn=bn)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = (f"ResNet-{depth}: ``cifar_resnet(depth={depth})``; ``bn=False`` "
                       "(``model_kwargs: {bn: false}``): without BatchNorm.")
    return builder


def _nobn_alias(depth: int):
    def builder(*, in_channels: int, num_classes: int, image_size: int,
                attention: str = "none",
                attention_kwargs: dict[str, Any] | None = None) -> ResNet:
        return cifar_resnet(depth=depth, in_channels=in_channels, num_classes=num_classes,
                            image_size=image_size, attention=attention,
                            attention_kwargs=attention_kwargs, bn=False)

    builder.__name__ = f"resnet{depth}nobn"
    builder.__doc__ = (f"ResNet-{depth} without BatchNorm: ``cifar_resnet(depth={depth}, "
                       "bn=False)`` under a name of its own, so that a study can hold both "
                       "(a run's name is model-attention-augmentation-seed).")
    return builder


def resnet18(*, in_channels: int, num_classes: int, image_size: int, attention: str = "none",
             attention_kwargs: dict[str, Any] | None = None, bn: bool = True) -> ResNet:
    """CIFAR ResNet-18: 3×3 stem 64, no max-pool, [2, 2, 2, 2] blocks of 64/128/256/512,
    projection shortcuts; ``bn=False``: no BatchNorm (module doc) [ours]."""
    c, k = _check_common("resnet18", in_channels, num_classes, image_size)
    return ResNet(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2),
                  shortcut="B", in_channels=c, num_classes=k, attention=attention,
                  attention_kwargs=attention_kwargs, bn=bn)


CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56)
CIFAR_ALIASES = {f"resnet{d}": _cifar_alias(d) for d in CIFAR_DEPTHS}
#: the CIFAR ResNets without BatchNorm, as registry names of their own (E8)
NOBN_ALIASES = {f"resnet{d}nobn": _nobn_alias(d) for d in CIFAR_DEPTHS}
