"""The full MNIST from ``../shared/data`` through the project's real loader (issue #10, point 5).

The files are read twice: by ``rra.data`` (``prepare_dataset("mnist", ...)``, the ``Mnist``
loader, ``read_idx``) and by an independent parser here (gzip + the IDX header by hand), and both
must agree with each other and with the published facts of MNIST: 60,000 train / 10,000 test
images of 28 × 28 × 1 uint8, the per-digit counts of LeCun's sets, pixels in [0, 255] with the
customary mean 0.1307 / std 0.3081 (the constants ``normalise`` uses).

Where the data lives: ``$RRA_SHARED_DATA`` if set, else ``<repo>/../shared/data``; the tests skip
(naming the path) only when ``MNIST/raw`` is not there. Preparing the splits takes about a
second, so these tests are not marked slow.

The stratified 6,000-image training subset (600 per digit, seeded) of the later E1 end-to-end
test needs no new code; the tests below pin both existing ways to get it:

- as the analysed probe set: ``select_probe(train_dir, 600, seed, out)`` (in a config,
  ``probe: {split: train, n_per_class: 600, seed: 0}``): one ``PCG64(seed)``, class by class;
- as the training set: the training-spec key ``max_train_per_class: 600`` (in a config,
  ``training: {max_train_per_class: 600}``), i.e. ``rra.train.loop.stratified_subset(labels,
  600, seed)`` with the stream ``derive_seed(seed, 2)``.

The two draws are different subsets (different generators), each with 600 rows of every digit.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from rra.data import dataset_info, get_dataset, load_split, prepare_dataset, select_probe
from rra.data.mnist import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from rra.io import read_json, sha256_file

#: LeCun's MNIST: images per digit 0..9 [source: the MNIST files; checked against them here]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
#: the first ten labels of each file in the standard order
TRAIN_FIRST = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_FIRST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
FILES = {"train": "train", "test": "t10k"}


def shared_data_dir() -> Path:
    """``$RRA_SHARED_DATA``, else ``shared/data`` next to the repository's folder."""
    env = os.environ.get("RRA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    root = shared_data_dir()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"full MNIST not found at {root / 'MNIST' / 'raw'} (set RRA_SHARED_DATA to "
                    "the folder holding MNIST/raw)")
    return root


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist-full")
    prepare_dataset("mnist", out, data_dir=data_dir)
    return out


def parse_idx_gz(path: Path) -> np.ndarray:
    """An IDX file (gzipped) parsed without rra: big-endian magic, dims, then uint8 values."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic, = struct.unpack(">I", raw[:4])
    assert magic >> 8 == 0x08  # unsigned bytes
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    assert len(body) == int(np.prod(dims))
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def raw_path(data_dir: Path, split: str, kind: str) -> Path:
    stem = "images-idx3" if kind == "images" else "labels-idx1"
    return data_dir / "MNIST" / "raw" / f"{FILES[split]}-{stem}-ubyte.gz"


@pytest.mark.parametrize("split, n, counts, first", [
    ("train", 60_000, TRAIN_COUNTS, TRAIN_FIRST),
    ("test", 10_000, TEST_COUNTS, TEST_FIRST),
])
def test_full_mnist_counts_shapes_labels(prepared, data_dir, split, n, counts, first):
    assert sum(counts) == n
    info = dataset_info("mnist")
    s = load_split(prepared / split, verify=True)
    assert len(s) == n
    assert s.images.shape == (n, 28, 28, 1) and s.images.dtype == np.uint8
    assert s.labels.shape == (n,) and s.labels.dtype == np.int64
    assert info.image_shape == (28, 28, 1) and info.channels == 1
    assert np.bincount(s.labels, minlength=10).tolist() == counts
    assert s.manifest["class_counts"] == counts
    assert s.manifest["n"] == n and s.manifest["image_shape"] == [28, 28, 1]
    assert s.labels[:10].tolist() == first
    # Sources: the two gzipped IDX files of the split, hashed.
    sources = s.manifest["sources"]
    assert [Path(x["path"]).name for x in sources] == [raw_path(data_dir, split, k).name
                                                       for k in ("images", "labels")]
    assert all(x["sha256"] == sha256_file(x["path"]) for x in sources)
    # The independent parse gives the same arrays, in the same order.
    images = parse_idx_gz(raw_path(data_dir, split, "images"))
    labels = parse_idx_gz(raw_path(data_dir, split, "labels"))
    assert images.shape == (n, 28, 28) and labels.shape == (n,)
    np.testing.assert_array_equal(s.images[..., 0], images)
    np.testing.assert_array_equal(s.labels, labels)


@pytest.mark.parametrize("split", ["train", "test"])
def test_full_mnist_pixels(prepared, split):
    s = load_split(prepared / split)
    x = np.asarray(s.images).reshape(len(s), -1)
    assert x.min() == 0 and x.max() == 255
    per_image_max = x.max(axis=1)
    assert per_image_max.min() >= 254           # every digit reaches (nearly) full ink
    assert (x.min(axis=1) == 0).all()           # every image has black background
    assert (per_image_max == 255).mean() > 0.85
    # Mean and std of pixel/255, from exact integer sums, against normalise's constants
    # (computed on the training set; the test set is close to them).
    total, squares, count = x.sum(dtype=np.int64), (x.astype(np.int64) ** 2).sum(), x.size
    mean = total / count / 255
    std = np.sqrt(squares / count / 255**2 - mean**2)
    info = dataset_info("mnist")
    tol = 1e-4 if split == "train" else 3e-3
    assert mean == pytest.approx(info.mean[0], abs=tol)
    assert std == pytest.approx(info.std[0], abs=tol)


def test_full_mnist_low_level_loader(data_dir):
    """``read_idx`` and ``Mnist.read`` (what prepare_dataset streams) on the real files."""
    path = raw_path(data_dir, "test", "images")
    images = read_idx(path, IDX_IMAGES_MAGIC)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    labels = read_idx(raw_path(data_dir, "test", "labels"), IDX_LABELS_MAGIC)
    assert np.bincount(labels, minlength=10).tolist() == TEST_COUNTS
    n, batches = get_dataset("mnist", data_dir).read("train")
    batches = list(batches)
    assert n == 60_000 and sum(len(y) for _, y in batches) == n
    assert all(x.shape[1:] == (28, 28, 1) and x.dtype == np.uint8 for x, _ in batches)
    assert np.bincount(np.concatenate([y for _, y in batches]), minlength=10).tolist() \
        == TRAIN_COUNTS


def test_stratified_6000_subset_of_real_train(prepared, tmp_path):
    """600 training images per digit, seeded: the probe draw and the training subset."""
    from rra.train.loop import stratified_subset

    train_dir = prepared / "train"
    labels = load_split(train_dir).labels
    probe = select_probe(train_dir, 600, 0, tmp_path / "train-n600-s0.npy")
    assert probe.shape == (6000,) and np.unique(probe).size == 6000
    assert np.bincount(labels[probe], minlength=10).tolist() == [600] * 10
    assert read_json(tmp_path / "train-n600-s0.json")["counts"] == [600] * 10
    np.testing.assert_array_equal(select_probe(train_dir, 600, 0, tmp_path / "again.npy"), probe)
    assert not np.array_equal(select_probe(train_dir, 600, 1, tmp_path / "s1.npy"), probe)
    rows = stratified_subset(labels, 600, seed=0)  # what max_train_per_class: 600 trains on
    assert rows.shape == (6000,) and np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows], minlength=10).tolist() == [600] * 10
    np.testing.assert_array_equal(stratified_subset(labels, 600, seed=0), rows)
