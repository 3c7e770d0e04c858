"""Models stage: a registry of CNNs that expose named hook points (design.md "rra.models").

``build_model(name, in_channels=…, num_classes=…, image_size=…, attention=…)`` is the one
entry point. Every model has

- ``model.hook_names``: module names (usable with ``model.get_submodule``) in forward order;
  each module's forward output is the embedding of that hook point, never modified in place;
- ``model.stages``: the residual block names per stage (``[]`` for LeNet-5);
- ``model.spec``: the arguments it was built from (``build_model(**spec)`` rebuilds it);
- ``model.analyse_input`` (class attribute): whether analyses embed the model's input as the
  hook ``input`` at position 0 by default (LeNet-5: True, ResNets: False);
  :func:`analyses_input` reads it from a registry name without building the model.

| name | model |
|---|---|
| `lenet5` | LeNet-5, every atomic op a hook point (``rra.models.lenet``) |
| `cifar_resnet` | CIFAR ResNet, ``depth`` = 6n + 2 keyword (``rra.models.resnet``) |
| `resnet8` … `resnet56` | aliases of ``cifar_resnet`` at depth 8, 14, 20, 32, 44, 56 |
| `resnet8nobn` … `resnet56nobn` | the same without BatchNorm (``bn=False``: E8's contrast) |
| `resnet18` | CIFAR ResNet-18 (4 stages, projection shortcuts) |

The ResNets take ``bn`` (default true) as a keyword (``model_kwargs: {bn: false}`` in a run);
the ``…nobn`` names exist so that one study can hold runs with and without BatchNorm.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from .attention import ATTENTION, build_attention, get_attn, list_attention
from .lenet import lenet5
from .registry import check_kwargs, lookup
from .resnet import CIFAR_ALIASES, NOBN_ALIASES, cifar_resnet, resnet18

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "cifar_resnet": cifar_resnet,
    **CIFAR_ALIASES,
    **NOBN_ALIASES,
    "resnet18": resnet18,
}

__all__ = ["ATTENTION", "MODELS", "analyses_input", "build_attention", "build_model",
           "get_attn", "list_attention", "list_models"]


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def analyses_input(name: str) -> bool:
    """Whether registry model ``name`` analyses its input (hook ``input``) by default: the
    ``analyse_input`` class attribute of the class its builder returns (the builder's return
    annotation), False where undeclared. Used for ``embed.input: auto``."""
    builder = lookup(MODELS, name, "model")
    cls = typing.get_type_hints(builder).get("return")
    return bool(getattr(cls, "analyse_input", False))


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                attention: str = "none", attention_kwargs: dict[str, Any] | None = None,
                **kwargs: Any) -> nn.Module:
    """Build registry model ``name`` for ``in_channels`` × ``image_size``² inputs.

    ``attention``/``attention_kwargs`` select the module on every residual branch (see
    ``rra.models.attention``); models without residual blocks (LeNet-5) accept only
    ``"none"``. Extra ``kwargs`` go to the builder (e.g. ``depth`` for ``cifar_resnet``).
    Unknown names and keywords raise a ValueError listing what is accepted.
    """
    builder = lookup(MODELS, name, "model")
    attention_kwargs = dict(attention_kwargs or {})
    check_kwargs(get_attn(attention), attention_kwargs, f"attention {attention!r}",
                 reserved=("channels", "stage"))
    check_kwargs(builder, kwargs, f"model {name!r}",
                 reserved=("in_channels", "num_classes", "image_size", "attention",
                           "attention_kwargs"))
    if "attention" in inspect.signature(builder).parameters:
        model = builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                        attention=attention, attention_kwargs=attention_kwargs, **kwargs)
    else:
        if attention != "none" or attention_kwargs:
            raise ValueError(f"model {name!r} has no residual blocks: attention must be 'none' "
                             f"without attention_kwargs, got {attention!r}, {attention_kwargs}")
        model = builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                        **kwargs)
    model.spec = {"name": name, "in_channels": in_channels, "num_classes": num_classes,
                  "image_size": image_size, "attention": attention,
                  "attention_kwargs": copy.deepcopy(attention_kwargs), **copy.deepcopy(kwargs)}
    return model
