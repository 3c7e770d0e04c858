"""rra.data: loaders round-trip fixtures in the real formats; artifacts, probe sets, errors."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import (py2_pickle, write_cifar10, write_cifar100, write_idx,
                           write_imagenet64, write_mnist)
from rra.data import (DATASETS, dataset_info, get_dataset, load_split, normalise,
                      prepare_dataset, select_probe)
from rra.data.cifar import RefusedGlobal, SafeUnpickler
from rra.data.mnist import mnist5k_path, stratified_split
from rra.io import read_json, sha256_array, sha256_artifact, sha256_file


def esc(path: Path | str) -> str:
    """A path as a literal inside a ``pytest.raises(match=...)`` pattern."""
    return re.escape(str(path))


def assert_prepared(out: Path, expected: dict[str, tuple[np.ndarray, np.ndarray]],
                    name: str) -> None:
    """Every split on disk equals the fixture's arrays, and its manifest describes them."""
    info = dataset_info(name)
    top = read_json(out / "manifest.json")
    assert top["dataset"] == name and sorted(top["splits"]) == sorted(info.splits)
    for split, (images, labels) in expected.items():
        s = load_split(out / split, verify=True)
        np.testing.assert_array_equal(s.images, images)
        np.testing.assert_array_equal(s.labels, labels)
        assert s.images.dtype == np.uint8 and s.labels.dtype == np.int64
        m = s.manifest
        assert m == top["splits"][split]
        assert (m["dataset"], m["split"], m["n"]) == (name, split, len(labels))
        assert m["image_shape"] == [info.image_size, info.image_size, info.channels]
        assert m["class_names"] == list(info.class_names)
        assert m["class_counts"] == np.bincount(labels, minlength=info.num_classes).tolist()
        assert m["images_sha256"] == sha256_file(out / split / "images.npy")
        assert m["labels_sha256"] == sha256_file(out / split / "labels.npy")
        for src in m["sources"]:
            assert src["sha256"] == sha256_file(src["path"])
        assert "versions" in m["provenance"]


# ------------------------------------------------------------------------------- registry

def test_registry_names_and_unknown():
    assert list(DATASETS) == ["mnist5k", "mnist", "cifar10", "cifar100", "imagenet64"]
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*mnist5k, mnist, cifar10"):
        dataset_info("svhn")
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare_dataset("svhn", "unused")


@pytest.mark.parametrize("name", list(DATASETS))
def test_info_consistent(name):
    info = dataset_info(name)
    assert info.name == name
    assert len(info.class_names) == len(set(info.class_names)) == info.num_classes
    assert len(info.mean) == len(info.std) == info.channels
    assert info.allow_flip == (name not in ("mnist", "mnist5k"))
    assert info.needs_data_dir == (name != "mnist5k")
    assert info.image_shape == (info.image_size, info.image_size, info.channels)


def test_info_values():
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("imagenet64").image_size == 64
    assert dataset_info("cifar10").class_names[0] == "airplane"
    assert dataset_info("cifar100").class_names[-1] == "worm"
    assert dataset_info("imagenet64").class_names[999] == "class_999"
    assert dataset_info("imagenet64").splits == ("train", "val")
    assert dataset_info("mnist5k").mean == (0.1307,)


# -------------------------------------------------------------------------------- mnist5k

@pytest.fixture(scope="module")
def mnist5k_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist5k")
    prepare_dataset("mnist5k", out)
    return out


def _mnist5k_table() -> np.ndarray:
    """The embedded CSV, parsed independently of rra (784 pixels then the label per line)."""
    with gzip.open(mnist5k_path(), "rt") as fh:
        lines = fh.read().splitlines()
    return np.array(",".join(lines).split(","), dtype=np.int64).reshape(len(lines), -1)


def test_mnist5k_split(mnist5k_dir):
    table = _mnist5k_table()
    assert table.shape == (5000, 785)
    assert np.bincount(table[:, -1]).tolist() == [500] * 10
    train, test = load_split(mnist5k_dir / "train"), load_split(mnist5k_dir / "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.manifest["class_counts"] == [400] * 10
    assert test.manifest["class_counts"] == [100] * 10
    assert train.manifest["options"] == {"test_per_class": 100, "seed": 0}
    assert "ours" in train.manifest["note"]
    rows_train, rows_test = stratified_split(table[:, -1], 100, 0, 10)
    assert np.intersect1d(rows_train, rows_test).size == 0
    assert np.union1d(rows_train, rows_test).tolist() == list(range(5000))
    for s, rows in ((train, rows_train), (test, rows_test)):
        np.testing.assert_array_equal(s.images.reshape(len(s), 784), table[rows, :-1])
        np.testing.assert_array_equal(s.labels, table[rows, -1])
    # Row-major pixels: file row 0 (a zero) has 51, 159, 253, 159, 50 at pixels 127..131,
    # i.e. image row 4, columns 15..19.
    assert table[0, 127:132].tolist() == [51, 159, 253, 159, 50]
    img0 = (train if 0 in rows_train else test)
    pos = int(np.flatnonzero((rows_train if 0 in rows_train else rows_test) == 0)[0])
    assert img0.images[pos, 4, 15:20, 0].tolist() == [51, 159, 253, 159, 50]


def test_stratified_split_deterministic_and_seeded():
    labels = np.repeat(np.arange(3), 5)
    a = stratified_split(labels, 2, seed=7, num_classes=3)
    b = stratified_split(labels, 2, seed=7, num_classes=3)
    c = stratified_split(labels, 2, seed=8, num_classes=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert np.bincount(labels[a[1]]).tolist() == [2, 2, 2]
    # Reference: the same generator drawing class by class.
    rng = np.random.Generator(np.random.PCG64(7))
    ref = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), 2, replace=False)
                                  for k in range(3)]))
    np.testing.assert_array_equal(a[1], ref)
    with pytest.raises(ValueError, match="class 0 has 5 images"):
        stratified_split(labels, 5, seed=0, num_classes=3)


def test_mnist5k_options(tmp_path, mnist5k_dir):
    m = prepare_dataset("mnist5k", tmp_path, test_per_class=50, seed=3)
    assert m["splits"]["test"]["class_counts"] == [50] * 10
    assert m["splits"]["train"]["class_counts"] == [450] * 10
    # Same options => identical arrays (byte for byte).
    again = prepare_dataset("mnist5k", tmp_path / "again", test_per_class=50, seed=3)
    for split in ("train", "test"):
        assert again["splits"][split]["images_sha256"] == m["splits"][split]["images_sha256"]
    default = read_json(mnist5k_dir / "test" / "manifest.json")
    assert default["labels_sha256"] != m["splits"]["test"]["labels_sha256"]


# ------------------------------------------------------------- val: held out from train

def test_val_carved_from_train_disjoint_stratified_seeded(tmp_path, mnist5k_dir):
    """val: 20 rows per class of the source train, seeded; they leave train (training never sees
    them), test is untouched, and the same seed gives the same rows."""
    m = prepare_dataset("mnist5k", tmp_path / "a", val_per_class=20, val_seed=3)
    full = load_split(mnist5k_dir / "train")  # the source train split (no carving)
    train, val = load_split(tmp_path / "a" / "train"), load_split(tmp_path / "a" / "val")
    assert (len(train), len(val)) == (3800, 200)
    assert val.manifest["class_counts"] == [20] * 10 and train.manifest["class_counts"] == [380] * 10
    train_rows = np.load(tmp_path / "a" / "train" / "source_rows.npy")
    val_rows = np.load(tmp_path / "a" / "val" / "source_rows.npy")
    assert np.intersect1d(train_rows, val_rows).size == 0                  # disjoint
    assert np.union1d(train_rows, val_rows).tolist() == list(range(4000))  # nothing lost
    assert np.all(np.diff(val_rows) > 0) and np.all(np.diff(train_rows) > 0)  # source order
    np.testing.assert_array_equal(val.images, full.images[val_rows])
    np.testing.assert_array_equal(val.labels, full.labels[val_rows])
    np.testing.assert_array_equal(train.images, full.images[train_rows])
    # the draw: stratified_split of the source train labels with the val seed
    np.testing.assert_array_equal(val_rows, stratified_split(full.labels, 20, 3, 10)[1])
    # test is the source's test split, byte for byte, and shares no image with val
    assert m["splits"]["test"]["images_sha256"] == read_json(mnist5k_dir / "test" / "manifest.json")["images_sha256"]
    test = load_split(tmp_path / "a" / "test")
    test_bytes = {img.tobytes() for img in np.asarray(test.images)}
    assert not any(img.tobytes() in test_bytes for img in np.asarray(val.images))
    # recorded in the manifests
    assert m["val"] == {"n_per_class": 20, "seed": 3, "carved_from": "train", "n": 200,
                        "source_rows_sha256": sha256_array(val_rows)}
    assert val.manifest["split"] == "val" and val.manifest["carved_from"] == "train"
    assert train.manifest["held_out_to"] == "val"
    assert val.manifest["source_rows_sha256"] == sha256_array(val_rows)
    # deterministic under the seed, and the seed matters
    again = prepare_dataset("mnist5k", tmp_path / "b", val_per_class=20, val_seed=3)
    assert again["splits"]["val"]["images_sha256"] == m["splits"]["val"]["images_sha256"]
    assert again["splits"]["train"]["images_sha256"] == m["splits"]["train"]["images_sha256"]
    other = prepare_dataset("mnist5k", tmp_path / "c", val_per_class=20, val_seed=4)
    assert other["val"]["source_rows_sha256"] != m["val"]["source_rows_sha256"]


def test_training_reads_train_without_val(tmp_path):
    """The training stage loads split train, which no longer holds the val rows."""
    from rra.train.loop import load_arrays

    prepare_dataset("mnist5k", tmp_path, test_per_class=400, val_per_class=30)
    train = load_arrays(tmp_path, "train", dataset_info("mnist5k"))
    val = load_split(tmp_path / "val")
    assert len(train) == 700
    train_bytes = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in train_bytes for img in np.asarray(val.images))


def test_val_off_removes_a_stale_val_split(tmp_path):
    prepare_dataset("mnist5k", tmp_path, test_per_class=400, val_per_class=10)
    assert (tmp_path / "val" / "manifest.json").is_file()
    m = prepare_dataset("mnist5k", tmp_path, test_per_class=400)
    assert m["val"] is None and sorted(m["splits"]) == ["test", "train"]
    assert m["splits"]["train"]["n"] == 1000
    assert not (tmp_path / "val" / "manifest.json").exists()
    assert not (tmp_path / "train" / "source_rows.npy").exists()


@pytest.mark.parametrize("name, kwargs, match", [
    ("mnist5k", {"test_per_class": 400, "val_per_class": 100},
     "mnist5k train: class 0 has 100 images: cannot hold out val.n_per_class = 100"),
    ("mnist5k", {"val_per_class": -1}, "val_per_class must be an integer >= 0"),
    ("imagenet64", {"val_per_class": 5}, "'imagenet64' has its own 'val' split"),
])
def test_val_errors(tmp_path, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_dataset(name, tmp_path, **kwargs)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("options, match", [
    ({"bogus": 1}, "unknown option.*bogus.*known options: seed, test_per_class"),
    ({"test_per_class": 0}, r"test_per_class must be in \[1, 499\].*got 0"),
    ({"test_per_class": 500}, r"test_per_class must be in \[1, 499\] \(each digit has 500 images"),
    ({"test_per_class": 1.5}, "test_per_class must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
])
def test_mnist5k_bad_options(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        prepare_dataset("mnist5k", tmp_path, **options)
    assert not (tmp_path / "manifest.json").exists()


def test_expected_class_counts_before_the_files_are_read(tmp_path):
    """What the config check sizes probes with: the standard releases, mnist5k from its
    options (equal to what preparing it counts), None where only the files know."""
    from rra.data import expected_class_counts

    assert expected_class_counts("mnist", "test")[5] == 892
    assert sum(expected_class_counts("mnist", "train")) == 60000
    assert expected_class_counts("cifar10", "train") == (5000,) * 10
    assert expected_class_counts("cifar100", "test") == (100,) * 100
    assert expected_class_counts("imagenet64", "val") == (50,) * 1000
    assert expected_class_counts("imagenet64", "train") is None
    assert expected_class_counts("mnist5k", "test") == (100,) * 10
    expected = {split: expected_class_counts("mnist5k", split, {"test_per_class": 30})
                for split in ("train", "test")}
    assert expected == {"train": (470,) * 10, "test": (30,) * 10}
    manifest = prepare_dataset("mnist5k", tmp_path, test_per_class=30)
    assert {s: tuple(m["class_counts"]) for s, m in manifest["splits"].items()} == expected


def test_unknown_option_other_dataset(tmp_path):
    with pytest.raises(ValueError, match="'cifar10': unknown option.*seed.*known options: none"):
        prepare_dataset("cifar10", tmp_path, data_dir=tmp_path, seed=0)


# ---------------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path, gz):
    expected = write_mnist(tmp_path / "src", gz=gz)
    prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    assert_prepared(tmp_path / "out", expected, "mnist")
    src = read_json(tmp_path / "out" / "test" / "manifest.json")["sources"]
    ext = ".gz" if gz else ""
    assert [Path(s["path"]).name for s in src] == [f"t10k-images-idx3-ubyte{ext}",
                                                   f"t10k-labels-idx1-ubyte{ext}"]


def test_idx_writer_layout(tmp_path):
    """The fixture writer itself, against hand-written bytes of LeCun's format."""
    path = write_idx(tmp_path / "x", np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])


def _raw(tmp_path: Path) -> Path:
    return tmp_path / "src" / "MNIST" / "raw"


def test_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="'mnist' needs data_dir"):
        prepare_dataset("mnist", tmp_path / "out")
    nowhere = esc(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"data_dir {nowhere} does not exist"):
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "nowhere")
    write_mnist(tmp_path / "src")
    (_raw(tmp_path) / "t10k-labels-idx1-ubyte").unlink()
    expected = esc(_raw(tmp_path) / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=f"'mnist': missing file {expected} or {expected}"
                                                r"\.gz"):
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    assert not (tmp_path / "out").exists()  # nothing written before every source is found


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-1], r"dims \(12, 28, 28\) must have 9424 bytes, found 9423"),
    (lambda b: b + b"\0", "must have 9424 bytes, found 9425"),
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: (2049).to_bytes(4, "big") + b[4:], "magic number 2049, expected 2051"),
], ids=["truncated", "trailing", "header", "magic"])
def test_mnist_corrupt_idx(tmp_path, damage, match):
    write_mnist(tmp_path / "src")
    path = _raw(tmp_path) / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as err:
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    assert str(path) in str(err.value)


def test_mnist_corrupt_gz_and_labels(tmp_path):
    write_mnist(tmp_path / "src", gz=True)
    path = _raw(tmp_path) / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=f"corrupt or truncated file {esc(path)}"):
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    write_mnist(tmp_path / "src", gz=True)
    labels = _raw(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.array([0, 1, 10] + [0] * 9))
    with pytest.raises(ValueError, match=f"{esc(labels)}: label 10 out of range"):
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    write_idx(labels, np.zeros(5))
    with pytest.raises(ValueError, match="5 labels for 12 images"):
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    write_idx(_raw(tmp_path) / "t10k-images-idx3-ubyte.gz", np.zeros((5, 27, 28)))
    with pytest.raises(ValueError, match="images are 27×28, expected 28×28"):
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")


@pytest.mark.parametrize("name, dims, payload, match", [
    ("t10k-images-idx3-ubyte", (0, 28, 28), b"", r"IDX header says 0 items \(dims \(0, 28, 28\)\)"),
    ("t10k-labels-idx1-ubyte", (0,), b"", r"IDX header says 0 items \(dims \(0,\)\)"),
    # 2^16 · 2^24 · 2^24 = 2^64 wraps to 0 in int64: the empty payload used to pass the size check
    ("t10k-images-idx3-ubyte", (1 << 16, 1 << 24, 1 << 24), b"",
     r"dims \(65536, 16777216, 16777216\) must have 18446744073709551632 bytes, found 16"),
    ("t10k-images-idx3-ubyte", (1 << 16, 1 << 24, (1 << 24) + 1), bytes(784),
     r"must have 18446745173221179408 bytes, found 800"),
], ids=["0-images", "0-labels", "int64-overflow", "overflow-and-payload"])
def test_mnist_idx_header_sizes(tmp_path, name, dims, payload, match):
    """An IDX header of 0 items, or of dims whose product overflows int64 or exceeds the file,
    is an error naming the file, before anything is written."""
    write_mnist(tmp_path / "src")
    path = _raw(tmp_path) / name
    magic = 2051 if len(dims) == 3 else 2049
    path.write_bytes(b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims)) + payload)
    with pytest.raises(ValueError, match=match) as err:
        prepare_dataset("mnist", tmp_path / "out", data_dir=tmp_path / "src")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---------------------------------------------------------------------------------- CIFAR

def _check_hand_made(images: np.ndarray, marks: dict[tuple[int, int], tuple[int, int, int]],
                     base: tuple[int, int, int]) -> None:
    """An image with constant planes ``base`` except at ``marks`` (row, col) -> RGB."""
    for (r, c), rgb in marks.items():
        assert images[r, c].tolist() == list(rgb)
    mask = np.ones(images.shape[:2], dtype=bool)
    for r, c in marks:
        mask[r, c] = False
    assert (images[mask] == np.array(base)).all()


CIFAR_MARKS = {(1, 2): (200, 20, 30), (3, 0): (10, 201, 30), (0, 31): (10, 20, 202)}


@pytest.mark.parametrize("style", ["py2", 2, 5])
def test_cifar10_roundtrip(tmp_path, style):
    expected = write_cifar10(tmp_path / "src", style=style)
    prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")
    assert_prepared(tmp_path / "out", expected, "cifar10")
    test = load_split(tmp_path / "out" / "test")
    _check_hand_made(test.images[0], CIFAR_MARKS, (10, 20, 30))
    # Brute-force CHW -> HWC on a random image: pixel (h, w, c) is row byte c·1024 + h·32 + w.
    obj = SafeUnpickler(open(tmp_path / "src/cifar-10-batches-py/test_batch", "rb"),
                        encoding="bytes").load()
    row = obj[b"data"][3]
    ref = np.array([[[row[c * 1024 + h * 32 + w] for c in range(3)] for w in range(32)]
                    for h in range(32)], dtype=np.uint8)
    np.testing.assert_array_equal(test.images[3], ref)
    assert len(load_split(tmp_path / "out" / "train")) == 20
    assert len(read_json(tmp_path / "out/train/manifest.json")["sources"]) == 6


@pytest.mark.parametrize("style", ["py2", 2])
def test_cifar100_roundtrip(tmp_path, style):
    expected = write_cifar100(tmp_path / "src", style=style)
    prepare_dataset("cifar100", tmp_path / "out", data_dir=tmp_path / "src")
    assert_prepared(tmp_path / "out", expected, "cifar100")
    test = load_split(tmp_path / "out" / "test")
    _check_hand_made(test.images[0], CIFAR_MARKS, (10, 20, 30))
    assert test.labels[0] == 99 and test.labels[-1] == 0


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="'cifar100' needs data_dir"):
        prepare_dataset("cifar100", tmp_path / "out")
    write_cifar10(tmp_path / "src")
    (tmp_path / "src/cifar-10-batches-py/data_batch_4").unlink()
    missing = esc(tmp_path / "src/cifar-10-batches-py/data_batch_4")
    with pytest.raises(FileNotFoundError, match=f"'cifar10': missing file {missing}$"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")


def test_cifar_corrupt_pickle(tmp_path):
    write_cifar10(tmp_path / "src")
    path = tmp_path / "src/cifar-10-batches-py/data_batch_2"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"corrupt or truncated pickle {esc(path)}"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=f"corrupt or truncated pickle {esc(path)}"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_cifar_malicious_pickle_refused(tmp_path):
    write_cifar10(tmp_path / "src")
    marker = tmp_path / "pwned"
    path = tmp_path / "src/cifar-10-batches-py/test_batch"
    with open(path, "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, fh, protocol=2)
    with pytest.raises(ValueError, match=f"{esc(path)}: refusing to load global "
                                         r"(posix|os|nt)\.mkdir"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")
    assert not marker.exists()
    # The classic payload and a disallowed codec are refused too.
    payload = b"cos\nsystem\n(S'true'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global os.system"):
        SafeUnpickler(io.BytesIO(payload), encoding="bytes").load()
    codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(RefusedGlobal, match="encoding 'rot13'"):
        SafeUnpickler(io.BytesIO(codec), encoding="bytes").load()


def test_cifar_bad_contents(tmp_path):
    write_cifar10(tmp_path / "src")
    root = tmp_path / "src/cifar-10-batches-py"
    (root / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 3000), np.uint8),
                                                  b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"test_batch: b'data' must be a uint8 array N × 3072"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")
    (root / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 3072), np.uint8),
                                                  b"labels": [0, 10]}))
    with pytest.raises(ValueError, match="test_batch: label 10 out of range"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")
    (root / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="test_batch: missing key b'labels'"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")
    (root / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"cat"] * 10}))
    with pytest.raises(ValueError, match="batches.meta: class names"):
        prepare_dataset("cifar10", tmp_path / "out", data_dir=tmp_path / "src")


# ----------------------------------------------------------------------------- ImageNet64

IMAGENET_MARKS = {(5, 7): (250, 2, 3), (63, 0): (1, 251, 3), (0, 63): (1, 2, 252)}


@pytest.mark.parametrize("flat", [False, True])
def test_imagenet64_roundtrip(tmp_path, flat):
    expected = write_imagenet64(tmp_path / "src", flat=flat)
    prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")
    assert_prepared(tmp_path / "out", expected, "imagenet64")
    val = load_split(tmp_path / "out" / "val")
    _check_hand_made(val.images[0], IMAGENET_MARKS, (1, 2, 3))
    assert val.labels[0] == 0  # file label 1
    train = load_split(tmp_path / "out" / "train")
    assert train.labels[0] == 999 and len(train) == 20  # file label 1000; 10 files × 2
    assert len(train.manifest["sources"]) == 10


def test_imagenet64_errors(tmp_path):
    write_imagenet64(tmp_path / "src")
    val = tmp_path / "src/Imagenet64_val_npz/val_data.npz"
    val.unlink()
    with pytest.raises(FileNotFoundError, match=f"'imagenet64': missing file {esc(val)} or "
                                                f"{esc(tmp_path / 'src' / 'val_data.npz')}"):
        prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")
    np.savez(val, data=np.zeros((2, 12287), np.uint8), labels=np.array([1, 2]))
    with pytest.raises(ValueError, match=rf"{esc(val)}: 'data' must be uint8 of shape "
                                         r"\(2, 12288\)"):
        prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")
    np.savez(val, data=np.zeros((2, 12288), np.uint8), labels=np.array([0, 2]))
    with pytest.raises(ValueError, match=rf"{esc(val)}: label 0 out of range \[1, 1000\]"):
        prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")
    np.savez(val, data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 1001]))
    with pytest.raises(ValueError, match=rf"{esc(val)}: label 1001 out of range"):
        prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")
    np.savez(val, data=np.zeros((2, 12288), np.uint8))
    with pytest.raises(ValueError, match=f"{esc(val)}: missing array 'labels'"):
        prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")
    val.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match=f"corrupt or truncated npz file {esc(val)}"):
        prepare_dataset("imagenet64", tmp_path / "out", data_dir=tmp_path / "src")


def test_imagenet64_streams_batches(tmp_path):
    """The train split arrives one file at a time (never concatenated by the loader)."""
    expected = write_imagenet64(tmp_path / "src", per_batch=3)
    n, batches = get_dataset("imagenet64", tmp_path / "src").read("train")
    assert n == 30
    batches = list(batches)
    assert [len(labels) for _, labels in batches] == [3] * 10
    images, labels = expected["train"]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)


# ------------------------------------------------------------------------ load_split checks

def test_load_split_detects_mismatch(tmp_path, mnist5k_dir):
    import shutil

    split = tmp_path / "test"
    shutil.copytree(mnist5k_dir / "test", split)
    assert load_split(split, verify=True).manifest["n"] == 1000
    images = np.load(split / "images.npy")
    images[0, 0, 0, 0] ^= 1
    np.save(split / "images.npy", images)
    load_split(split)  # shapes still agree
    with pytest.raises(ValueError, match="images.npy: SHA-256 differs"):
        load_split(split, verify=True)
    np.save(split / "labels.npy", np.zeros(999, np.int64))
    with pytest.raises(ValueError, match=r"labels.npy: int64 array of shape \(999,\), but the "
                                         r"manifest says int64 of shape \(1000,\)"):
        load_split(split)
    np.save(split / "labels.npy", np.zeros(1000, np.int32))
    with pytest.raises(ValueError, match="labels.npy: int32 array"):
        load_split(split)
    (split / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_split(split)


# ---------------------------------------------------------------------------- probe sets

def test_select_probe(tmp_path, mnist5k_dir):
    split_dir = mnist5k_dir / "test"
    out = tmp_path / "probe" / "test-n7-s5.npy"
    idx = select_probe(split_dir, 7, 5, out)
    labels = load_split(split_dir).labels
    assert idx.dtype == np.int64 and idx.shape == (70,)
    np.testing.assert_array_equal(np.load(out), idx)
    # Sorted by (label, index), 7 distinct rows per class.
    order = np.lexsort((idx, labels[idx]))
    np.testing.assert_array_equal(order, np.arange(70))
    assert np.unique(idx).size == 70
    assert np.bincount(labels[idx]).tolist() == [7] * 10
    # Reference draw: one PCG64(seed) generator, class by class.
    rng = np.random.Generator(np.random.PCG64(5))
    ref = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), 7, replace=False))
                          for c in range(10)])
    np.testing.assert_array_equal(idx, ref)
    # Determinism and seed dependence.
    again = select_probe(split_dir, 7, 5, tmp_path / "again.npy")
    np.testing.assert_array_equal(again, idx)
    assert (tmp_path / "again.npy").read_bytes() == out.read_bytes()
    assert not np.array_equal(select_probe(split_dir, 7, 6, tmp_path / "other.npy"), idx)
    side = json.loads(out.with_suffix(".json").read_text())
    assert (side["n_per_class"], side["seed"], side["split"], side["n"]) == (7, 5, "test", 70)
    assert side["counts"] == [7] * 10
    assert side["indices_sha256"] == sha256_array(idx)
    assert side["split_manifest_sha256"] == sha256_artifact(split_dir / "manifest.json")


def test_select_probe_errors(tmp_path, mnist5k_dir):
    split_dir = mnist5k_dir / "test"
    with pytest.raises(ValueError, match=r"class 0 \('0'\) has 100 rows, fewer than "
                                         r"n_per_class = 101"):
        select_probe(split_dir, 101, 0, tmp_path / "p.npy")
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="n_per_class must be an integer >= 1"):
            select_probe(split_dir, bad, 0, tmp_path / "p.npy")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        select_probe(split_dir, 2, -1, tmp_path / "p.npy")
    with pytest.raises(ValueError, match="must be a .npy file"):
        select_probe(split_dir, 2, 0, tmp_path / "p.json")
    assert not (tmp_path / "p.npy").exists()
    select_probe(split_dir, 100, 0, tmp_path / "all.npy")  # exactly the class size is fine


# ------------------------------------------------------------------------------ normalise

def test_normalise():
    info = dataset_info("cifar10")
    images = np.zeros((2, 2, 3, 3), dtype=np.uint8)
    images[1, 0, 2] = (255, 51, 0)
    x = normalise(images, info)
    assert x.dtype == np.float32 and x.shape == (2, 3, 2, 3)
    for c, v in enumerate((255, 51, 0)):
        want = (v / 255 - info.mean[c]) / info.std[c]
        assert x[1, c, 0, 2] == pytest.approx(want, rel=1e-6)
        assert x[0, c, 1, 1] == pytest.approx(-info.mean[c] / info.std[c], rel=1e-6)
    with pytest.raises(ValueError, match="must be uint8"):
        normalise(images.astype(np.float32), info)
    with pytest.raises(ValueError, match="N × H × W × 1 for mnist"):
        normalise(images, dataset_info("mnist"))
