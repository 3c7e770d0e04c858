"""Shared plumbing of the layer analyses (seed-measures.md): argument checks, the model on a
device in eval mode, forward passes that hand each hook's output to a callback, and the
substitution of one hook's output.

Every analysis in :mod:`rra.layers` runs the model batch by batch and hands each hook's output to
a callback *inside* its forward hook (:class:`HookRunner`), where it is reduced at once or kept
for one batch (e.g. for a gradient); so a process holds the model, one forward batch of
activations and the accumulators — never the activations of a hook for the whole probe.

Hook names follow :mod:`rra.embed.dump`: module names (``model.get_submodule``) in forward call
order, each called exactly once per forward pass; the reserved name ``input``
(:data:`rra.embed.dump.INPUT_HOOK`), allowed first only, stands for the model's (normalised)
input batch, forward position 0.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from rra.device import pick_device
from rra.embed.dump import INPUT_HOOK, _check_hooks, _dry_forward

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["FULL_SCALE", "INPUT_HOOK", "HookRunner", "as_batch", "as_labels", "check_hooks",
           "hook_positions", "on_device", "positive_int", "substitute"]

#: the scale of every layer table computed on the full (unpooled) hook output
FULL_SCALE = "full"


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int ≥ 1, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_batch(images: Any, name: str = "images", *, ndim: int | None = None,
             min_ndim: int = 2) -> "torch.Tensor":
    """A float N × … batch (numpy array or tensor, already normalised) → a float32 CPU tensor.

    ``ndim``: the exact rank required (4: N × C × H × W), else at least ``min_ndim``.
    ``ValueError`` naming ``name`` for another rank, an integer dtype, no rows, NaN or inf.
    """
    import torch

    hint = "normalised network inputs, e.g. from rra.data.normalise"
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{name} must be floating point ({hint}), got dtype {images.dtype}")
        x = torch.from_numpy(np.array(images, dtype=np.float32))
    elif isinstance(images, torch.Tensor):
        if not torch.is_floating_point(images):
            raise ValueError(f"{name} must be floating point ({hint}), got dtype {images.dtype}")
        x = images.detach().to("cpu", torch.float32)
    else:
        raise ValueError(f"{name} must be a numpy array or a torch tensor, "
                         f"got {type(images).__name__}")
    if ndim is not None and x.ndim != ndim:
        rank = "N × C × H × W" if ndim == 4 else f"{ndim}-D"
        raise ValueError(f"{name} must be {rank}, got shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (N × …), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is empty (0 rows)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def as_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """Class indices, one per image → a 1-D int64 array; ``ValueError`` naming ``name`` for
    another shape, non-integers or a negative index."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one label per image ({n}), "
                         f"got shape {arr.shape}")
    if n and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(arr.min())}")
    return arr


def check_hooks(model: "nn.Module", hooks: Sequence[str] | str) -> list[str]:
    """Hook names checked as :func:`rra.embed.dump_embeddings` checks them (known, distinct,
    ``input`` only first); ``ValueError`` starting ``hooks:``."""
    if hooks is None or (not isinstance(hooks, str) and len(hooks) == 0):
        raise ValueError("hooks is empty: name at least one hook (a module name or "
                         f"{INPUT_HOOK!r})")
    try:
        return _check_hooks(model, hooks)
    except ValueError as err:
        raise ValueError(f"hooks: {err}") from None


def hook_positions(hooks: Sequence[str], positions: Mapping[str, int] | None) -> dict[str, int]:
    """``pos_a`` of each hook: ``positions[hook]`` when given (e.g. the embed manifest's forward
    positions), else the hook's index in ``hooks`` (pass hooks in forward order)."""
    if positions is None:
        return {h: i for i, h in enumerate(hooks)}
    missing = [h for h in hooks if h not in positions]
    if missing:
        raise ValueError(f"positions has no entry for hook(s) {missing}")
    return {h: int(positions[h]) for h in hooks}


@contextlib.contextmanager
def on_device(model: "nn.Module", device: Any = "auto", *, inference: bool = False
              ) -> Iterator["torch.device"]:
    """The model in eval mode on ``device`` (``auto``: CUDA when present, else CPU; a
    ``torch.device`` as it is), under ``torch.inference_mode()`` when ``inference``; the
    training flag is restored afterwards (the model stays on the device, as in
    :func:`rra.embed.dump_embeddings`)."""
    import torch

    dev = device if hasattr(device, "type") else pick_device(device)
    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        with torch.inference_mode() if inference else contextlib.nullcontext():
            yield dev
    finally:
        model.train(was_training)


class HookRunner:
    """Forward passes that hand each hook's output to ``callback(hook, output)`` at once.

    ``hooks`` (checked by :func:`check_hooks`) must each be called once per forward pass, in
    order (checked on a dry forward of one sample by :meth:`shapes`, and the call count on
    every pass). ``input`` gets the input batch itself, before the forward pass. ``run``
    returns the model's output. The output handed over is the module's own tensor (in the
    autograd graph when gradients are on).
    """

    def __init__(self, model: "nn.Module", hooks: Sequence[str]):
        self.model = model
        self.hooks = list(hooks)
        self.modules = {h: model.get_submodule(h) for h in self.hooks if h != INPUT_HOOK}

    def shapes(self, x: "torch.Tensor") -> dict[str, tuple[int, ...]]:
        """Per-hook output shape for a batch like ``x`` (a dry forward of its first row)."""
        return _dry_forward(self.model, self.modules, self.hooks, x[:1])

    def run(self, x: "torch.Tensor", callback: Callable[[str, "torch.Tensor"], None]) -> Any:
        import torch

        calls = {h: 0 for h in self.modules}

        def make(name: str) -> Callable:
            def hook(module: Any, inputs: Any, output: Any) -> None:
                calls[name] += 1
                if calls[name] > 1:
                    raise ValueError(f"hook {name!r} was called more than once in one forward "
                                     "pass (a reused module): hook a unique module")
                if not isinstance(output, torch.Tensor):
                    raise ValueError(f"hook {name!r}: module output is a "
                                     f"{type(output).__name__}, not a tensor")
                callback(name, output)
            return hook

        if INPUT_HOOK in self.hooks:
            callback(INPUT_HOOK, x)
        handles = [m.register_forward_hook(make(h)) for h, m in self.modules.items()]
        try:
            out = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [h for h, c in calls.items() if c == 0]
        if missing:
            raise ValueError(f"hook(s) {missing} were not called in the forward pass")
        return out


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
