"""Name lookup and keyword checking shared by the model and attention registries."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping
from typing import Any


def lookup(registry: Mapping[str, Callable], name: str, what: str) -> Callable:
    """Return ``registry[name]``; an unknown name is a ValueError that lists the known names."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(registry)}")
    return registry[name]


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], what: str,
                 reserved: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming every keyword in ``kwargs`` that ``fn`` does not accept.

    ``reserved`` names are accepted by ``fn`` but set by the caller, so they may not be passed
    by the user either (e.g. ``stage`` of an attention module, set by the network).
    """
    params = inspect.signature(fn).parameters
    accepted = [p.name for p in params.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.name not in reserved]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{what}: unknown keyword argument(s) {unknown}; accepted: {accepted}")


def positive_int(value: Any, name: str, what: str) -> int:
    """``value`` as an int >= 1, else a ValueError naming the parameter ``name`` of ``what``."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {name} must be a positive integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{what}: {name} must be a positive integer, got {value!r}") from None
    if out < 1:
        raise ValueError(f"{what}: {name} must be a positive integer, got {value!r}")
    return int(out)
