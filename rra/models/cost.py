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


def cost_stage(dataset: str, variants: Sequence[Mapping[str, Any]], out_stem: Any) -> Any:
    """Cost accounting of a study's grid: ``{out_stem}.parquet`` (+ ``.csv``), one row per
    (model, model_kwargs, attention variant), at the input size of ``dataset``.

    ``variants``: dicts with ``model``, ``attention`` (the variant's name in the grid, e.g.
    ``stac-auto``), ``module`` (the attention module, e.g. ``stac``), ``attention_kwargs`` and
    optionally ``model_kwargs`` and ``attention_kwargs_file`` (a ``rra.stac.choose_scales``
    JSON whose ``scales`` are merged into ``attention_kwargs``, as training does). Each model's
    ``none`` baseline is measured once; ratios and differences are variant / baseline and
    variant − baseline (params and FLOPs as in :func:`count_params`, :func:`count_flops`).
    Returns the polars frame written.
    """
    import json
    from pathlib import Path

    import polars as pl

    from rra.data import dataset_info
    from rra.metrics.tables import write_table
    from rra.stac import read_attention_kwargs

    info = dataset_info(dataset)
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for v in variants:
        missing = [key for key in ("model", "attention", "module") if key not in v]
        if missing:
            raise ValueError(f"cost_stage: variant {dict(v)} lacks key(s) {missing}")
        kwargs = dict(v.get("attention_kwargs") or {})
        if v.get("attention_kwargs_file"):
            kwargs.update(read_attention_kwargs(v["attention_kwargs_file"]))
        key = (v["model"], json.dumps(v.get("model_kwargs") or {}, sort_keys=True))
        if v["attention"] in groups.setdefault(key, {}):
            raise ValueError(f"cost_stage: variant {v['attention']!r} of model {v['model']!r} "
                             "listed twice")
        groups[key][v["attention"]] = {"attention": v["module"], "attention_kwargs": kwargs}
    rows = []
    for (model, model_kwargs), group in groups.items():
        for row in cost_table(model, group, info.channels, info.num_classes, info.image_size,
                              model_kwargs=json.loads(model_kwargs)):
            rows.append({"dataset": dataset, "model": model, "model_kwargs": model_kwargs,
                         "attention": row["variant"], "module": row["attention"],
                         "attention_kwargs": json.dumps(row["attention_kwargs"], sort_keys=True),
                         "in_channels": info.channels, "image_size": info.image_size,
                         "num_classes": info.num_classes,
                         **{k: row[k] for k in ("params", "flops", "params_ratio", "flops_ratio",
                                                "params_extra", "flops_extra")}})
    schema = {"dataset": pl.Utf8, "model": pl.Utf8, "model_kwargs": pl.Utf8, "attention": pl.Utf8,
              "module": pl.Utf8, "attention_kwargs": pl.Utf8, "in_channels": pl.Int64,
              "image_size": pl.Int64, "num_classes": pl.Int64, "params": pl.Int64,
              "flops": pl.Int64, "params_ratio": pl.Float64, "flops_ratio": pl.Float64,
              "params_extra": pl.Int64, "flops_extra": pl.Int64}
    df = pl.DataFrame(rows, schema=schema)
    write_table(df, Path(out_stem))
    return df
