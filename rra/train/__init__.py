"""Training stage (docs/design.md "rra.train", methods.md §5).

- :func:`train` — ``train(spec, data_dir, out_dir, device="auto", progress=True)``: seeded,
  resumable SGD training of one run; writes ``checkpoints/``, ``train_log.json``, ``model.pt``,
  ``metrics.json`` (:mod:`rra.train.loop`).
- :func:`load_trained` — rebuild the trained network of a run directory, in eval mode;
  :func:`checkpoint_sha256` — the hash of its ``model.pt`` (:mod:`rra.train.checkpoint`).
- :data:`AUGMENTATIONS` / :func:`build_augmentation` — augmentation policies by name
  (:mod:`rra.train.augment`); :func:`validate_spec`, :data:`SPEC_DEFAULTS`, :func:`lr_factor`
  (:mod:`rra.train.spec`); :func:`relative_weight_change` (:mod:`rra.train.weight_change`).

Names are imported on first use, so ``import rra.train`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "rra.train.loop",
    "load_trained": "rra.train.checkpoint",
    "checkpoint_sha256": "rra.train.checkpoint",
    "AUGMENTATIONS": "rra.train.augment",
    "build_augmentation": "rra.train.augment",
    "validate_spec": "rra.train.spec",
    "SPEC_DEFAULTS": "rra.train.spec",
    "REQUIRED_KEYS": "rra.train.spec",
    "lr_factor": "rra.train.spec",
    "relative_weight_change": "rra.train.weight_change",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rra.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
