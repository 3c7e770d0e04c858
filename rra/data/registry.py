"""Dataset registry: name -> loader class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Dataset, DatasetInfo
from .cifar import Cifar10, Cifar100
from .imagenet64 import Imagenet64
from .mnist import Mnist, Mnist5k

DATASETS: dict[str, type[Dataset]] = {
    "mnist5k": Mnist5k,
    "mnist": Mnist,
    "cifar10": Cifar10,
    "cifar100": Cifar100,
    "imagenet64": Imagenet64,
}


def _dataset_class(name: str) -> type[Dataset]:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def dataset_info(name: str) -> DatasetInfo:
    """The static description of dataset ``name`` (no file access)."""
    return _dataset_class(name).info


def expected_class_counts(name: str, split: str,
                          options: dict[str, Any] | None = None) -> tuple[int, ...] | None:
    """Rows per class of ``split`` of dataset ``name`` as known without reading its files (the
    standard release, or what the options imply), None where only the files know."""
    return _dataset_class(name).expected_class_counts(split, dict(options or {}))


def get_dataset(name: str, data_dir: str | Path | None = None, **options: Any) -> Dataset:
    """A loader for ``name`` reading ``data_dir`` with ``options`` (validated)."""
    return _dataset_class(name)(data_dir, **options)
