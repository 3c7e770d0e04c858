"""Parameter and FLOP accounting for models and attention variants (methods.md §4).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a single
image in evaluation mode: it counts matrix products and convolutions at 2 FLOPs per
multiply-add (ResNet-20 at 3×32×32: ≈ 41M multiply-adds, ≈ 82M FLOPs). Element-wise work
(BatchNorm, ReLU, pooling, sigmoid, gating products, interpolation) is not counted, so the
FLOP cost of an attention module is that of its convolutions and linear layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import build_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a zero input of ``input_shape``.

    ``input_shape`` is (C, H, W) (one image) or (B, C, H, W). The model runs in eval mode under
    ``torch.no_grad`` on its own device; its training flag is restored afterwards.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W) with positive sizes, "
                         f"got {tuple(input_shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def cost_table(model_name: str, variants: Mapping[str, Mapping[str, Any]], in_channels: int,
               num_classes: int, image_size: int, *,
               model_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Parameters and FLOPs of each attention variant of ``model_name``, relative to ``none``.

    ``variants`` maps a label to ``{"attention": name, "attention_kwargs": {...}}``; a missing
    ``attention`` defaults to the label, so ``{"none": {}, "se": {}, "stac": {"attention_kwargs":
    {"scales": [4, 2, 1]}}}`` works. The baseline (``attention="none"``) is always measured.
    Row keys: model, variant, attention, attention_kwargs, params, flops, params_ratio,
    flops_ratio (variant / baseline), params_extra, flops_extra (variant − baseline).
    """
    common = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
              **dict(model_kwargs or {})}
    shape = (in_channels, image_size, image_size)

    def measure(attention: str, attention_kwargs: Mapping[str, Any]) -> tuple[int, int]:
        model = build_model(model_name, attention=attention,
                            attention_kwargs=dict(attention_kwargs), **common)
        return count_params(model), count_flops(model, shape)

    base_params, base_flops = measure("none", {})
    rows = []
    for label, variant in variants.items():
        unknown = sorted(set(variant) - {"attention", "attention_kwargs"})
        if unknown:
            raise ValueError(f"cost_table: variant {label!r} has unknown key(s) {unknown}; "
                             "accepted: ['attention', 'attention_kwargs']")
        attention = variant.get("attention", label)
        attention_kwargs = dict(variant.get("attention_kwargs") or {})
        if attention == "none" and not attention_kwargs:
            params, flops = base_params, base_flops
        else:
            params, flops = measure(attention, attention_kwargs)
        rows.append({"model": model_name, "variant": label, "attention": attention,
                     "attention_kwargs": attention_kwargs, "params": params, "flops": flops,
                     "params_ratio": params / base_params, "flops_ratio": flops / base_flops,
                     "params_extra": params - base_params, "flops_extra": flops - base_flops})
    return rows
