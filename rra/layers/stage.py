"""The layers stage: one layer analysis of a trained run on a probe set →
``results/{dataset}/{run}/layers/{probe}/{analysis}/`` (experiments E7–E9).

``analysis`` is one family of :data:`ANALYSES`; each needs the model itself, so it runs apart
from the kNN path (the embeddings are not read):

- ``translation`` (E7): :func:`rra.layers.translation.translation_sensitivity` at ``input``
  (where embedded) and ``model.hook_names``;
- ``patterns`` (E8): :func:`rra.layers.patterns.activation_patterns` with trees, at the ReLU
  behind each hook (:func:`rra.layers.patterns.relu_hooks`), reported under the hook's name;
- ``margins`` (E9): :func:`rra.layers.margins.hidden_margin_rows` at ``input`` (where embedded)
  and ``model.hook_names``, :func:`rra.layers.margins.input_margin_rows` (DeepFool, PCA);
- ``saliency`` (E9): :func:`rra.layers.saliency.saliency_maps` and
  :func:`rra.layers.saliency.first_layer_filters` (the input);
- ``fragmentation`` (E9): :func:`rra.layers.fragmentation.fragmentation_rows` at ``input``
  (the core measure, always) and ``model.hook_names``.

Writes ``{analysis}.parquet`` (+ ``.csv`` when small; the columns of
:data:`rra.metrics.tables.SCHEMA`, run identity in every row), for ``saliency`` also
``maps.npz`` (the grid's images, their saliency maps and the first-layer filters), and last
``manifest.json``: settings, hooks, device, seconds, the SHA-256 of the checkpoint and of the
probe files, provenance. Every file is written atomically; a manifest is present only after a
complete run. ``pos_a`` is the hook's forward position as in the embed manifests (``input`` 0
where embedded).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rra.io import PathLike, provenance, read_json, save_npz, sha256_file, write_json, write_table

ANALYSES = ("translation", "patterns", "margins", "saliency", "fragmentation")
#: analyses that read a training subset (a probe of the train split): trees, PCA directions
TRAIN_ANALYSES = ("patterns", "margins")
#: analyses whose hooks include ``input`` where embedded (``embed.input``); fragmentation
#: always includes it (the core measure), patterns and saliency never read it
INPUT_ANALYSES = ("translation", "margins")
MANIFEST = "manifest.json"
MAPS = "maps.npz"


class ProbeImages:
    """A probe set's rows of its split: raw uint8 images, labels and the normalised inputs."""

    def __init__(self, data_dir: PathLike, probe_path: PathLike):
        from rra.data import load_split, normalise
        from rra.embed.stage import load_probe

        self.path = Path(probe_path)
        sidecar = self.path.with_suffix(".json")
        if not sidecar.is_file():
            raise FileNotFoundError(f"missing probe sidecar {sidecar} next to {self.path}")
        self.split_name = str(read_json(sidecar)["split"])
        split_dir = Path(data_dir) / self.split_name
        split = load_split(split_dir)
        self.rows = load_probe(self.path, int(split.images.shape[0]), split_dir)
        self.info = split.info
        self.images = np.asarray(split.images[self.rows])
        self.labels = np.asarray(split.labels[self.rows], dtype=np.int64)
        self.inputs = normalise(self.images, self.info)
        self.sha256 = sha256_file(self.path)


def layer_run(analysis: str, run_dir: PathLike, data_dir: PathLike, probe_path: PathLike,
              out_dir: PathLike, *, settings: Mapping[str, Any], run: Mapping[str, Any],
              train_path: PathLike | None = None, device: str = "auto",
              include_input: bool | None = None) -> dict:
    """Run layer analysis ``analysis`` on the trained model of ``run_dir`` and the probe set
    ``probe_path`` (rows of a split under ``data_dir``, the prepared dataset folder); write
    its table (and maps) to ``out_dir``; return the manifest.

    ``settings``: the analysis's resolved settings (``rra.config.layer_params``: e.g.
    ``max_shift`` and ``scales`` for translation, the training subset's probe name ``train``
    for patterns and margins, ``bootstrap`` = ``metrics.bootstrap`` for the tables' ``lo``, ``hi``,
    ``null``, ``p``: each analysis's module docstring says which values get them and how);
    ``run``: the identity columns (dataset, model, attention,
    augmentation, seed, probe); ``train_path``: the training subset's probe file (patterns,
    margins); ``include_input``: the ``input`` hook first (``None``: the model's
    ``analyse_input``; the workflow passes the resolved ``embed.input``).
    """
    from rra.device import pick_device
    from rra.metrics.tables import frame
    from rra.train import load_trained

    if analysis not in ANALYSES:
        raise ValueError(f"unknown layer analysis {analysis!r}; known: {list(ANALYSES)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    checkpoint = run_dir / "model.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"missing trained model {checkpoint}")
    settings = dict(settings)
    if analysis in TRAIN_ANALYSES and train_path is None:
        raise ValueError(f"layer analysis {analysis!r} needs a training subset (train_path)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    t0 = time.perf_counter()
    probe = ProbeImages(data_dir, probe_path)
    train = ProbeImages(data_dir, train_path) if analysis in TRAIN_ANALYSES else None
    model = load_trained(run_dir)
    if include_input is None:
        include_input = bool(getattr(model, "analyse_input", False))
    hooks = (["input"] if include_input else []) + list(model.hook_names)
    dev = pick_device(device)
    rows, arrays, used = _RUNNERS[analysis](model, probe, train, hooks, settings, dev)
    table = write_table(frame(rows, dict(run)), out_dir / analysis)
    files = {analysis: table}
    if arrays:
        save_npz(out_dir / MAPS, arrays)
        files["maps"] = {"files": [MAPS], "sha256": sha256_file(out_dir / MAPS),
                         "arrays": {k: list(v.shape) for k, v in arrays.items()}}
    manifest = {
        "analysis": analysis, "run": dict(run), "hooks": used, "tables": files,
        "n": int(probe.labels.size), "split": probe.split_name, "device": str(dev),
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
        "probe": str(probe.path), "probe_sha256": probe.sha256,
        **({"train": str(train.path), "train_sha256": train.sha256,
            "n_train": int(train.labels.size)} if train is not None else {}),
        "seconds": round(time.perf_counter() - t0, 3),
        **provenance(config=settings),
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _positions(hooks: list[str]) -> dict[str, int]:
    return {h: i for i, h in enumerate(hooks)}


def _translation(model, probe: ProbeImages, train, hooks, s, dev):
    from rra.layers.translation import black_fill, translation_sensitivity

    rows = translation_sensitivity(model, probe.inputs, hooks, fill=black_fill(probe.info),
                                   max_shift=int(s["max_shift"]), scales=s["scales"],
                                   device=dev, batch_size=int(s["batch_size"]),
                                   positions=_positions(hooks), labels=probe.labels,
                                   bootstrap=s.get("bootstrap"))
    return rows, {}, hooks


def _patterns(model, probe: ProbeImages, train: ProbeImages, hooks, s, dev):
    """Trees on the ReLU codes of the training subset; each ReLU reported under the name of
    the hook whose output it is (``stem`` for ``stem.relu``, ``layer1.0`` for
    ``layer1.0.relu``; LeNet-5's ``relu1`` is a hook itself)."""
    from rra.layers.patterns import activation_patterns, relu_hooks

    hook_of = {}
    for h in hooks:
        for r in relu_hooks(model, [h]):
            hook_of[r] = h
    if not hook_of:
        raise ValueError(f"{type(model).__name__}: none of the hooks {hooks} is or ends in an "
                         "nn.ReLU, so there are no binary activation patterns to analyse")
    pos = _positions(hooks)
    rows = activation_patterns(model, probe.inputs, probe.labels, list(hook_of),
                               train=train.inputs, seed=int(s["seed"]),
                               tree_kwargs=dict(s["tree"]), device=dev,
                               batch_size=int(s["batch_size"]),
                               positions={r: pos[h] for r, h in hook_of.items()},
                               bootstrap=s.get("bootstrap"))
    for row in rows:
        row["hook_a"] = hook_of[row["hook_a"]]
    return rows, {}, list(hook_of.values())


def _margins(model, probe: ProbeImages, train: ProbeImages, hooks, s, dev):
    """Hidden margins at every hook over the whole probe; DeepFool (unconstrained and in the
    top-k PCA directions of the training subset) on the first ``deepfool_per_class`` probe rows
    of each class (the probe is sorted by class, so the same rows in every run)."""
    from rra.layers.margins import hidden_margin_rows, input_margin_rows

    bs = int(s["batch_size"])
    rows = hidden_margin_rows(model, probe.inputs, probe.labels, hooks,
                              quantiles=s["quantiles"], positions=_positions(hooks),
                              device=dev, batch_size=bs, bootstrap=s.get("bootstrap"))
    take = first_per_class(probe.labels, s["deepfool_per_class"])
    rows += input_margin_rows(model, probe.inputs[take], probe.labels[take],
                              train_inputs=train.inputs, ks=s["pca_k"],
                              max_iter=int(s["max_iter"]), overshoot=float(s["overshoot"]),
                              candidates=int(s["candidates"]), device=dev, batch_size=bs,
                              bootstrap=s.get("bootstrap"))
    return rows, {}, hooks


def _saliency(model, probe: ProbeImages, train, hooks, s, dev):
    """Saliency of every probe image (the table: top-share means, overall and per class); the
    maps of ``images`` of them for the grids (the first image of each class, then the second,
    …: the same images in every run of the probe) and the first layer's filters."""
    from rra.layers.saliency import first_layer_filters, saliency_maps

    sal = saliency_maps(model, probe.inputs, probe.labels, top=float(s["top"]), device=dev,
                        batch_size=int(s["batch_size"]))
    shown = grid_rows(probe.labels, int(s["images"]))
    arrays = {"rows": shown, "images": probe.images[shown], "labels": probe.labels[shown],
              "predicted": sal.predicted[shown], "true": sal.true[shown],
              "pred": sal.pred[shown], "filters": first_layer_filters(model)}
    return sal.rows(s.get("bootstrap")), arrays, ["input"]


def _fragmentation(model, probe: ProbeImages, train, hooks, s, dev):
    from rra.layers.fragmentation import fragmentation_rows

    hooks = hooks if hooks[0] == "input" else ["input", *hooks]
    rows = fragmentation_rows(model, probe.inputs, probe.labels, hooks,
                              resolution=int(s["resolution"]), triplets=int(s["triplets"]),
                              extend=float(s["extend"]), kinds=list(s["kinds"]),
                              seed=int(s["seed"]), keep_maps=0, positions=_positions(hooks),
                              device=dev, batch_size=int(s["batch_size"]),
                              bootstrap=s.get("bootstrap"))
    return rows, {}, hooks


_RUNNERS = {"translation": _translation, "patterns": _patterns, "margins": _margins,
            "saliency": _saliency, "fragmentation": _fragmentation}


def first_per_class(labels: np.ndarray, per_class: int | str) -> np.ndarray:
    """Positions of the first ``per_class`` rows of each class (all rows for ``"all"``), in
    row order."""
    labels = np.asarray(labels)
    if per_class == "all":
        return np.arange(labels.size)
    rank = np.zeros(labels.size, dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(where.size)
    return np.flatnonzero(rank < int(per_class))


def grid_rows(labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` row positions: the first row of each class in class order, then the second of
    each, …; fewer when the probe has fewer rows."""
    labels = np.asarray(labels)
    queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < count and any(queues):
        for q in queues:
            if q and len(out) < count:
                out.append(int(q.pop(0)))
    return np.asarray(out, dtype=np.int64)
