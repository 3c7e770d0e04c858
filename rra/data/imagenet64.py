"""Downsampled ImageNet 64 × 64 (Chrabaszcz et al. 2017), npz batches, streamed.

Each file holds ``data`` (uint8 N × 12288: three 64 × 64 planes R, G, B, row-major) and
``labels`` (1 … 1000). [source: Chrabaszcz, Loshchilov, Hutter, arXiv:1707.08819]
We store labels 0-based (``label − 1``). The npz files carry no class names, so classes are
named ``class_000`` … ``class_999`` after the 0-based label. [ours]
The train split (1.28 M images, ~15.7 GB) is yielded one file at a time, never concatenated.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from .base import Batch, Dataset, DatasetInfo, check_labels

TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
VAL_FILES = ("val_data.npz",)
# Folders the archives unpack to; the files may also sit directly in data_dir.
FOLDERS = {"train": ("Imagenet64_train_npz", "Imagenet64_train_part1_npz",
                     "Imagenet64_train_part2_npz", "."),
           "val": ("Imagenet64_val_npz", ".")}


class Imagenet64(Dataset):
    """``data_dir/Imagenet64_train_npz/train_data_batch_{1..10}.npz`` and
    ``data_dir/Imagenet64_val_npz/val_data.npz`` (or those files directly in data_dir)."""

    info = DatasetInfo(
        name="imagenet64", channels=3, image_size=64, num_classes=1000,
        class_names=tuple(f"class_{i:03d}" for i in range(1000)), splits=("train", "val"),
        allow_flip=True, needs_data_dir=True,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )
    layout = ("Imagenet64_train_npz/train_data_batch_{1..10}.npz and "
              "Imagenet64_val_npz/val_data.npz (or those files directly in data_dir)")
    note = "imagenet64: labels stored 0-based (file label - 1); class names are placeholders"
    # val: 50 per class [source]; train: 732 to 1,300 per class, known from the files only
    standard_class_counts = {"val": (50,) * 1000}

    def source_files(self, split: str) -> list[Path]:
        self.check_split(split)
        names = TRAIN_FILES if split == "train" else VAL_FILES
        return [self.find(*(f"{folder}/{name}" for folder in FOLDERS[split])) for name in names]

    def _load(self, path: Path, key: str) -> np.ndarray:
        errors = (zipfile.BadZipFile, OSError, EOFError, ValueError)
        try:
            npz = np.load(path, allow_pickle=False)
        except errors as err:
            raise ValueError(f"corrupt or truncated npz file {path}: {err}") from err
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an npz archive (found a single {type(npz).__name__})")
        with npz:
            if key not in npz.files:
                raise ValueError(f"{path}: missing array {key!r} (arrays: {npz.files})")
            try:
                return npz[key]
            except errors as err:
                raise ValueError(f"corrupt or truncated npz file {path} ({key!r}): "
                                 f"{err}") from err

    def _labels(self, path: Path) -> np.ndarray:
        return check_labels(self._load(path, "labels"), self.info.num_classes, path, offset=1)

    def read_batch(self, path: Path) -> Batch:
        """One npz -> (uint8 N × 64 × 64 × 3 in HWC order, int64 labels 0-based)."""
        labels = self._labels(path)
        data = self._load(path, "data")
        size, c = self.info.image_size, self.info.channels
        if data.dtype != np.uint8 or data.shape != (labels.shape[0], c * size * size):
            raise ValueError(f"{path}: 'data' must be uint8 of shape "
                             f"({labels.shape[0]}, {c * size * size}), found {data.dtype} "
                             f"{data.shape}")
        return data.reshape(-1, c, size, size).transpose(0, 2, 3, 1), labels

    def read(self, split: str) -> tuple[int, Iterator[Batch]]:
        paths = self.source_files(split)
        n = sum(self._labels(p).shape[0] for p in paths)

        def batches() -> Iterator[Batch]:
            for path in tqdm(paths, desc=f"imagenet64 {split}", unit="file", disable=None):
                yield self.read_batch(path)

        return n, batches()
