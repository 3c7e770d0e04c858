"""Parameter and FLOP accounting for models and attention variants (methods.md §4).

Every count comes from one forward pass of a zero input (one image unless a batch is given) in
evaluation mode under ``torch.no_grad``; the counts depend on shapes only, never on values:

- ``flops`` (:func:`count_flops`): ``torch.utils.flop_counter.FlopCounterMode``: matrix
  products and convolutions at 2 FLOPs per multiply-add, every kernel tap counted (ResNet-20 at
  3×32×32: ≈ 41M multiply-adds, ≈ 82M FLOPs); biases and all element-wise work left out.
- ``flops_elementwise`` (:func:`count_elementwise_flops`) [ours]: the work torch's counter
  leaves out — activations, sigmoid/softmax, element-wise products and sums (the gating
  ``V · A``, the residual addition), reductions and pooling, normalisation, interpolation and
  the bias additions of convolutions and linear layers — one op per arithmetic operation on an
  element, by the rules of :data:`ELEMENTWISE_RULES` (table in docs/methods.md, "Cost").
  ``flops_total`` = ``flops`` + ``flops_elementwise``.
- ``params_live`` (:func:`count_live_params`) [ours]: the parameters that can affect the
  output (see there); ``params`` (:func:`count_params`) counts them all.

Mechanism [ours]: :class:`CostCounter`, a ``TorchDispatchMode`` (the interception
``FlopCounterMode`` itself is built on) that sees every aten op the forward runs — module
calls and tensor ops written inside ``forward()`` alike (``v * g``, ``torch.sigmoid``,
``v.mean``, the residual ``+``), functional or in place, on any device. Forward hooks would see
modules only and miss those tensor ops. It is kept apart from ``FlopCounterMode``'s registry
so the two counts stay separate, and an aten op with no rule is an error
(``NotImplementedError`` naming the op), never a silent zero.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from . import build_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _forward(model: nn.Module, input_shape: Sequence[int], *modes: Any) -> None:
    """Run ``model`` once on a zero input of ``input_shape`` ((C, H, W) or (B, C, H, W)) in
    eval mode under ``torch.no_grad`` and the context managers ``modes`` (outermost first), on
    the model's own device; the training flag is restored afterwards."""
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
        x = torch.zeros(shape, device=device)
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            model(x)
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a zero input of ``input_shape``, as torch's
    ``FlopCounterMode`` counts them (matrix products and convolutions only; module docstring).

    ``input_shape`` is (C, H, W) (one image) or (B, C, H, W). The model runs in eval mode under
    ``torch.no_grad`` on its own device; its training flag is restored afterwards.
    """
    counter = FlopCounterMode(display=False)
    _forward(model, input_shape, counter)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# Element-wise operations and live parameters [ours]

Rule = Callable[[dict[str, Any], Any], int]


def _first(out: Any) -> torch.Tensor:
    """An op's (first) output tensor."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _numel(out: Any) -> int:
    return int(_first(out).numel())


def _per_output(ops: int) -> Rule:
    return lambda a, out: ops * _numel(out)


def _per_input(ops: int) -> Rule:
    return lambda a, out: ops * int(a["self"].numel() if "self" in a else a["input"].numel())


def _ints(value: Any, n: int, default: int) -> list[int]:
    """An aten int-list argument (``[]``, ``[k]`` or ``[k1, …, kn]``) as n ints."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return [default] * n
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    return values * n if len(values) == 1 else values


def _window_reads(length: int, out: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Input elements read by the ``out`` windows of one axis (padding reads nothing)."""
    return sum(1 for i in range(out) for j in range(k)
               if 0 <= i * stride - pad + j * dil < length)


def _pool(n: int) -> Rule:
    """Pooling over the last ``n`` axes: one op per input element each window reads (windows
    clipped to the input; padding reads nothing)."""
    def rule(a: dict[str, Any], out: Any) -> int:
        x, y = a["self"], _first(out)
        kernel = _ints(a["kernel_size"], n, 1)
        stride = [s or k for s, k in zip(_ints(a.get("stride"), n, 0), kernel)]
        pad, dil = _ints(a.get("padding"), n, 0), _ints(a.get("dilation"), n, 1)
        reads = math.prod(_window_reads(x.shape[i - n], y.shape[i - n], kernel[i], stride[i],
                                        pad[i], dil[i]) for i in range(n))
        return int(y.numel() // math.prod(y.shape[-n:])) * reads
    return rule


def _adaptive_pool(a: dict[str, Any], out: Any) -> int:
    """Adaptive pooling: one op per input element each window [⌊iL/o⌋, ⌈(i+1)L/o⌉) reads."""
    x, y = a["self"], _first(out)
    n = len(a["output_size"])
    reads = 1
    for length, o in zip(x.shape[-n:], y.shape[-n:]):
        reads *= sum(-(-(i + 1) * length // o) - (i * length) // o for i in range(o))
    return int(y.numel() // math.prod(y.shape[-n:])) * reads


def _bias(a: dict[str, Any], out: Any) -> int:
    """Convolution / matrix product: torch's counter has the products; the bias addition is
    one op per output element."""
    bias = a.get("bias", a.get("self"))  # addmm / baddbmm: ``self`` is the added term
    return _numel(out) if isinstance(bias, torch.Tensor) else 0


def _rules() -> dict[Any, Rule]:
    aten = torch.ops.aten
    rules: dict[Any, Rule] = {}

    def add(names: str, rule: Rule) -> None:
        for name in names.split():
            rules[getattr(aten, name)] = rule

    # element-wise functions and arithmetic: one op per output element (broadcast included)
    add("relu relu_ sigmoid sigmoid_ tanh tanh_ hardtanh hardtanh_ hardsigmoid hardswish silu "
        "silu_ gelu elu leaky_relu threshold exp log sqrt rsqrt neg abs reciprocal clamp clamp_ "
        "clamp_min clamp_min_ add add_ sub sub_ rsub mul mul_ div div_ maximum minimum",
        _per_output(1))
    # reductions: one op per input element (the mean's division by n folded in)
    add("mean sum amax amin", _per_input(1))
    add("avg_pool2d max_pool2d max_pool2d_with_indices", _pool(2))
    add("avg_pool3d max_pool3d_with_indices", _pool(3))
    add("_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool2d", _adaptive_pool)
    # normalisation with fixed statistics: y = x·a + b per element (a, b per channel)
    add("native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training "
        "_batch_norm_no_update cudnn_batch_norm miopen_batch_norm", _per_input(2))
    # softmax over a dim: max, subtract, exp, sum, divide
    add("_softmax _log_softmax", _per_output(5))
    # bilinear: 4 products and 3 sums per output element; nearest: a copy
    add("upsample_bilinear2d", _per_output(7))
    add("convolution _convolution addmm baddbmm", _bias)
    # counted by torch's FLOP counter; data movement, views, allocation: no arithmetic
    add("mm bmm cudnn_convolution mkldnn_convolution "
        "upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact2d "
        "zeros zeros_like ones ones_like empty empty_like empty_strided full full_like fill_ "
        "zero_ arange view _unsafe_view reshape _reshape_alias as_strided t transpose permute "
        "unsqueeze squeeze expand slice select split split_with_sizes unbind cat stack "
        "constant_pad_nd clone copy_ _to_copy detach alias lift_fresh repeat new_empty "
        "new_zeros _local_scalar_dense", lambda a, out: 0)
    return rules


#: aten op packet → element-wise ops of one call (``(arguments by name, output) → int``).
#: Conventions: docs/methods.md, "Cost". An op not listed stops the count (NotImplementedError).
ELEMENTWISE_RULES: dict[Any, Rule] = _rules()

_CONVOLUTIONS = (torch.ops.aten.convolution, torch.ops.aten._convolution)


def _bind(func: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An aten call's arguments by their schema names (defaults filled in)."""
    bound = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def live_taps(input_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
              padding: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """Boolean mask over a convolution's kernel taps: True where the tap meets at least one
    input element (not zero padding) at some output position. [ours]

    Along one axis of length L (output length O = ⌊(L + 2p − d(k − 1) − 1)/s⌋ + 1), tap j is
    live iff some output r < O reads input index r·s − p + j·d inside [0, L). E.g. a 3×3
    convolution with padding 1 on a 1×1 map: only the centre tap is live.
    """
    axes = []
    for length, k, s, p, d in zip(input_size, kernel, stride, padding, dilation):
        out = (length + 2 * p - d * (k - 1) - 1) // s + 1
        axes.append(torch.tensor([any(0 <= r * s - p + j * d < length for r in range(out))
                                  for j in range(k)]))
    mask = axes[0]
    for axis in axes[1:]:
        mask = mask[..., None] & axis
    return mask


class CostCounter(TorchDispatchMode):
    """Counts the element-wise ops of the aten calls it sees (:data:`ELEMENTWISE_RULES`) and
    records which parameters they read (for :func:`count_live_params`). [ours]

    ``params``: the parameters to track. After the forward: ``elementwise`` (total ops),
    ``by_op`` (ops per aten op name), ``read`` (indices of parameters read by some op other
    than as a convolution's weight) and ``taps`` (index → union of :func:`live_taps` masks of
    the non-transposed convolutions that used the parameter as their weight).
    """

    def __init__(self, params: Sequence[nn.Parameter] = ()) -> None:
        super().__init__()
        self.index = {id(p): i for i, p in enumerate(params)}
        self.elementwise = 0
        self.by_op: dict[str, int] = {}
        self.read: set[int] = set()
        self.taps: dict[int, torch.Tensor] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = ELEMENTWISE_RULES.get(func.overloadpacket)
        if rule is None:
            raise NotImplementedError(
                f"element-wise op count: aten op {func} has no counting rule; add one to "
                "ELEMENTWISE_RULES in rra/models/cost.py (conventions: docs/methods.md, Cost)")
        a = _bind(func, args, kwargs)
        ops = int(rule(a, out))
        self.elementwise += ops
        self.by_op[str(func)] = self.by_op.get(str(func), 0) + ops
        weight = None
        if func.overloadpacket in _CONVOLUTIONS and not a["transposed"]:
            weight = a["weight"]
            i = self.index.get(id(weight))
            if i is not None:
                n = weight.dim() - 2
                mask = live_taps(a["input"].shape[-n:], weight.shape[2:],
                                 _ints(a["stride"], n, 1), _ints(a["padding"], n, 0),
                                 _ints(a["dilation"], n, 1))
                self.taps[i] = mask | self.taps[i] if i in self.taps else mask
        for t in _tensors([*args, *kwargs.values()]):
            if t is not weight and id(t) in self.index:
                self.read.add(self.index[id(t)])
        return out


def _live(params: Sequence[nn.Parameter], counter: CostCounter) -> int:
    live = 0
    for i, p in enumerate(params):
        if i in counter.read:
            live += p.numel()
        elif i in counter.taps:
            mask = counter.taps[i]
            live += p.numel() // mask.numel() * int(mask.sum())
    return live


def count_elementwise_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Element-wise ops of one forward pass (module docstring; conventions in docs/methods.md,
    "Cost"), everything torch's FLOP counter (:func:`count_flops`) leaves out. [ours]

    ``input_shape`` as for :func:`count_flops`. An aten op without a counting rule raises
    ``NotImplementedError`` naming the op.
    """
    counter = CostCounter()
    _forward(model, input_shape, counter)
    return counter.elementwise


def count_live_params(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Parameters that can affect the output at ``input_shape`` [ours, structural]:

    - a parameter no op of the forward reads (e.g. of a module never called) is dead;
    - a convolution weight read only as a (non-transposed) convolution's weight is live on the
      kernel taps that meet real input somewhere (:func:`live_taps`, union over the calls):
      a zero-padded 3×3 convolution on a 1×1 map has 1 of its 9 taps live;
    - every other parameter read by an op is live as a whole.

    Not detected: effects that cancel numerically (e.g. a convolution bias before a
    training-mode BatchNorm); the pass runs in eval mode.
    """
    params = list(model.parameters())  # shared parameters once
    counter = CostCounter(params)
    _forward(model, input_shape, counter)
    return _live(params, counter)


def measure_cost(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``params``, ``params_live``, ``flops``, ``flops_elementwise`` and ``flops_total``
    (= flops + flops_elementwise) of ``model`` at ``input_shape``, from one forward pass.
    The same numbers as :func:`count_params`, :func:`count_live_params`, :func:`count_flops`
    and :func:`count_elementwise_flops`."""
    params = list(model.parameters())
    flop_counter = FlopCounterMode(display=False)
    counter = CostCounter(params)
    _forward(model, input_shape, flop_counter, counter)
    flops = int(flop_counter.get_total_flops())
    return {"params": count_params(model), "params_live": _live(params, counter),
            "flops": flops, "flops_elementwise": counter.elementwise,
            "flops_total": flops + counter.elementwise}


def cost_table(model_name: str, variants: Mapping[str, Mapping[str, Any]], in_channels: int,
               num_classes: int, image_size: int, *,
               model_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Parameters and FLOPs of each attention variant of ``model_name``, relative to ``none``.

    ``variants`` maps a label to ``{"attention": name, "attention_kwargs": {...}}``; a missing
    ``attention`` defaults to the label, so ``{"none": {}, "se": {}, "stac": {"attention_kwargs":
    {"scales": [4, 2, 1]}}}`` works. The baseline (``attention="none"``) is always measured.
    Row keys: model, variant, attention, attention_kwargs, the counts of :func:`measure_cost`
    (params, params_live, flops, flops_elementwise, flops_total), params_ratio, flops_ratio,
    flops_total_ratio (variant / baseline), params_extra, flops_extra, flops_total_extra
    (variant − baseline).
    """
    common = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
              **dict(model_kwargs or {})}
    shape = (in_channels, image_size, image_size)

    def measure(attention: str, attention_kwargs: Mapping[str, Any]) -> dict[str, int]:
        model = build_model(model_name, attention=attention,
                            attention_kwargs=dict(attention_kwargs), **common)
        return measure_cost(model, shape)

    base = measure("none", {})
    rows = []
    for label, variant in variants.items():
        unknown = sorted(set(variant) - {"attention", "attention_kwargs"})
        if unknown:
            raise ValueError(f"cost_table: variant {label!r} has unknown key(s) {unknown}; "
                             "accepted: ['attention', 'attention_kwargs']")
        attention = variant.get("attention", label)
        attention_kwargs = dict(variant.get("attention_kwargs") or {})
        cost = base if attention == "none" and not attention_kwargs else measure(
            attention, attention_kwargs)
        relative = ("params", "flops", "flops_total")
        rows.append({"model": model_name, "variant": label, "attention": attention,
                     "attention_kwargs": attention_kwargs, **cost,
                     **{f"{k}_ratio": cost[k] / base[k] for k in relative},
                     **{f"{k}_extra": cost[k] - base[k] for k in relative}})
    return rows


#: The numeric columns of a cost table row, in the order of ``cost.parquet``.
COST_COLUMNS = ("params", "params_live", "flops", "flops_elementwise", "flops_total",
                "params_ratio", "flops_ratio", "flops_total_ratio", "params_extra",
                "flops_extra", "flops_total_extra")


def cost_stage(dataset: str, variants: Sequence[Mapping[str, Any]], out_stem: Any) -> Any:
    """Cost accounting of a study's grid: ``{out_stem}.parquet`` (+ ``.csv``), one row per
    (model, model_kwargs, attention variant), at the input size of ``dataset``.

    ``variants``: dicts with ``model``, ``attention`` (the variant's name in the grid, e.g.
    ``stac-auto``), ``module`` (the attention module, e.g. ``stac``), ``attention_kwargs`` and
    optionally ``model_kwargs`` and ``attention_kwargs_file`` (a ``rra.stac.choose_scales``
    JSON whose ``scales`` are merged into ``attention_kwargs``, as training does). Each model's
    ``none`` baseline is measured once; ratios and differences are variant / baseline and
    variant − baseline (columns as in :func:`cost_table`, counts as in :func:`measure_cost`).
    Returns the polars frame written.
    """
    import json
    from pathlib import Path

    import polars as pl

    from rra.data import dataset_info
    from rra.io import write_table

    from .attention import read_attention_kwargs

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
                         **{k: row[k] for k in COST_COLUMNS}})
    schema = {"dataset": pl.Utf8, "model": pl.Utf8, "model_kwargs": pl.Utf8, "attention": pl.Utf8,
              "module": pl.Utf8, "attention_kwargs": pl.Utf8, "in_channels": pl.Int64,
              "image_size": pl.Int64, "num_classes": pl.Int64,
              **{k: pl.Float64 if k.endswith("_ratio") else pl.Int64 for k in COST_COLUMNS}}
    df = pl.DataFrame(rows, schema=schema)
    write_table(df, Path(out_stem))
    return df
