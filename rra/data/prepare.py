"""The data stage's artifacts: prepared splits (``images.npy``, ``labels.npy``, manifest) and
probe sets (row indices + sidecar). Layout in docs/design.md, "Artifacts"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from rra.io import (NpyRowWriter, load_npy, provenance, read_json, save_npy, sha256_array,
                    sha256_artifact, sha256_file, write_json)

from .base import Dataset, DatasetInfo
from .registry import dataset_info, get_dataset

MANIFEST = "manifest.json"
IMAGES = "images.npy"
LABELS = "labels.npy"
#: the held-out split carved from ``VAL_FROM`` (its rows leave that split) and the file, in
#: both, of the rows' indices in the source's order
VAL, VAL_FROM, SOURCE_ROWS = "val", "train", "source_rows.npy"


def prepare_dataset(name: str, out_dir: str | Path, data_dir: str | Path | None = None,
                    check: Callable[[dict[str, dict[str, Any]]], None] | None = None,
                    *, val_per_class: int = 0, val_seed: int = 0,
                    **options: Any) -> dict[str, Any]:
    """Write every split of dataset ``name`` under ``out_dir/{split}/`` and return the manifest.

    Per split: ``images.npy`` (uint8 N × H × W × C, streamed batch by batch), ``labels.npy``
    (int64 N) and ``manifest.json`` (shapes, class names and counts, SHA-256 of both arrays and
    of every source file, options, provenance). Last, ``out_dir/manifest.json`` lists the
    splits' manifests; it is the completion marker of the whole stage. All writes are atomic;
    a split's stale manifest is removed before its arrays are rewritten.
    Every source file must exist before anything is written; a split of 0 images is an error.
    ``check``, if given, is called with the splits' manifests (``{split: manifest}``, with
    ``n`` and ``class_counts`` read from the files) before the stage's manifest is written, so
    an error it raises leaves the stage incomplete (the CLI's ``--probe-check``:
    :func:`rra.config.check_probe_sizes` against the files, the earliest point where sizes
    that only the files know are known).

    ``val_per_class`` > 0 carves a held-out split ``val`` from ``train`` [ours]: the rows
    :func:`rra.data.mnist.stratified_split` draws (``val_per_class`` per class, one
    ``Generator(PCG64(val_seed))``) go to ``out_dir/val/`` and leave ``out_dir/train/``, so
    training never sees them; both keep the source order and record their source row indices
    (``source_rows.npy``). The stage's manifest records the carving under ``val`` (None when
    ``val_per_class`` is 0; a stale ``val/`` is then invalidated). ValueError for a dataset
    that has its own ``val`` split or a class with at most ``val_per_class`` training rows.
    """
    val_per_class, val_seed = _check_val(name, val_per_class, val_seed)
    dataset = get_dataset(name, data_dir, **options)
    out_dir = Path(out_dir)
    sources = {split: dataset.source_files(split) for split in dataset.info.splits}
    (out_dir / MANIFEST).unlink(missing_ok=True)
    unique = list(dict.fromkeys(p for paths in sources.values() for p in paths))
    hashes = {path: sha256_file(path)
              for path in tqdm(unique, desc=f"{name}: sha256 of sources", disable=None)}
    (out_dir / VAL / MANIFEST).unlink(missing_ok=True)
    splits = {}
    for split, paths in sources.items():
        files = [{"path": str(p), "sha256": hashes[p]} for p in paths]
        if split == VAL_FROM and val_per_class:
            splits.update(_write_carved(dataset, out_dir, files, val_per_class, val_seed))
        else:
            splits[split] = _write_split(dataset, split, out_dir / split, files)
    if check is not None:
        check(splits)
    val = (None if not val_per_class else
           {"n_per_class": val_per_class, "seed": val_seed, "carved_from": VAL_FROM,
            "n": splits[VAL]["n"], "source_rows_sha256": splits[VAL]["source_rows_sha256"]})
    manifest = {"dataset": name, "splits": splits, "options": dataset.options, "val": val,
                "provenance": provenance({"dataset": name, "options": dataset.options,
                                          "val_per_class": val_per_class, "val_seed": val_seed},
                                         seed=dataset.options.get("seed"))}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _check_val(name: str, val_per_class: Any, val_seed: Any) -> tuple[int, int]:
    for key, value in (("val_per_class", val_per_class), ("val_seed", val_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"prepare_dataset: {key} must be an integer >= 0, got {value!r}")
    if val_per_class and VAL in dataset_info(name).splits:
        raise ValueError(f"dataset {name!r} has its own {VAL!r} split (its evaluation split); "
                         f"carving another from {VAL_FROM!r} is not supported: set "
                         "val.n_per_class: 0")
    return int(val_per_class), int(val_seed)


def _source_labels(dataset: Dataset, split: str) -> np.ndarray:
    """The labels of a source split, in its order (one pass over the loader)."""
    _, batches = dataset.read(split)
    return np.concatenate([np.asarray(y, dtype=np.int64) for _, y in batches] or
                          [np.empty(0, dtype=np.int64)])


def _write_carved(dataset: Dataset, out_dir: Path, sources: list[dict[str, str]],
                  per_class: int, seed: int) -> dict[str, dict[str, Any]]:
    """``train`` less the held-out rows, and ``val``: those rows (see :func:`prepare_dataset`)."""
    from .mnist import stratified_split

    labels = _source_labels(dataset, VAL_FROM)
    try:
        keep, held = stratified_split(labels, per_class, seed, dataset.info.num_classes,
                                      what="val.n_per_class")
    except ValueError as err:
        raise ValueError(f"{dataset.info.name} {VAL_FROM}: {err}") from err
    carving = {"carved_from": VAL_FROM, "val_per_class": per_class, "val_seed": seed}
    return {VAL_FROM: _write_split(dataset, VAL_FROM, out_dir / VAL_FROM, sources, rows=keep,
                                   extra={**carving, "held_out_to": VAL}),
            VAL: _write_split(dataset, VAL_FROM, out_dir / VAL, sources, rows=held, name=VAL,
                              extra=carving)}


def _write_split(dataset: Dataset, split: str, split_dir: Path,
                 sources: list[dict[str, str]], *, rows: np.ndarray | None = None,
                 name: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write source split ``split`` to ``split_dir`` as split ``name`` (default ``split``):
    every row, or only ``rows`` (sorted source row indices, also saved as ``source_rows.npy``)."""
    info = dataset.info
    name = name or split
    (split_dir / MANIFEST).unlink(missing_ok=True)
    n, batches = dataset.read(split)
    if n == 0:
        raise ValueError(f"{info.name} {split}: the source files hold 0 images")
    labels = _stream_rows(info, split, n, batches, rows, split_dir / IMAGES)
    save_npy(split_dir / LABELS, labels)
    extra = _save_source_rows(split_dir, rows, extra)
    manifest = _split_manifest(dataset, split_dir, name, labels, sources, extra)
    write_json(split_dir / MANIFEST, manifest)
    return manifest


def _stream_rows(info: DatasetInfo, split: str, n: int, batches: Any, rows: np.ndarray | None,
                 images_path: Path) -> np.ndarray:
    """Stream the loader's batches (every row, or only ``rows``) to ``images_path``, checking
    each batch's dtype, shape and row count; return the labels written."""
    take = None
    if rows is not None:
        take = np.zeros(n, dtype=bool)
        take[rows] = True
    n_out = n if rows is None else int(rows.size)
    labels = np.empty(n_out, dtype=np.int64)
    pos = out = 0
    with NpyRowWriter(images_path, (n_out, *info.image_shape), np.uint8) as writer:
        for images, batch_labels in batches:
            if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
                raise ValueError(f"{info.name} {split}: loader gave {images.dtype} images of "
                                 f"shape {images.shape}, expected uint8 B × {info.image_shape}")
            if batch_labels.shape != (images.shape[0],) or pos + images.shape[0] > n:
                raise ValueError(f"{info.name} {split}: batch of {images.shape[0]} images with "
                                 f"labels {batch_labels.shape} at row {pos} of {n}")
            batch = images.shape[0]
            if take is not None:
                keep = take[pos:pos + batch]
                images, batch_labels = images[keep], batch_labels[keep]
            pos += batch
            writer.write(images)
            labels[out:out + images.shape[0]] = batch_labels
            out += images.shape[0]
    return labels


def _save_source_rows(split_dir: Path, rows: np.ndarray | None,
                      extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """Save a carved split's source rows (and drop a previous carving's); return ``extra``
    with their file and hash added."""
    (split_dir / SOURCE_ROWS).unlink(missing_ok=True)  # a previous carving's, if any
    if rows is None:
        return extra
    rows = np.asarray(rows, dtype=np.int64)
    save_npy(split_dir / SOURCE_ROWS, rows)
    return {**(extra or {}), "source_rows_file": SOURCE_ROWS,
            "source_rows_sha256": sha256_array(rows)}


def _split_manifest(dataset: Dataset, split_dir: Path, name: str, labels: np.ndarray,
                    sources: list[dict[str, str]], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of a written split (its arrays' hashes read from the files)."""
    info = dataset.info
    return {
        "dataset": info.name,
        "split": name,
        "n": int(labels.shape[0]),
        "image_shape": list(info.image_shape),
        "channels": info.channels,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "class_counts": np.bincount(labels, minlength=info.num_classes).tolist(),
        "images_file": IMAGES,
        "images_sha256": sha256_file(split_dir / IMAGES),
        "labels_file": LABELS,
        "labels_sha256": sha256_file(split_dir / LABELS),
        "sources": sources,
        "options": dataset.options,
        "note": dataset.note,
        **(extra or {}),
        "provenance": provenance({"dataset": info.name, "split": name,
                                  "options": dataset.options, **(extra or {})},
                                 seed=dataset.options.get("seed")),
    }


@dataclass(frozen=True)
class Split:
    """A prepared split: ``images`` uint8 N × H × W × C (memory-mapped), ``labels`` int64 N."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    manifest: dict[str, Any]
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(split_dir: str | Path, verify: bool = False) -> Split:
    """Open a prepared split and check its arrays against its manifest.

    Checks dtype and shape of both arrays and the label range; ``verify=True`` also recomputes
    the SHA-256 of both files (reads every byte).
    """
    split_dir = Path(split_dir)
    manifest = read_json(split_dir / MANIFEST)
    for key in ("dataset", "split", "n", "image_shape", "images_sha256", "labels_sha256"):
        if key not in manifest:
            raise ValueError(f"{split_dir / MANIFEST}: missing key {key!r}")
    info = dataset_info(manifest["dataset"])
    n = int(manifest["n"])
    images = load_npy(split_dir / IMAGES, mmap=True)
    labels = load_npy(split_dir / LABELS, mmap=False)
    expected = {IMAGES: (images, np.uint8, (n, *info.image_shape)),
                LABELS: (labels, np.int64, (n,))}
    for file, (arr, dtype, shape) in expected.items():
        if arr.dtype != dtype or arr.shape != shape:
            raise ValueError(f"{split_dir / file}: {arr.dtype} array of shape {arr.shape}, but "
                             f"the manifest says {np.dtype(dtype)} of shape {shape}")
    if list(manifest["image_shape"]) != list(info.image_shape):
        raise ValueError(f"{split_dir / MANIFEST}: image_shape {manifest['image_shape']} is not "
                         f"{info.name}'s {list(info.image_shape)}")
    if n and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"{split_dir / LABELS}: labels outside [0, {info.num_classes})")
    if verify:
        for file, key in ((IMAGES, "images_sha256"), (LABELS, "labels_sha256")):
            if sha256_file(split_dir / file) != manifest[key]:
                raise ValueError(f"{split_dir / file}: SHA-256 differs from the manifest's "
                                 f"{key} (file changed after preparation)")
    return Split(split_dir, images, labels, manifest, info)


def select_probe(split_dir: str | Path, n_per_class: int | str, seed: int,
                 out_path: str | Path) -> np.ndarray:
    """Draw the probe set: ``n_per_class`` rows of every class, seeded. [ours: the draw;
    the per-class probe set itself is [source]]

    ``n_per_class="all"`` takes every row of the split (classes may then differ in size, as in
    the full MNIST training set of the published E1), sorted by (label, row index).

    One ``Generator(PCG64(seed))``; for c = 0, 1, …, C−1 in order: ``rng.choice`` of
    ``n_per_class`` distinct rows among the split's rows of class c, sorted ascending. The
    result (int64) is sorted by (label, row index). Writes ``out_path`` (.npy) and a sidecar
    ``out_path`` with suffix .json (n_per_class, seed, split, counts, SHA-256 of the indices
    and of the split's manifest file, provenance).
    """
    out_path = Path(out_path)
    if out_path.suffix != ".npy":
        raise ValueError(f"probe output must be a .npy file, got {out_path}")
    take_all = n_per_class == "all"
    if not take_all and (isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer))
                         or n_per_class < 1):
        raise ValueError(f"n_per_class must be an integer >= 1 or 'all', got {n_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    split = load_split(split_dir)
    labels = np.asarray(split.labels)
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    picks = []
    for c, class_name in enumerate(split.info.class_names):
        rows = np.flatnonzero(labels == c)
        if take_all:
            picks.append(rows)
            continue
        if rows.size < n_per_class:
            raise ValueError(f"{split.path}: class {c} ({class_name!r}) has {rows.size} rows, "
                             f"fewer than n_per_class = {n_per_class}")
        picks.append(np.sort(rng.choice(rows, size=int(n_per_class), replace=False)))
    indices = np.concatenate(picks).astype(np.int64)
    save_npy(out_path, indices)
    write_json(out_path.with_suffix(".json"), {
        "dataset": split.info.name,
        "split": split.manifest["split"],
        "n_per_class": n_per_class if take_all else int(n_per_class),
        "seed": int(seed),
        "n": int(indices.shape[0]),
        "counts": np.bincount(labels[indices], minlength=split.info.num_classes).tolist(),
        "indices_sha256": sha256_array(indices),
        "split_manifest_sha256": sha256_artifact(split.path / MANIFEST),
        "provenance": provenance({"split_dir": str(split.path), "n_per_class": n_per_class if take_all else int(n_per_class)},
                                 seed=int(seed)),
    })
    return indices
