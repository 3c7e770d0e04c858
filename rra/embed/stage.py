"""The embed stage: a trained run + a probe set -> ``results/{dataset}/{run}/embed/{probe}/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rra.embed.dump import INPUT_HOOK, dump_embeddings
from rra.io import PathLike, load_npy, read_json, save_npy, sha256_array, sha256_artifact, sha256_file


class ProbeRows:
    """Rows ``images[probe]`` in probe order, read lazily one slice at a time.

    Slicing gives ``images[probe[a:b]]`` (for a memory map: only those rows are read), so the
    probe set's images are never copied whole.
    """

    def __init__(self, images: Any, probe: np.ndarray):
        self.images = images
        self.probe = probe

    def __len__(self) -> int:
        return int(self.probe.shape[0])

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("ProbeRows supports slices only")
        return np.asarray(self.images[self.probe[rows]])


def load_probe(probe_path: PathLike, n_rows: int, split_dir: PathLike | None = None
               ) -> np.ndarray:
    """Probe row indices from ``probe_path`` (.npy, next to its .json sidecar), validated.

    Raises ``FileNotFoundError`` for a missing file or sidecar and ``ValueError`` unless the
    indices are a non-empty 1-D integer array of distinct rows in [0, n_rows). Where the
    sidecar records them (``rra.data.select_probe``), the indices' hash (``indices_sha256``)
    and the split manifest's hash (``split_manifest_sha256``, checked against
    ``split_dir/manifest.json``) must match: a probe set drawn from another split is an error.
    """
    probe_path = Path(probe_path)
    sidecar_path = probe_path.with_suffix(".json")
    if not sidecar_path.is_file():
        raise FileNotFoundError(f"missing probe sidecar {sidecar_path} next to {probe_path}")
    sidecar = read_json(sidecar_path)
    probe = np.asarray(load_npy(probe_path, mmap=False))
    if probe.ndim != 1 or probe.size == 0 or not np.issubdtype(probe.dtype, np.integer):
        raise ValueError(f"{probe_path}: probe indices must be a non-empty 1-D integer array, "
                         f"got {probe.dtype} {probe.shape}")
    if probe.min() < 0 or probe.max() >= n_rows:
        raise ValueError(f"{probe_path}: probe index out of range [0, {n_rows}) of the split")
    if np.unique(probe).size != probe.size:
        raise ValueError(f"{probe_path}: probe indices repeat a row")
    if "indices_sha256" in sidecar and sha256_array(probe) != sidecar["indices_sha256"]:
        raise ValueError(f"{probe_path}: indices differ from the hash in {sidecar_path}")
    split_manifest = Path(split_dir) / "manifest.json" if split_dir is not None else None
    if ("split_manifest_sha256" in sidecar and split_manifest is not None
            and split_manifest.is_file()
            and sha256_artifact(split_manifest) != sidecar["split_manifest_sha256"]):
        raise ValueError(f"{probe_path} was drawn from another split than {split_manifest.parent} "
                         f"(split_manifest_sha256 in {sidecar_path} differs)")
    return probe.astype(np.int64)


def embed_run(run_dir: PathLike, split_dir: PathLike, probe_path: PathLike, out_dir: PathLike, *,
              scales: Iterable[object], batch_size: int = 256, device: str = "auto",
              include_input: bool | None = None, weights: PathLike | None = None) -> dict:
    """Dump the embeddings of a trained run on a probe set; return the manifest.

    Loads the model (``rra.train.load_trained(run_dir)``), the split
    (``rra.data.load_split(split_dir)``) and the probe indices; embeds ``images[probe]`` in
    probe order, normalised for the model, at every hook of ``model.hook_names`` and every
    applicable scale (:func:`rra.embed.dump_embeddings`), preceded by the input hook
    ``input`` (the normalised images the model receives, pooled like any map) when
    ``include_input`` is true; ``None`` (default) follows the model's ``analyse_input`` class
    attribute (LeNet-5: true, ResNets: false; the workflow passes the resolved
    ``embed.input``, :func:`rra.config.embed_input`). Also writes the probe rows' labels to
    ``out_dir/labels.npy`` (int64, n) for the metrics stage. Every record carries the SHA-256 of
    ``run_dir/model.pt`` and of the probe .npy file, and the dataset and split names. The probe
    set is checked against its sidecar and the split (:func:`load_probe`). ``weights``: another
    weights file of the run in ``model.pt``'s format instead of ``model.pt`` (a kept epoch,
    ``epochs/epoch-NNN.pt``: the representation dynamics, E10); it is the recorded checkpoint.
    """
    from rra.data import dataset_info, load_split, normalise
    from rra.train import load_trained

    run_dir, split_dir, out_dir = Path(run_dir), Path(split_dir), Path(out_dir)
    checkpoint = run_dir / "model.pt" if weights is None else Path(weights)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"missing trained model {checkpoint}"
                                + ("" if weights is None else " (a kept epoch of the run: is the "
                                   "epoch in the run's keep_epochs / dynamics.epochs?)"))
    split = load_split(split_dir)
    probe = load_probe(probe_path, int(split.images.shape[0]), split_dir)
    dataset = split.manifest.get("dataset", split_dir.parent.name)
    info = dataset_info(dataset)
    model = load_trained(run_dir if weights is None else checkpoint)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_npy(out_dir / "labels.npy", np.asarray(split.labels[probe], dtype=np.int64))
    meta = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
            "probe": str(probe_path), "probe_sha256": sha256_file(probe_path),
            "dataset": dataset, "split": split.manifest.get("split", split_dir.name),
            "labels": "labels.npy"}
    if include_input is None:
        include_input = bool(getattr(model, "analyse_input", False))
    hooks = ([INPUT_HOOK] if include_input else []) + list(model.hook_names)
    return dump_embeddings(model, ProbeRows(split.images, probe), hooks, scales,
                           out_dir, batch_size=batch_size, device=device,
                           transform=lambda batch: normalise(batch, info), meta=meta)
