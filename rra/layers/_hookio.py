"""Shared plumbing of the layer analyses (margins, saliency, fragmentation): argument checks,
the model on a device in eval mode, capturing hook outputs and substituting one.

Hook names are module names (``model.get_submodule``) as in ``rra.embed.dump``; the reserved
name ``input`` (:data:`rra.embed.dump.INPUT_HOOK`) is the model's (normalised) input itself,
forward position 0.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from rra.device import pick_device
from rra.embed.dump import INPUT_HOOK

if TYPE_CHECKING:
    import torch
    from torch import nn

#: every layer table is computed on the full (unpooled) hook output
FULL_SCALE = "full"


def as_batch(images: Any, name: str = "images", *, min_ndim: int = 2) -> "torch.Tensor":
    """A float N × … batch (numpy array or tensor) → a float32 CPU tensor; checks it."""
    import torch

    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{name} must be floating point (normalised network inputs), got "
                             f"{images.dtype}: map raw images with rra.data.normalise first")
        x = torch.from_numpy(np.array(images, dtype=np.float32))
    elif isinstance(images, torch.Tensor):
        if not torch.is_floating_point(images):
            raise ValueError(f"{name} must be floating point (normalised network inputs), got "
                             f"{images.dtype}: map raw images with rra.data.normalise first")
        x = images.detach().to("cpu", torch.float32)
    else:
        raise ValueError(f"{name} must be a numpy array or a torch tensor, "
                         f"got {type(images).__name__}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (N × …), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is empty (0 rows)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def as_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """Integer class labels, one per row."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a vector of {n} class labels (one per image), got "
                         f"shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(arr.min())}")
    return arr


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_hooks(model: "nn.Module", hooks: Sequence[str] | str) -> list[str]:
    """Hook names: the model's module names or ``input``; unique, non-empty."""
    if isinstance(hooks, str):
        hooks = [hooks]
    hooks = list(hooks)
    if not hooks:
        raise ValueError("hooks is empty: name at least one module (see model.hook_names) or "
                         f"{INPUT_HOOK!r}")
    bad = [h for h in hooks if not isinstance(h, str) or not h]
    if bad:
        raise ValueError(f"hooks: invalid name(s) {bad}: hooks are non-empty module names")
    repeated = sorted({h for h in hooks if hooks.count(h) > 1})
    if repeated:
        raise ValueError(f"hooks: {repeated} given more than once")
    available = [name for name, _ in model.named_modules() if name]
    if INPUT_HOOK in hooks and INPUT_HOOK in available:
        raise ValueError(f"hooks: {INPUT_HOOK!r} is ambiguous, the model has a submodule of "
                         "that name besides the reserved input hook")
    unknown = [h for h in hooks if h != INPUT_HOOK and h not in set(available)]
    if unknown:
        shown = ", ".join(available[:20]) + (" …" if len(available) > 20 else "")
        raise ValueError(f"hooks: unknown hook(s) {unknown}; the model's modules are {shown} "
                         f"(and {INPUT_HOOK!r}, the model's input)")
    return hooks


def hook_positions(hooks: list[str], positions: Mapping[str, int] | None) -> dict[str, int]:
    """``pos_a`` of each hook: ``positions[h]`` when given (e.g. the embed manifest's forward
    order), else the hook's index in ``hooks`` (pass hooks in forward order)."""
    if positions is None:
        return {h: i for i, h in enumerate(hooks)}
    missing = [h for h in hooks if h not in positions]
    if missing:
        raise ValueError(f"positions: no position for hook(s) {missing}")
    return {h: int(positions[h]) for h in hooks}


@contextlib.contextmanager
def on_device(model: "nn.Module", device: Any) -> Iterator["torch.device"]:
    """The model in eval mode on ``device`` (``auto``: CUDA when present, else CPU); its
    training flag is restored afterwards (it stays on the device, as in ``dump_embeddings``)."""
    dev = pick_device(device) if not hasattr(device, "type") else device
    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        yield dev
    finally:
        model.train(was_training)


@contextlib.contextmanager
def capture(model: "nn.Module", hooks: Sequence[str]) -> Iterator[dict]:
    """Forward hooks that store each named module's output (the tensor itself, in the graph)
    in the yielded dict; ``input`` is not handled here (the caller owns the input). Each
    module must fire exactly once per forward pass (checked by :func:`check_fired`)."""
    import torch

    store: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def recorder(name: str):
        def record(module: Any, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"hook {name!r}: module output is a {type(output).__name__}, "
                                 "not a tensor; hook a module that returns one tensor")
            counts[name] = counts.get(name, 0) + 1
            store[name] = output
        return record

    handles = [model.get_submodule(h).register_forward_hook(recorder(h))
               for h in hooks if h != INPUT_HOOK]
    store["__counts__"] = counts
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def check_fired(store: dict, hooks: Sequence[str]) -> None:
    """After one forward pass under :func:`capture`: every hook fired exactly once."""
    counts = store["__counts__"]
    missing = [h for h in hooks if h != INPUT_HOOK and h not in counts]
    if missing:
        raise ValueError(f"hooks: {missing} were not called in the forward pass")
    repeated = sorted(h for h, c in counts.items() if c > 1)
    if repeated:
        raise ValueError(f"hooks: {repeated} were called more than once per forward pass (a "
                         "reused module): their output is ambiguous, hook a unique module")
    counts.clear()


@contextlib.contextmanager
def substitute(model: "nn.Module", hook: str, holder: dict) -> Iterator[None]:
    """While active, the output of module ``hook`` is replaced by ``holder["value"]`` (a
    tensor of the output's per-row shape and the batch's row count): a forward hook that
    returns the substituted tensor, so everything the model computes after that module sees
    it. ``holder["calls"]`` counts the substitutions (must be one per forward pass)."""
    def replace(module: Any, inputs: Any, output: Any) -> Any:
        value = holder["value"]
        if tuple(value.shape) != tuple(output.shape):
            raise ValueError(f"hook {hook!r}: substitute of shape {tuple(value.shape)} for an "
                             f"output of shape {tuple(output.shape)}")
        holder["calls"] = holder.get("calls", 0) + 1
        return value.to(output.dtype)

    handle = model.get_submodule(hook).register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
