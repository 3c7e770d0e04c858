"""Tiny datasets written in each real on-disk format, with known pixels and labels.

Every writer returns the arrays a correct loader must produce: ``{split: (images uint8
N × H × W × C, labels int64 N)}``. Pixel values are seeded random except for hand-made images
(first image of the test/val split) whose planes are constant with a few marked pixels, so a
test can check the CHW -> HWC conversion against hand-written values:

- CIFAR: R plane 10, G plane 20, B plane 30; R[1, 2] = 200, G[3, 0] = 201, B[0, 31] = 202.
- ImageNet64: R 1, G 2, B 3; R[5, 7] = 250, G[63, 0] = 251, B[0, 63] = 252.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from rra.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]

CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


# ---------------------------------------------------------------------------------------- IDX

def write_idx(path: Path, array: np.ndarray) -> Path:
    """IDX file of unsigned bytes: magic 0x0000_08_<ndim>, big-endian uint32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:
        path.write_bytes(raw)
    return path


def write_mnist(data_dir: Path, n_train: int = 30, n_test: int = 12, gz: bool = False) -> Arrays:
    """torchvision layout: data_dir/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    rng = np.random.default_rng(1)
    out: Arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.int64) % 10
        ext = ".gz" if gz else ""
        write_idx(data_dir / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(data_dir / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[split] = (images[..., None], labels)
    return out


# ----------------------------------------------------------------------------- CIFAR pickles

def py2_pickle(obj: object) -> bytes:
    """Pickle ``obj`` as Python 2's cPickle (protocol 2) did for the CIFAR files.

    Byte strings are Python 2 ``str`` (SHORT_BINSTRING/BINSTRING, read back as ``bytes`` with
    ``encoding='bytes'``) and arrays go through ``numpy.core.multiarray._reconstruct`` with
    the numpy 1.x dtype state. Supports dict, list, int, bytes and uint8 arrays.
    """
    out = bytearray(b"\x80\x02")

    def put_int(v: int) -> None:
        if 0 <= v < 256:
            out.extend(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            out.extend(b"M" + struct.pack("<H", v))
        else:
            out.extend(b"J" + struct.pack("<i", v))

    def put_str(b: bytes) -> None:
        if len(b) < 256:
            out.extend(b"U" + bytes([len(b)]) + b)
        else:
            out.extend(b"T" + struct.pack("<i", len(b)) + b)

    def put(o: object) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                put(v)
            out.extend(b"e")
        elif isinstance(o, bytes):
            put_str(o)
        elif isinstance(o, int):
            put_int(o)
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8 and o.ndim in (1, 2)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put_int(0)
            out.extend(b"\x85")  # (0,)
            put_str(b"b")
            out.extend(b"\x87R(")  # _reconstruct(ndarray, (0,), 'b'); MARK of the state
            put_int(1)
            for d in o.shape:
                put_int(d)
            out.extend(b"\x85" if o.ndim == 1 else b"\x86")  # shape tuple
            out.extend(b"cnumpy\ndtype\n")
            put_str(b"u1")
            put_int(0)
            put_int(1)
            out.extend(b"\x87R(")  # dtype('u1', 0, 1); MARK of the dtype state
            put_int(3)
            put_str(b"|")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff")
            put_int(0)
            out.extend(b"tb\x89")  # BUILD dtype; fortran_order False
            put_str(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # BUILD array from (1, shape, dtype, False, raw)
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def _dump(path: Path, obj: dict, style: str | int) -> None:
    """``style``: "py2" (as the original files) or a protocol number for Python 3's pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "py2":
        path.write_bytes(py2_pickle(obj))
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=int(style))


def _cifar_images(rng: np.random.Generator, n: int, hand_made: bool) -> np.ndarray:
    """n images as CIFAR rows (N × 3072, planes R, G, B); row 0 hand-made if asked."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    if hand_made:
        planes = np.empty((3, 32, 32), dtype=np.uint8)
        planes[0], planes[1], planes[2] = 10, 20, 30
        planes[0, 1, 2], planes[1, 3, 0], planes[2, 0, 31] = 200, 201, 202
        data[0] = planes.reshape(-1)
    return data


def _hwc(data: np.ndarray, size: int) -> np.ndarray:
    return data.reshape(-1, 3, size, size).transpose(0, 2, 3, 1).copy()


def write_cifar10(data_dir: Path, per_batch: int = 4, n_test: int = 7,
                  style: str | int = "py2") -> Arrays:
    """data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    root = data_dir / "cifar-10-batches-py"
    rng = np.random.default_rng(2)
    train_x, train_y = [], []
    files = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    test = None
    for name, n in files:
        data = _cifar_images(rng, n, hand_made=name == "test_batch")
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _dump(root / name, {b"batch_label": f"{name} of 5".encode(), b"labels": labels,
                            b"data": data, b"filenames": [b"img_%d.png" % i for i in range(n)]},
              style)
        if name == "test_batch":
            test = (_hwc(data, 32), np.array(labels, dtype=np.int64))
        else:
            train_x.append(data)
            train_y += labels
    _dump(root / "batches.meta", {b"num_cases_per_batch": per_batch,
                                  b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                  b"num_vis": 3072}, style)
    assert test is not None
    return {"train": (_hwc(np.concatenate(train_x), 32), np.array(train_y, dtype=np.int64)),
            "test": test}


def write_cifar100(data_dir: Path, n_train: int = 9, n_test: int = 5,
                   style: str | int = "py2") -> Arrays:
    """data_dir/cifar-100-python/{train, test, meta}; fine labels 0 and 99 both appear."""
    root = data_dir / "cifar-100-python"
    rng = np.random.default_rng(3)
    out: Arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _cifar_images(rng, n, hand_made=split == "test")
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        fine[0], fine[-1] = 99, 0
        _dump(root / split, {b"filenames": [b"f_%d.png" % i for i in range(n)],
                             b"batch_label": f"{split} batch 1 of 1".encode(),
                             b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                             b"data": data}, style)
        out[split] = (_hwc(data, 32), np.array(fine, dtype=np.int64))
    _dump(root / "meta", {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                          b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE]}, style)
    return out


# ------------------------------------------------------------------------------- ImageNet64

def write_imagenet64(data_dir: Path, per_batch: int = 2, n_val: int = 4,
                     flat: bool = False) -> Arrays:
    """Imagenet64_{train,val}_npz/ folders (or flat in data_dir); labels 1-based in files.

    Train batches are plain ``np.savez`` with a ``mean`` array like the originals; the val
    file is ``np.savez_compressed``. Labels 1 and 1000 both appear.
    """
    rng = np.random.default_rng(4)
    train_dir = data_dir if flat else data_dir / "Imagenet64_train_npz"
    val_dir = data_dir if flat else data_dir / "Imagenet64_val_npz"
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 11):
        data = rng.integers(0, 256, size=(per_batch, 12288), dtype=np.uint8)
        labels = rng.integers(1, 1001, size=per_batch)
        if i == 1:
            labels[0] = 1000
        np.savez(train_dir / f"train_data_batch_{i}.npz", data=data, labels=labels,
                 mean=data.mean(axis=0))
        xs.append(data)
        ys.append(labels)
    data = rng.integers(0, 256, size=(n_val, 12288), dtype=np.uint8)
    planes = np.empty((3, 64, 64), dtype=np.uint8)
    planes[0], planes[1], planes[2] = 1, 2, 3
    planes[0, 5, 7], planes[1, 63, 0], planes[2, 0, 63] = 250, 251, 252
    data[0] = planes.reshape(-1)
    labels = rng.integers(1, 1001, size=n_val)
    labels[0] = 1
    np.savez_compressed(val_dir / "val_data.npz", data=data, labels=labels)
    return {"train": (_hwc(np.concatenate(xs), 64), np.concatenate(ys).astype(np.int64) - 1),
            "val": (_hwc(data, 64), labels.astype(np.int64) - 1)}
