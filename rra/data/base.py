"""What every dataset shares: its static description, the loader interface, normalisation.

A loader (a :class:`Dataset` subclass) reads one dataset in its standard on-disk format and
yields each split as batches of ``uint8`` images in N × H × W × C order with ``int64`` labels
in ``[0, num_classes)``. Writing the prepared arrays is :mod:`rra.data.prepare`'s job.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np

# One batch of a split: images (uint8, B × H × W × C) and labels (int64, B).
Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset (no file access).

    ``mean`` and ``std`` are per-channel statistics of the pixel values scaled to [0, 1], the
    customary constants of each dataset, used by :func:`normalise`.
    """

    name: str
    channels: int
    image_size: int  # H = W
    num_classes: int
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    allow_flip: bool  # horizontal flip is a label-preserving augmentation (False for digits)
    needs_data_dir: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.channels})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image as stored."""
        return (self.image_size, self.image_size, self.channels)


def normalise(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """uint8 N × H × W × C images -> float32 N × C × H × W network inputs.

    x[n, c, h, w] = (images[n, h, w, c] / 255 − mean[c]) / std[c], with the dataset's
    ``info.mean`` / ``info.std``. [ours: the customary per-dataset constants]
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"normalise: images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != info.channels:
        raise ValueError(f"normalise: images must be N × H × W × {info.channels} for "
                         f"{info.name}, got shape {images.shape}")
    mean = np.asarray(info.mean, dtype=np.float32)
    std = np.asarray(info.std, dtype=np.float32)
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def check_labels(labels: Any, num_classes: int, where: Path | str, n: int | None = None,
                 offset: int = 0) -> np.ndarray:
    """Labels as a 1-D int64 array in ``[0, num_classes)`` after subtracting ``offset``.

    ``where`` names the file in every error; ``n`` (if given) is the expected length.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{where}: {arr.shape[0]} labels for {n} images")
    arr = arr.astype(np.int64) - offset
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0] + offset
        raise ValueError(f"{where}: label {bad} out of range "
                         f"[{offset}, {num_classes + offset - 1}]")
    return arr


class Dataset(abc.ABC):
    """One dataset's loader. Subclasses set ``info`` (and ``defaults`` for their options).

    ``data_dir`` is the directory holding the dataset's files in their standard layout; it is
    ignored by datasets that do not need one (``mnist5k``). ``options`` must be keys of
    ``defaults``; anything else is an error naming the option.
    """

    info: ClassVar[DatasetInfo]
    defaults: ClassVar[Mapping[str, Any]] = {}
    layout: ClassVar[str] = ""  # the expected files, for error messages
    note: ClassVar[str] = ""  # recorded in every manifest (e.g. who made the split)
    #: rows per class of each split of the standard release (class order of ``info``); a split
    #: left out is known only from its files. Read through :meth:`expected_class_counts`.
    standard_class_counts: ClassVar[Mapping[str, tuple[int, ...]]] = {}

    def __init__(self, data_dir: str | Path | None = None, **options: Any) -> None:
        name = self.info.name
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)} "
                             f"(known options: {known})")
        self.options: dict[str, Any] = {**self.defaults, **options}
        self.check_options()
        self.data_dir: Path | None = None
        if self.info.needs_data_dir:
            if data_dir is None or str(data_dir) == "":
                raise FileNotFoundError(f"dataset {name!r} needs data_dir: a directory "
                                        f"holding {self.layout}")
            self.data_dir = Path(data_dir)
            if not self.data_dir.is_dir():
                raise FileNotFoundError(f"dataset {name!r}: data_dir {self.data_dir} does not "
                                        f"exist (expected it to hold {self.layout})")

    def check_options(self) -> None:
        """Validate ``self.options`` (subclasses with options override)."""

    @classmethod
    def expected_class_counts(cls, split: str,
                              options: Mapping[str, Any]) -> tuple[int, ...] | None:
        """Rows per class that ``split`` holds before its files are read, for the config check
        (:func:`rra.config.check_probe_sizes`): the standard release's counts, or None where
        only the files know. Subclasses whose splits depend on ``options`` override."""
        return cls.standard_class_counts.get(split)

    def check_split(self, split: str) -> None:
        if split not in self.info.splits:
            raise ValueError(f"dataset {self.info.name!r} has no split {split!r} "
                             f"(splits: {', '.join(self.info.splits)})")

    def find(self, *candidates: str) -> Path:
        """The first of ``candidates`` (paths relative to data_dir) that exists."""
        assert self.data_dir is not None
        paths = [self.data_dir / c for c in candidates]
        for path in paths:
            if path.is_file():
                return path
        tried = " or ".join(str(p) for p in paths)
        raise FileNotFoundError(f"dataset {self.info.name!r}: missing file {tried}")

    @abc.abstractmethod
    def source_files(self, split: str) -> list[Path]:
        """The files the split is read from; FileNotFoundError naming the first missing one."""

    @abc.abstractmethod
    def read(self, split: str) -> tuple[int, Iterator[Batch]]:
        """(number of images, iterator over batches) of one split, in the source's order."""
