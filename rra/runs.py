"""The names of the study's folders: runs, probe sets, kNN settings and pooled scales. [ours]

One grammar, used by the config (``rra.config``), the workflow's wildcards
(``rules/common.smk``) and the report's readers (``rra.report.frames``):

- a run ``{model}-{attention}-{augmentation}-s{seed}`` (e.g. ``resnet20-stac-auto-standard-s0``):
  :class:`Run`, :data:`RUN_FORMAT`;
- a probe set ``{split}-n{n_per_class}-s{seed}`` or ``{split}-all-s{seed}`` (e.g.
  ``test-n12-s0``, ``val-all-s0``): :class:`Probe`;
- a kNN setting ``{distance}-{backend}`` (e.g. ``euclidean-auto``, ``cosine-exact``), an Annoy
  entry with its own options ``annoy-t{n_trees}-s{search_k}`` (``d``: the knn.annoy default,
  e.g. ``euclidean-annoy-t10-sauto``, ``euclidean-annoy-td-s-1``): :class:`KnnSetting`;
- a pooled scale: a positive integer or ``full`` (:func:`scale_order`).

The pieces (:data:`MODEL`, :data:`PROBE`, ...) are regular expressions without groups, so
Snakemake can use them as wildcard constraints; :data:`WILDCARDS` names them by wildcard.
Nothing here imports beyond the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DATASET = r"[a-z0-9]+"
MODEL = r"[a-z][a-z0-9]*"
ATTENTION = r"[a-z]+(?:-auto)?"  # stac-auto: a workflow variant of stac (rra.config)
AUGMENTATION = r"[a-z]+"
SEED = r"\d+"
SPLIT = r"[a-z]+"
PROBE = rf"{SPLIT}-(?:n\d+|all)-s{SEED}"
DISTANCE = r"euclidean|cosine"
#: an Annoy entry's own options in its name ("d": the knn.annoy default)
_ANNOY_OPTIONS = r"-t(?P<n_trees>\d+|d)-s(?P<search_k>auto|-?\d+|d)"
BACKEND = rf"auto|exact|annoy(?:{re.sub(r'[(][?]P<[a-z_]+>', '(?:', _ANNOY_OPTIONS)})?"

#: wildcard → constraint of the workflow's path patterns (rules/common.smk)
WILDCARDS = {"dataset": DATASET, "model": MODEL, "attention": ATTENTION,
             "augmentation": AUGMENTATION, "seed": SEED, "probe": PROBE, "distance": DISTANCE,
             "backend": BACKEND}

#: a run's folder name, also the workflow's path pattern of it (its fields are the wildcards)
RUN_FORMAT = "{model}-{attention}-{augmentation}-s{seed}"

_RUN = re.compile(rf"(?P<model>{MODEL})-(?P<attention>{ATTENTION})-"
                  rf"(?P<augmentation>{AUGMENTATION})-s(?P<seed>{SEED})")
_PROBE = re.compile(rf"(?P<split>{SPLIT})-(?:n(?P<n>\d+)|all)-s(?P<seed>{SEED})")
_KNN = re.compile(rf"(?P<distance>{DISTANCE})-"
                  rf"(?:(?P<backend>auto|exact)|(?P<annoy>annoy)(?:{_ANNOY_OPTIONS})?)")
_ANNOY = re.compile(rf"annoy{_ANNOY_OPTIONS}")


@dataclass(frozen=True, order=True)
class Run:
    """One trained model of the grid; its name is the results folder."""

    model: str
    attention: str
    augmentation: str
    seed: int

    @property
    def name(self) -> str:
        return RUN_FORMAT.format(model=self.model, attention=self.attention,
                                 augmentation=self.augmentation, seed=self.seed)

    @property
    def variant(self) -> tuple[str, str, str]:
        """(model, attention, augmentation): the run without its seed."""
        return self.model, self.attention, self.augmentation

    @classmethod
    def parse(cls, name: str) -> Run:
        """The run of a folder name; a ValueError if ``name`` is not one."""
        run = parse_run(name)
        if run is None:
            raise ValueError(f"run name {name!r} is not '{RUN_FORMAT}'")
        return run


def parse_run(name: str) -> Run | None:
    """The :class:`Run` of a folder name, or None (``stac_scales``, ``data``, ...)."""
    m = _RUN.fullmatch(name)
    if m is None:
        return None
    return Run(m["model"], m["attention"], m["augmentation"], int(m["seed"]))


def _match(pattern: re.Pattern[str], name: str, what: str, form: str) -> re.Match[str]:
    """``pattern``'s match of the whole ``name``; a ValueError ``{what} {name!r} is not of the
    form {form}`` when it does not match."""
    m = pattern.fullmatch(name)
    if m is None:
        raise ValueError(f"{what} {name!r} is not of the form {form}")
    return m


@dataclass(frozen=True)
class Probe:
    """A probe set: ``n_per_class`` rows of each class of ``split`` (or ``all``), drawn with
    ``seed``."""

    split: str
    n_per_class: int | str
    seed: int

    @property
    def name(self) -> str:
        n = "all" if self.n_per_class == "all" else f"n{self.n_per_class}"
        return f"{self.split}-{n}-s{self.seed}"

    @classmethod
    def parse(cls, name: str) -> Probe:
        m = _match(_PROBE, name, "probe name", "split-nN-sS or split-all-sS")
        return cls(m["split"], "all" if m["n"] is None else int(m["n"]), int(m["seed"]))


@dataclass(frozen=True)
class KnnSetting:
    """A kNN setting: the distance, the backend and an Annoy entry's own options (``d``: the
    knn.annoy default; None: not given)."""

    distance: str
    backend: str
    n_trees: str | None = None
    search_k: str | None = None

    @property
    def setting(self) -> str:
        """The backend part of the name (``auto``, ``annoy-t10-sauto``): the report's
        ``backend`` column."""
        if self.n_trees is None and self.search_k is None:
            return self.backend
        return f"{self.backend}-t{self.n_trees or 'd'}-s{self.search_k or 'd'}"

    @property
    def name(self) -> str:
        return f"{self.distance}-{self.setting}"

    @classmethod
    def of(cls, distance: str, backend: dict[str, Any] | str) -> KnnSetting:
        """The setting of a config entry: a backend name, or a ``{backend, n_trees, search_k}``
        block (only an Annoy block's own options enter the name)."""
        if isinstance(backend, str):
            return cls(distance, backend)
        name = backend["backend"]
        if name == "annoy" and ("n_trees" in backend or "search_k" in backend):
            return cls(distance, name, str(backend.get("n_trees", "d")),
                       str(backend.get("search_k", "d")))
        return cls(distance, name)

    @classmethod
    def parse(cls, name: str) -> KnnSetting:
        m = _match(_KNN, name, "kNN setting",
                   "distance-backend (backend: auto, exact, annoy or annoy-tN-sK)")
        return cls(m["distance"], m["backend"] or m["annoy"], m["n_trees"], m["search_k"])


def scale_order(scales: Iterable[Any]) -> list[str]:
    """Pooled scales as strings, numeric ones ascending, then ``full`` (and any other name)."""
    names = sorted({str(s) for s in scales if s is not None})
    numeric = sorted((s for s in names if s.isdigit()), key=int)
    return numeric + [s for s in names if not s.isdigit()]


def probe_order_key(name: str) -> tuple:
    """Probes by split, then n per class (``all`` last), then seed; other names after them."""
    m = _PROBE.fullmatch(name)
    if m is None:
        return (1, name, 0, 0)
    return (0, m["split"], int(m["n"]) if m["n"] else float("inf"), int(m["seed"]))


def backend_order_key(setting: str) -> tuple:
    """Backend settings: ``exact``, ``auto``, ``annoy``, then ``annoy-t…-s…`` by n_trees."""
    m = _ANNOY.fullmatch(setting)
    rank = {"exact": 0, "auto": 1, "annoy": 2}.get(setting, 3 if m else 4)
    trees = int(m["n_trees"]) if m and m["n_trees"].isdigit() else -1
    return (rank, trees, m["search_k"] if m else "", setting)
