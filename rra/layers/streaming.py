"""Shared plumbing of the layer analyses (seed-measures.md): probe checks and streamed forward
passes with per-hook callbacks.

Every analysis in :mod:`rra.layers` runs the model batch by batch and hands each hook's output to
a callback *inside* its forward hook, where it is reduced to running sums at once; so a process
holds the model, one forward batch of activations and the accumulators — never the activations
of a hook, let alone of all hooks, for the whole probe.

Hook names follow :mod:`rra.embed.dump`: module names (``model.get_submodule``) in forward call
order, each called exactly once per forward pass; the reserved name ``input``
(:data:`rra.embed.dump.INPUT_HOOK`), allowed first only, stands for the model's input batch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from rra.device import pick_device
from rra.embed.dump import INPUT_HOOK, _check_batch_size, _check_hooks, _dry_forward

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["INPUT_HOOK", "as_images", "as_labels", "check_batch_size", "check_hooks",
           "eval_on", "hook_positions", "HookRunner"]


def check_batch_size(batch_size: Any) -> int:
    """A positive int, else ``ValueError`` naming ``batch_size``."""
    return _check_batch_size(batch_size)


def check_hooks(model: "nn.Module", hooks: Sequence[str]) -> list[str]:
    """Hook names checked against the model (unknown, repeated, ``input`` not first: ValueError)."""
    if hooks is None or (not isinstance(hooks, str) and len(hooks) == 0):
        raise ValueError("hooks is empty: name at least one hook (a module name or 'input')")
    return _check_hooks(model, hooks)


def as_images(images: Any, name: str = "probe") -> "torch.Tensor":
    """A float N × C × H × W array or tensor (already normalised) → a CPU float32 tensor.

    ``ValueError`` naming ``name`` for another rank, an integer dtype, no rows, NaN or inf.
    """
    import torch

    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{name} must be floating point (normalised images, e.g. from "
                             f"rra.data.normalise), got dtype {images.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    elif isinstance(images, torch.Tensor):
        if not torch.is_floating_point(images):
            raise ValueError(f"{name} must be floating point (normalised images, e.g. from "
                             f"rra.data.normalise), got dtype {images.dtype}")
        t = images.detach().to("cpu", torch.float32)
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, "
                         f"got {type(images).__name__}")
    if t.ndim != 4:
        raise ValueError(f"{name} must be N × C × H × W, got shape {tuple(t.shape)}")
    if t.shape[0] < 1:
        raise ValueError(f"{name} is empty: no images")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def as_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """Integer labels, one per image → a 1-D int64 array; ``ValueError`` naming ``name``."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be 1-D with one label per image ({n}), "
                         f"got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def hook_positions(hooks: Sequence[str], positions: Mapping[str, int] | None) -> dict[str, int]:
    """``pos_a`` of each hook: ``positions[hook]`` when given (e.g. the embed manifest's forward
    positions), else the hook's index in ``hooks``."""
    if positions is None:
        return {h: i for i, h in enumerate(hooks)}
    missing = [h for h in hooks if h not in positions]
    if missing:
        raise ValueError(f"positions has no entry for hook(s) {missing}")
    return {h: int(positions[h]) for h in hooks}


@contextlib.contextmanager
def eval_on(model: "nn.Module", device: Any = "auto") -> Iterator["torch.device"]:
    """Model in eval mode on ``device`` (``rra.device.pick_device``) under
    ``torch.inference_mode()``; the training flag is restored afterwards (the model stays on
    the device, as in :func:`rra.embed.dump.dump_embeddings`)."""
    import torch

    dev = pick_device(device)
    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        with torch.inference_mode():
            yield dev
    finally:
        model.train(was_training)


class HookRunner:
    """Forward passes that hand each hook's output to ``callback(hook, output)`` at once.

    ``hooks`` (checked by :func:`check_hooks`) must each be called once per forward pass, in
    order (checked on a dry forward of one sample by :meth:`shapes`, and the call count on
    every pass). ``input`` gets the input batch itself, before the forward pass. ``run`` returns
    the model's output.
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
