"""Capturing what named modules see in a forward pass: the one forward-hook helper of the tests.

``with capture(model, ["conv1", "fc"]) as seen: model(x)`` stores each module's output under
its name (``what="input"``: its first positional input, from a forward pre-hook), passed
through ``keep`` (default: the tensor itself; :func:`detached_copy` for a copy that later
in-place ops cannot change). ``seen.calls`` lists the names in call order, one per call. The
hooks are removed on exit, also after an error. :func:`forward_outputs` runs one forward pass
under ``torch.no_grad()`` and returns the captured outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


def detached_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


class Captured(dict):
    """Hook name → what it captured (the last call's); ``calls``: names in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []


@contextlib.contextmanager
def capture(model: torch.nn.Module, hooks: Sequence[str], *, what: str = "output",
            keep: Callable[[Any], Any] = lambda t: t) -> Iterator[Captured]:
    """While active, every forward pass of ``model`` stores ``keep(output)`` (or, with
    ``what="input"``, ``keep(inputs[0])``) of each module named in ``hooks``."""
    if what not in ("output", "input"):
        raise ValueError(f"what must be 'output' or 'input', got {what!r}")
    seen = Captured()

    def store(name: str, value: Any) -> None:
        seen.calls.append(name)
        seen[name] = keep(value)

    handles = []
    try:
        for name in hooks:
            module = model.get_submodule(name)
            if what == "output":
                handles.append(module.register_forward_hook(
                    lambda m, i, o, name=name: store(name, o)))
            else:
                handles.append(module.register_forward_pre_hook(
                    lambda m, i, name=name: store(name, i[0])))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def forward_outputs(model: torch.nn.Module, x: torch.Tensor, hooks: Sequence[str], *,
                    keep: Callable[[Any], Any] = detached_copy) -> Captured:
    """One forward pass of ``x`` under ``torch.no_grad()``; each hook's output through ``keep``
    (default: a detached copy)."""
    with capture(model, hooks, keep=keep) as seen, torch.no_grad():
        model(x)
    return seen
