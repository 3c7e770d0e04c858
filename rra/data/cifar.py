"""CIFAR-10 and CIFAR-100, "python version" pickles, read through a restricted unpickler.

The official files are Python 2 pickles of dicts with byte-string keys; ``b'data'`` is a
uint8 array N × 3072 holding each image as three 32 × 32 planes (R, G, B), row-major;
labels are lists of ints. [source: Krizhevsky, CIFAR page]

Why a restricted unpickler: unpickling runs whatever callables the file names, so a
doctored file in a user's data directory could execute code. :class:`SafeUnpickler` resolves
only the few globals an array pickle needs (numpy's array reconstructors, ``ndarray``,
``dtype``, and ``_codecs.encode`` for latin-1 byte strings in protocol-2 pickles written by
Python 3) and refuses every other global, so loading can only build containers, numbers,
strings and numpy arrays. [ours]
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from .base import Batch, Dataset, DatasetInfo, check_labels

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed set."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` limited to what pickle uses it for: str -> bytes in latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedGlobal(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> object. numpy.core is numpy 1.x's (and the CIFAR files') module name.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only :data:`_ALLOWED`; all else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refusing to load global {module}.{name}") from None


def load_pickle(path: Path) -> dict[bytes, Any]:
    """Load one CIFAR pickle (``encoding='bytes'``, as the Python 2 originals need) safely."""
    try:
        with open(path, "rb") as fh:
            obj = SafeUnpickler(fh, encoding="bytes").load()
    except RefusedGlobal as err:
        raise ValueError(f"{path}: {err}: only numpy arrays, containers, numbers and "
                         "strings may appear in a CIFAR pickle") from err
    except Exception as err:  # corrupt pickles raise many types (EOFError, KeyError, ...)
        raise ValueError(f"corrupt or truncated pickle {path}: "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _entry(obj: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in obj:
        keys = ", ".join(repr(k) for k in obj)
        raise ValueError(f"{path}: missing key {key!r} (keys: {keys})")
    return obj[key]


class _Cifar(Dataset):
    """Shared reader; subclasses name the folder, files and label keys."""

    folder: ClassVar[str]
    split_files: ClassVar[dict[str, tuple[str, ...]]]
    meta_file: ClassVar[str]
    label_key: ClassVar[bytes]
    names_key: ClassVar[bytes]

    def _path(self, name: str) -> Path:
        return self.find(f"{self.folder}/{name}")

    def source_files(self, split: str) -> list[Path]:
        self.check_split(split)
        return [self._path(f) for f in (*self.split_files[split], self.meta_file)]

    def check_meta(self) -> None:
        """The meta file's class names must be the registry's (they fix the label order)."""
        path = self._path(self.meta_file)
        names = _entry(load_pickle(path), self.names_key, path)
        try:
            names = tuple(n.decode("ascii") if isinstance(n, bytes) else str(n) for n in names)
        except (TypeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: unreadable {self.names_key!r}: {err}") from err
        if names != self.info.class_names:
            raise ValueError(f"{path}: class names {names[:5]}... differ from "
                             f"{self.info.name}'s {self.info.class_names[:5]}...")

    def read_batch(self, path: Path) -> Batch:
        """One pickle -> (uint8 N × 32 × 32 × 3 in HWC order, int64 labels)."""
        obj = load_pickle(path)
        data = _entry(obj, b"data", path)
        size, c = self.info.image_size, self.info.channels
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != c * size * size:
            desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                    else type(data).__name__)
            raise ValueError(f"{path}: b'data' must be a uint8 array N × {c * size * size}, "
                             f"found {desc}")
        labels = check_labels(_entry(obj, self.label_key, path), self.info.num_classes, path,
                              n=data.shape[0])
        images = data.reshape(-1, c, size, size).transpose(0, 2, 3, 1)  # CHW planes -> HWC
        return images, labels

    def read(self, split: str) -> tuple[int, Iterator[Batch]]:
        self.source_files(split)
        self.check_meta()
        batches = [self.read_batch(self._path(f)) for f in self.split_files[split]]
        n = sum(labels.shape[0] for _, labels in batches)
        return n, iter(batches)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


class Cifar10(_Cifar):
    """CIFAR-10: ``data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``."""

    info = DatasetInfo(
        name="cifar10", channels=3, image_size=32, num_classes=10, class_names=CIFAR10_CLASSES,
        splits=("train", "test"), allow_flip=True, needs_data_dir=True,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    )
    folder = "cifar-10-batches-py"
    split_files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                   "test": ("test_batch",)}
    meta_file = "batches.meta"
    label_key = b"labels"
    names_key = b"label_names"
    layout = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"
    standard_class_counts = {"train": (5000,) * 10, "test": (1000,) * 10}  # [source]


class Cifar100(_Cifar):
    """CIFAR-100 (fine labels): ``data_dir/cifar-100-python/{train, test, meta}``."""

    info = DatasetInfo(
        name="cifar100", channels=3, image_size=32, num_classes=100,
        class_names=CIFAR100_CLASSES, splits=("train", "test"), allow_flip=True,
        needs_data_dir=True, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    )
    folder = "cifar-100-python"
    split_files = {"train": ("train",), "test": ("test",)}
    meta_file = "meta"
    label_key = b"fine_labels"
    names_key = b"fine_label_names"
    layout = "cifar-100-python/{train,test,meta}"
    standard_class_counts = {"train": (500,) * 100, "test": (100,) * 100}  # [source]
