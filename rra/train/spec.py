"""The training spec: required keys, defaults, validation, learning-rate schedule, derived seeds.

A spec is a flat dict (what ``rra.config.train_spec`` builds from the study config). It is
validated once, defaults are filled in, and the result is JSON-normalised, so the spec stored in
a checkpoint compares equal to the spec of a rerun exactly when the training would be the same.

Required keys: ``dataset, model, seed, epochs, batch_size, lr``. Optional keys and defaults are
in :data:`SPEC_DEFAULTS`; any other key is an error (a typo must not silently change nothing).
``keep_epochs`` (optional, no default): epochs whose weights the run keeps in
``epochs/epoch-NNN.pt`` (0 = the initialisation) for the representation dynamics (E10); it
changes no weight. Stored as the sorted distinct epochs below ``epochs`` (the final epoch is
``model.pt``) and left out when that is empty, so a spec without kept epochs is unchanged.

Learning-rate schedule [ours: the common CIFAR recipe; methods.md §5 names only "cosine or
step"], a factor of ``lr`` per epoch, constant within an epoch. With t = e − 1 completed epochs
before epoch e (1-based) and E = ``epochs``:

- ``cosine``: factor(t) = ½ (1 + cos(π t / E))   (= ``CosineAnnealingLR(T_max=E, eta_min=0)``
  stepped once per epoch);
- ``step``: factor(t) = γ^|{m ∈ milestones : m ≤ t}|   (= ``MultiStepLR(milestones, γ)``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

REQUIRED_KEYS: tuple[str, ...] = ("dataset", "model", "seed", "epochs", "batch_size", "lr")

#: optional spec keys and their defaults (the ``training`` block of config/schema.yaml plus the
#: run's model, attention and augmentation). ``milestones``/``gamma`` are used by ``schedule:
#: step`` only (no milestones = constant rate); ``pad`` by ``augmentation: standard``;
#: ``max_train_per_class`` keeps a seeded, stratified subset of the train split (tiny configs);
#: ``eval_split: null`` means ``test`` if the dataset has one, else ``val`` (imagenet64).
SPEC_DEFAULTS: dict[str, Any] = {
    "model_kwargs": {},
    "attention": "none",
    "attention_kwargs": {},
    "augmentation": "none",
    "pad": 4,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "nesterov": False,
    "schedule": "cosine",
    "milestones": [],
    "gamma": 0.1,
    "eval_batch_size": 1000,
    "max_train_per_class": None,
    "train_split": "train",
    "eval_split": None,
}

SCHEDULES: tuple[str, ...] = ("cosine", "step")

# Streams of derive_seed(seed, stream, ...): independent random streams from one spec seed.
STREAM_EPOCH_DATA = 0    # shuffle + augmentation of one epoch
STREAM_EPOCH_TORCH = 1   # torch's global RNG during one epoch (dropout and the like)
STREAM_SUBSET = 2        # max_train_per_class subset


def _err(key: str, msg: str) -> ValueError:
    return ValueError(f"training spec key {key!r}: {msg}")


def _int(spec: dict, key: str, minimum: int) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _err(key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _err(key, f"must be at least {minimum}, got {value}")
    return int(value)


def _float(spec: dict, key: str, low: float, high: float, low_open: bool = False,
           high_open: bool = False) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _err(key, f"expected a number, got {value!r}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    bad_high = value >= high if high_open else value > high
    if not math.isfinite(value) or bad_low or bad_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise _err(key, f"must lie in {lo}{low}, {high}{hi}, got {value}")
    return value


def _dict(spec: dict, key: str) -> dict:
    value = spec[key]
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(key, f"expected a dict of keyword arguments, got {value!r}")
    return dict(value)


def _str(spec: dict, key: str) -> str:
    value = spec[key]
    if not isinstance(value, str) or not value:
        raise _err(key, f"expected a non-empty string, got {value!r}")
    return value


def validate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Check a training spec, fill in defaults and return a JSON-normalised copy.

    Raises ``ValueError`` naming the key for a missing required key, an unknown key, a wrong
    type or an out-of-range value. Registry names (model, attention, augmentation) are checked
    where they are used (``build_model``, :func:`rra.train.augment.build_augmentation`).
    """
    full = _with_defaults(spec)
    out = _typed_values(full)
    _check_choices(full, out)
    out["milestones"] = _milestones(full["milestones"])
    cap = full["max_train_per_class"]
    out["max_train_per_class"] = None if cap is None else _int(full, "max_train_per_class", 1)
    keep = _keep_epochs(full.get("keep_epochs"), out["epochs"])
    if keep:
        out["keep_epochs"] = keep
    try:
        return json.loads(json.dumps(out, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"training spec must hold JSON values only (kwargs included): "
                         f"{err}") from err


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every optional key's default, after checking it is a dict with every
    required key and no unknown one."""
    if not isinstance(spec, dict):
        raise ValueError(f"training spec must be a dict, got {type(spec).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f"training spec is missing required key(s) {missing}; "
                         f"required: {list(REQUIRED_KEYS)}")
    unknown = sorted(set(spec) - set(REQUIRED_KEYS) - set(SPEC_DEFAULTS) - {"keep_epochs"})
    if unknown:
        raise ValueError(f"training spec has unknown key(s) {unknown}; known: "
                         f"{sorted(REQUIRED_KEYS + tuple(SPEC_DEFAULTS) + ('keep_epochs',))}")
    return {**SPEC_DEFAULTS, **spec}


def _typed_values(full: dict[str, Any]) -> dict[str, Any]:
    """The keys of one type and range each, checked and converted (the others: the caller)."""
    return {
        "dataset": _str(full, "dataset"),
        "model": _str(full, "model"),
        "model_kwargs": _dict(full, "model_kwargs"),
        "attention": _str(full, "attention"),
        "attention_kwargs": _dict(full, "attention_kwargs"),
        "augmentation": _str(full, "augmentation"),
        "seed": _int(full, "seed", 0),
        "epochs": _int(full, "epochs", 1),
        "batch_size": _int(full, "batch_size", 1),
        "lr": _float(full, "lr", 0.0, math.inf, low_open=True, high_open=True),
        "momentum": _float(full, "momentum", 0.0, 1.0, high_open=True),
        "weight_decay": _float(full, "weight_decay", 0.0, math.inf, high_open=True),
        "schedule": _str(full, "schedule"),
        "gamma": _float(full, "gamma", 0.0, math.inf, low_open=True, high_open=True),
        "eval_batch_size": _int(full, "eval_batch_size", 1),
        "pad": _int(full, "pad", 0),
        "train_split": _str(full, "train_split"),
        "eval_split": None if full["eval_split"] is None else _str(full, "eval_split"),
    }


def _check_choices(full: dict[str, Any], out: dict[str, Any]) -> None:
    """``nesterov`` (a bool, only with momentum; added to ``out``), and the augmentation and
    schedule among the known names."""
    from rra.train.augment import AUGMENTATIONS

    if not isinstance(full["nesterov"], bool):
        raise _err("nesterov", f"expected true or false, got {full['nesterov']!r}")
    out["nesterov"] = full["nesterov"]
    if out["nesterov"] and out["momentum"] == 0.0:
        raise _err("nesterov", "Nesterov momentum needs momentum > 0")
    if out["augmentation"] not in AUGMENTATIONS:
        raise _err("augmentation", f"unknown augmentation {out['augmentation']!r}; "
                                   f"known: {sorted(AUGMENTATIONS)}")
    if out["schedule"] not in SCHEDULES:
        raise _err("schedule", f"unknown schedule {out['schedule']!r}; known: {list(SCHEDULES)}")


def _milestones(milestones: Any) -> list[int]:
    """``milestones`` as strictly increasing positive epochs (``None``: none)."""
    if milestones is None:
        milestones = []
    if (not isinstance(milestones, (list, tuple))
            or any(isinstance(m, bool) or not isinstance(m, (int, np.integer))
                   for m in milestones)):
        raise _err("milestones", f"expected a list of epoch numbers, got {milestones!r}")
    milestones = [int(m) for m in milestones]
    if any(m < 1 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise _err("milestones", f"must be strictly increasing positive epochs, got {milestones}")
    return milestones


def _keep_epochs(epochs: Any, total: int) -> list[int]:
    """``keep_epochs`` as sorted distinct epochs in [0, total), the final epoch dropped (it is
    ``model.pt``); ``None``: none."""
    if epochs is None:
        return []
    if (not isinstance(epochs, (list, tuple))
            or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) for e in epochs)):
        raise _err("keep_epochs", f"expected a list of epoch numbers, got {epochs!r}")
    bad = [int(e) for e in epochs if not 0 <= e <= total]
    if bad:
        raise _err("keep_epochs", f"epochs must lie in [0, {total}] (0: the initialisation; "
                                  f"{total}: the final model), got {bad}")
    return sorted({int(e) for e in epochs if e < total})


def lr_factor(spec: dict[str, Any], completed_epochs: int) -> float:
    """Multiplier of ``spec['lr']`` for the epoch after ``completed_epochs`` epochs (module doc)."""
    t = int(completed_epochs)
    if spec["schedule"] == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / spec["epochs"]))
    if spec["schedule"] == "step":
        return float(spec["gamma"]) ** sum(1 for m in spec["milestones"] if m <= t)
    raise _err("schedule", f"unknown schedule {spec['schedule']!r}; known: {list(SCHEDULES)}")


def derive_seed(seed: int, stream: int, *more: int) -> int:
    """A 63-bit seed for one random stream, mixed from ``(seed, stream, *more)`` [ours].

    ``numpy.random.SeedSequence`` hashes the tuple, so neighbouring seeds or epochs give
    unrelated streams, and the value depends on nothing but its arguments.
    """
    entropy = [int(seed), int(stream), *map(int, more)]
    words = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)
