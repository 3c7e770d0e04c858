"""Training-time augmentation policies, selected by name (methods.md §5).

A policy is built once per run by :func:`build_augmentation` and then called on every training
batch: ``policy(images, generator) -> images``, with ``images`` a uint8 tensor N × H × W × C
(the stored layout, before normalisation) and ``generator`` the CPU ``torch.Generator`` of the
epoch. Every random draw comes from that generator, in a fixed order, so the augmentation of an
epoch is a function of (seed, epoch) alone and a resumed run repeats it exactly.

Policies:

- ``none``: identity.
- ``standard`` [source: methods.md §5, "random crop with padding and horizontal flip (flip off
  for digits)"; the CIFAR recipe of He et al. 2016]: pad each image with ``pad`` zero pixels on
  every side (zero in raw pixel values, i.e. black, as torchvision's ``RandomCrop(padding=pad)``
  does before ``Normalize``), take an H × W crop at an offset (dy, dx) drawn uniformly from
  {0, …, 2·pad}², and mirror it left–right with probability ½ when the dataset allows flips
  (``DatasetInfo.allow_flip``; off for digits). Draw order per batch: dy (N values), dx (N),
  then the flip coins (N, only when flips are allowed).

Add a policy by writing a class with ``__init__(self, *, allow_flip: bool, pad: int)`` (its
options are training-spec keys: today only ``pad``; a new option becomes a new spec key) and
``__call__(self, images, generator)``, and registering it in :data:`AUGMENTATIONS`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class NoAugmentation:
    """The identity policy (``augmentation: none``)."""

    def __init__(self, *, allow_flip: bool = False, pad: int = 0) -> None:
        self.allow_flip = allow_flip  # options are accepted and unused

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images


class StandardAugmentation:
    """Random crop from a zero-padded image, plus a random horizontal flip where allowed."""

    def __init__(self, *, allow_flip: bool, pad: int = 4) -> None:
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"augmentation 'standard': 'pad' must be a non-negative integer, "
                             f"got {pad!r}")
        self.allow_flip = bool(allow_flip)
        self.pad = pad

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"augmentation 'standard': expected N × H × W × C images, "
                             f"got shape {tuple(images.shape)}")
        n, h, w, _ = images.shape
        p = self.pad
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        cols = torch.arange(w).expand(n, w)
        if self.allow_flip:
            flip = torch.rand(n, generator=generator) < 0.5
            cols = torch.where(flip[:, None], (w - 1) - cols, cols)
        rows = dy[:, None] + torch.arange(h)          # N × H, rows of the padded image
        cols = dx[:, None] + cols                     # N × W, columns of the padded image
        dev = images.device
        padded = torch.nn.functional.pad(images, (0, 0, p, p, p, p))  # zeros around H and W
        batch = torch.arange(n, device=dev)[:, None, None]
        return padded[batch, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]


#: name -> policy class; the names are the values of the spec key ``augmentation``.
AUGMENTATIONS: dict[str, Callable[..., Any]] = {
    "none": NoAugmentation,
    "standard": StandardAugmentation,
}


def build_augmentation(name: str, *, allow_flip: bool, pad: int = 4):
    """The policy registered under ``name``, configured with ``allow_flip`` and ``pad``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](allow_flip=allow_flip, pad=pad)
