"""Python API: run RRA on any ``torch.nn.Module`` and image set, outside the workflow.

:func:`analyse` chains the same stage functions the Snakemake rules call — streamed embedding
dumps (:func:`rra.embed.dump_embeddings`), one kNN graph per (hook, scale)
(:func:`rra.knn.build_graphs`) and the metric tables (:func:`rra.metrics.tables.run_tables`) —
so its tables have exactly the workflow's columns and values. :func:`placement` embeds a
training (reference) and a held-out image set the same way and places the held-out images in
each hook's exact kNN model of the reference images (E11, ``rra.metrics.placement``).
:func:`dynamics` embeds the images with each of a list of checkpoints of one model and compares
each hook's kNN graphs across them (E10, ``rra.metrics.dynamics``).

Example (offline: an untrained torchvision model and random images)::

    import torch, torchvision
    from rra.api import analyse

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x, y = torch.randn(200, 3, 32, 32), torch.randint(0, 10, (200,))
    tables = analyse(model, x, y, hooks=["layer1", "layer2", "layer3", "layer4", "fc"],
                     scales=[1, 2, "full"], k=[10])
    print(tables["nnts"])
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rra.io import PathLike, save_npy


def analyse(model: Any, images: Any, labels: Any = None, *, hooks: Iterable[str] | None = None,
            include_input: bool | None = None,
            scales: Iterable[object] = ("full",), k: int | Iterable[int] = 10,
            distance: str = "euclidean", backend: str = "auto", nntp_alpha: Iterable[int] = (0,),
            knn_options: dict | None = None, store_k_max: int = 1000, batch_size: int = 256,
            device: str = "auto", transform: Callable[[Any], Any] | None = None,
            out_dir: PathLike | None = None, run: dict | None = None,
            progress: bool = True, bootstrap: dict | None = None) -> dict[str, Any]:
    """Representational Response Analysis of ``model`` on ``images``; returns the metric tables.

    Parameters
    ----------
    model : any ``torch.nn.Module``; its weights are used as they are (no training).
    images : float N×C×H×W tensor/array (or uint8 images with a ``transform``), or a
        non-shuffling ``DataLoader`` yielding ``x`` or ``(x, y, …)`` batches.
    labels : N class labels (integers). ``None`` puts every row in one class 0, which makes
        the class-conditioned measures trivial.
    hooks : module names (``model.get_submodule``) in forward order; default
        ``model.hook_names`` (rra's models have it). May start with ``"input"``, the input
        hook (see ``include_input``).
    include_input : analyse the model's input itself as the hook ``"input"`` at position 0:
        the batch ``model(x)`` receives (after ``transform``), flattened at ``full`` and
        average-pooled at integer scales like any map. Default ``None``: the model's
        ``analyse_input`` attribute if it has one (rra's LeNet-5: True), else False. True adds
        it before ``hooks``; False with ``"input"`` among ``hooks`` is a ``ValueError``.
    scales : pooled scales: integers s (s × s average pooling) and/or ``"full"``.
    k : neighbourhood size(s); one graph at the largest k ≤ ``store_k_max`` serves every such k.
    store_k_max : graphs are stored up to this k; NNTS at a larger k comes from one exact sweep
        over the embeddings (``rra.knn.sweep``, no n × k graphs), and the other tables are
        computed at the k ≤ store_k_max only (as ``knn.store_k_max`` in the workflow).
    distance, backend : ``euclidean``/``cosine``; ``auto``/``exact``/``annoy``.
    knn_options : options of :func:`rra.knn.knn` (e.g. ``n_trees``, ``search_k``,
        ``recall_target``, ``on_recall_miss``: ``error`` (default) or ``warn`` for an Annoy
        graph below recall_target at some k; ``cost``: overrides of ``auto``'s cost model,
        rra.knn.cost).
    out_dir : keep the embeddings, graphs and tables there (default: a temporary directory,
        removed on return).
    run : identity columns for the tables (dataset, model, attention, augmentation, seed,
        probe); default ``{"model": type(model).__name__}``.
    bootstrap : the uncertainty columns' settings, as ``metrics.bootstrap`` (``B``,
        ``permutations``, ``seed``, ``level``; default B = 200, 20, 0, 0.95; ``{"B": 0}``: the
        ``lo``, ``hi``, ``null``, ``p`` columns stay null).

    Returns a dict table name → polars DataFrame (``nnts``, ``nntp``, ``class_response``,
    ``classrepsim``, ``peers``, ``cka``, ``knn``; columns in :data:`rra.metrics.tables.SCHEMA`).
    """
    hooks = _with_input(model, _hook_names(model, hooks), include_input)
    ks = sorted({int(v) for v in ([k] if isinstance(k, (int, np.integer)) else k)})
    if not ks or ks[0] < 1:
        raise ValueError(f"k: need positive neighbourhood sizes, got {ks}")
    run = dict(run) if run is not None else {"model": type(model).__name__}
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="rra-") as tmp:
            return _analyse(model, images, labels, Path(tmp), hooks, scales, ks, distance, backend,
                            nntp_alpha, knn_options, store_k_max, batch_size, device, transform,
                            run, progress, bootstrap=bootstrap)
    return _analyse(model, images, labels, Path(out_dir), hooks, scales, ks, distance, backend,
                    nntp_alpha, knn_options, store_k_max, batch_size, device, transform, run,
                    progress, bootstrap=bootstrap)


def _analyse(model, images, labels, out: Path, hooks, scales, ks, distance, backend, nntp_alpha,
             knn_options, store_k_max, batch_size, device, transform, run,
             progress, bootstrap=None) -> dict[str, Any]:
    import polars as pl

    from rra.config import split_k
    from rra.embed import dump_embeddings
    from rra.knn import build_graphs
    from rra.metrics.tables import TABLES, run_tables

    embed_dir, knn_dir = out / "embed", out / "knn" / f"{distance}-{backend}"
    metrics_dir = out / "metrics" / f"{distance}-{backend}"
    manifest = dump_embeddings(model, images, hooks, scales, embed_dir, batch_size=batch_size,
                               device=device, transform=transform, progress=progress)
    n = int(manifest["n"])
    y = np.zeros(n, dtype=np.int64) if labels is None else _as_labels(labels)
    if y.shape != (n,):
        raise ValueError(f"labels: expected {n} labels (one per image), got shape {y.shape}")
    save_npy(embed_dir / "labels.npy", y)
    k_graph, large = split_k(ks, int(store_k_max))
    build_graphs(embed_dir, knn_dir, k=k_graph, distance=distance, backend=backend,
                 options=dict(knn_options or {}), nnts_k=large,
                 recall_k=[v for v in ks if v <= k_graph], progress=progress)
    run_tables(embed_dir, knn_dir, metrics_dir, ks=ks, alphas=list(nntp_alpha), run=run,
               bootstrap=bootstrap)
    return {name: pl.read_parquet(metrics_dir / f"{name}.parquet") for name in TABLES}


def placement(model: Any, reference_images: Any, reference_labels: Any, heldout_images: Any,
              heldout_labels: Any, *, hooks: Iterable[str] | None = None,
              include_input: bool | None = None, scales: Iterable[object] = ("full",),
              k: int | Iterable[int] = 10, distance: str = "euclidean",
              batch_size: int = 256, device: str = "auto", knn_device: str = "cpu",
              transform: Callable[[Any], Any] | None = None, out_dir: PathLike | None = None,
              run: dict | None = None, progress: bool = True, bootstrap: dict | None = None):
    """Held-out placement (E11) of ``model``: each hook's exact kNN model built on the reference
    (training-probe) images, with the held-out images placed in it; returns one tidy table.

    Per hook, scale and k (``rra.metrics.placement``, all [ours]): ``placement_acc`` (kNN-vote
    accuracy of the held-out images among their k nearest reference rows), ``placement_train_acc``
    (leave-one-out kNN-vote accuracy of the reference rows), ``placement_gap`` (train − held-out),
    ``placement_purity`` (mean fraction of a held-out image's k reference neighbours sharing its
    label), and per pair of consecutive hooks ``placement_agreement`` (mean Jaccard of a held-out
    image's neighbour sets, NNTS on the held-out rows). Votes tie to the smaller label.

    The images, ``hooks``, ``include_input``, ``scales``, ``batch_size``, ``device`` (of the
    forward passes), ``transform`` and ``run`` are as in :func:`analyse`; both image sets are
    embedded the same way (:func:`rra.embed.dump_embeddings`). ``k``: each must be smaller than
    the number of reference images. ``distance``: ``euclidean`` or ``cosine``; the searches are
    exact (``knn_device``: where their products run). ``out_dir``: keep the embeddings there
    (``reference/``, ``heldout/``; default: a temporary directory). ``bootstrap``: the
    uncertainty columns' settings, as ``metrics.bootstrap`` (as in :func:`analyse`; ``lo``,
    ``hi``, ``null``, ``p`` per value, ``rra.metrics.intervals.PlacementUncertainty``).

    Returns a polars DataFrame with the columns of :data:`rra.metrics.tables.SCHEMA` (``measure``,
    ``hook_a``, ``pos_a``, ``hook_b``/``pos_b`` for the agreement, ``scale_a``, ``k``, ``value``).
    """
    hooks = _with_input(model, _hook_names(model, hooks), include_input)
    ks = sorted({int(v) for v in ([k] if isinstance(k, (int, np.integer)) else k)})
    run = dict(run) if run is not None else {"model": type(model).__name__}
    args = (model, reference_images, reference_labels, heldout_images, heldout_labels, hooks,
            scales, ks, distance, batch_size, device, knn_device, transform, run, progress,
            bootstrap)
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="rra-") as tmp:
            return _placement(Path(tmp), *args)
    return _placement(Path(out_dir), *args)


def _placement(out: Path, model, ref_images, ref_labels, q_images, q_labels, hooks, scales, ks,
               distance, batch_size, device, knn_device, transform, run, progress, bootstrap):
    import polars as pl

    from rra.embed import dump_embeddings
    from rra.io import load_npy
    from rra.metrics.intervals import PlacementUncertainty
    from rra.metrics.placement import check_placement_k, placement_table
    from rra.metrics.uncertainty import Settings

    manifests = {}
    for name, images in (("reference", ref_images), ("heldout", q_images)):
        manifests[name] = dump_embeddings(model, images, hooks, scales, out / name,
                                          batch_size=batch_size, device=device,
                                          transform=transform, progress=progress)
    y_ref, y_q = _as_labels(ref_labels), _as_labels(q_labels)
    for name, y in (("reference", y_ref), ("heldout", y_q)):
        n = int(manifests[name]["n"])
        if y.shape != (n,):
            raise ValueError(f"{name} labels: expected {n} labels (one per image), got shape "
                             f"{y.shape}")
    check_placement_k(ks, y_ref.size)
    settings = Settings.of(bootstrap)
    unc = PlacementUncertainty(y_ref, y_q, settings) if settings.enabled and y_q.size else None
    files = {name: {(e["hook"], str(e["scale"])): out / name / e["file"]
                    for e in m["entries"]} for name, m in manifests.items()}
    order = list(manifests["reference"]["hooks"])
    tables = []
    for scale in [str(s) for s in manifests["reference"]["scales"]]:
        at = [h for h in order if (h, scale) in files["reference"]]
        if not at:
            continue
        tables.append(placement_table(
            at, lambda h, s=scale: load_npy(files["reference"][(h, s)]),
            lambda h, s=scale: load_npy(files["heldout"][(h, s)]), y_ref, y_q, ks, distance,
            scale=scale, run=run, device=knn_device,
            positions={h: i for i, h in enumerate(order)}, bootstrap=settings, unc=unc))
    return pl.concat(tables)


def dynamics(model: Any, checkpoints: Sequence[Any], images: Any, labels: Any = None, *,
             epochs: Iterable[int] | None = None, hooks: Iterable[str] | None = None,
             include_input: bool | None = None, scales: Iterable[object] = ("full",),
             k: int | Iterable[int] = 10, tau: float | None = None, distance: str = "euclidean",
             backend: str = "auto", knn_options: dict | None = None, batch_size: int = 256,
             device: str = "auto", transform: Callable[[Any], Any] | None = None,
             out_dir: PathLike | None = None, run: dict | None = None, progress: bool = True,
             bootstrap: dict | None = None):
    """Representation dynamics (E10, our design) of one model over training checkpoints.

    For each checkpoint in turn the model gets its weights, embeds ``images`` at every hook
    (:func:`rra.embed.dump_embeddings`, streamed to disk) and gets one kNN graph per (hook,
    scale) (:func:`rra.knn.build_graphs`); the embeddings are deleted before the next
    checkpoint, so at most one checkpoint's activations are on disk and none are held in memory.
    Then, per hook (``rra.metrics.dynamics``): NNTS of each checkpoint's graph with the last
    (``dynamics_nnts_final``), between consecutive checkpoints (``dynamics_nnts_step``), and the
    settling epoch, the first epoch from which NNTS to the last stays ≥ ``tau``
    (``dynamics_settling_epoch``, ``dynamics_settled_before_final``).

    Parameters
    ----------
    model : an ``nn.Module`` (copied, never changed) or a callable returning a fresh one; each
        checkpoint's weights are loaded into it with ``load_state_dict(strict=True)``.
    checkpoints : the checkpoints in training order, the final model last: state_dicts, or
        paths of ``torch.save`` files read with ``torch.load(weights_only=True)``: a state_dict,
        an rra model file (``model.pt``, a kept ``epochs/epoch-NNN.pt``: key ``state_dict``) or
        an rra resume checkpoint (key ``model``).
    epochs : the training epoch of each checkpoint, strictly increasing (default 0, 1, …).
    labels : optional, one per image: the strata of the row bootstrap of the uncertainty
        columns (without them the rows are resampled unstratified).
    tau : settling threshold in [0, 1] (default ``rra.metrics.dynamics.TAU`` = 0.5).
    hooks, include_input, scales, k, distance, backend, knn_options, batch_size, device,
    transform, run : as in :func:`analyse`.
    out_dir : keep the graphs (``epoch-NNN/knn/``) and the table there (default: a temporary
        directory, removed on return).
    bootstrap : the uncertainty columns' settings, as ``metrics.bootstrap`` (as in
        :func:`analyse`): ``lo``, ``hi``, ``null``, ``p`` of every value
        (``rra.metrics.intervals.dynamics_stats``).

    Returns a polars DataFrame with the columns of :data:`rra.metrics.tables.SCHEMA`
    (``measure``, ``hook_a``, ``pos_a``, ``scale_a``, ``k``, ``epoch``, ``epoch_b``, ``value``).
    """
    from rra.metrics.dynamics import TAU, check_epochs

    checkpoints = list(checkpoints)
    epochs = check_epochs(range(len(checkpoints)) if epochs is None else epochs)
    if len(epochs) != len(checkpoints):
        raise ValueError(f"epochs: {len(epochs)} epochs for {len(checkpoints)} checkpoints")
    first = model() if callable(model) and not _is_module(model) else model
    hooks = _with_input(first, _hook_names(first, hooks), include_input)
    ks = sorted({int(v) for v in ([k] if isinstance(k, (int, np.integer)) else k)})
    if not ks or ks[0] < 1:
        raise ValueError(f"k: need positive neighbourhood sizes, got {ks}")
    args = (model, checkpoints, epochs, images, labels, hooks, list(scales), ks,
            TAU if tau is None else tau, distance, backend, knn_options, batch_size, device,
            transform, dict(run) if run is not None else {"model": type(first).__name__},
            progress, bootstrap)
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="rra-") as tmp:
            return _dynamics(Path(tmp), *args)
    return _dynamics(Path(out_dir), *args)


def _dynamics(out: Path, model, checkpoints, epochs, images, labels, hooks, scales, ks, tau,
              distance, backend, knn_options, batch_size, device, transform, run, progress,
              bootstrap):
    import shutil

    import polars as pl

    from rra.embed import dump_embeddings
    from rra.knn import build_graphs
    from rra.metrics.dynamics import dynamics_table

    knn_dirs = {}
    for e, checkpoint in zip(epochs, checkpoints):
        net = _model_at(model, checkpoint)
        embed_dir, knn_dirs[e] = out / f"epoch-{e:03d}" / "embed", out / f"epoch-{e:03d}" / "knn"
        manifest = dump_embeddings(net, images, hooks, scales, embed_dir, batch_size=batch_size,
                                   device=device, transform=transform, progress=progress)
        del net
        if labels is not None and _as_labels(labels).shape != (int(manifest["n"]),):
            raise ValueError(f"labels: expected {manifest['n']} labels (one per image)")
        build_graphs(embed_dir, knn_dirs[e], k=ks[-1], distance=distance, backend=backend,
                     options=dict(knn_options or {}), recall_k=ks, progress=progress)
        shutil.rmtree(embed_dir)
    dynamics_table(knn_dirs, out, ks=ks, tau=tau, scales=[s for s in manifest["scales"]],
                   run=run, labels=None if labels is None else _as_labels(labels),
                   bootstrap=bootstrap)
    return pl.read_parquet(out / "dynamics.parquet")


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _model_at(model: Any, checkpoint: Any) -> Any:
    """A model with the weights of ``checkpoint`` (module docstring of :func:`dynamics`): a copy
    of ``model``, or a fresh one from the factory ``model``."""
    import copy

    import torch

    state = checkpoint
    if not isinstance(state, dict):
        state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # rra model / kept-epoch files; resume checkpoints
        if isinstance(state.get(key), dict) and "format" in state:
            state = state[key]
            break
    net = copy.deepcopy(model) if _is_module(model) else model()
    net.load_state_dict(state, strict=True)
    return net


def _hook_names(model: Any, hooks: Iterable[str] | None) -> list[str]:
    """``hooks`` as a list, by default the model's ``hook_names``."""
    if hooks is None:
        hooks = getattr(model, "hook_names", None)
        if hooks is None:
            raise ValueError("hooks: give the module names to analyse (the model has no "
                             "hook_names)")
    return list(hooks)


def _with_input(model: Any, hooks: list[str], include_input: bool | None) -> list[str]:
    """``hooks`` with the input hook first when it is requested (``include_input``, else the
    model's ``analyse_input`` attribute, else no) and not already listed."""
    from rra.embed import INPUT_HOOK

    if INPUT_HOOK in hooks:
        if include_input is False:
            raise ValueError(f"include_input=False, but hooks list {INPUT_HOOK!r}: drop one of "
                             "the two")
        return hooks
    if include_input is None:
        include_input = bool(getattr(model, "analyse_input", False))
    return [INPUT_HOOK, *hooks] if include_input else hooks


def _as_labels(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: must be integers, got dtype {y.dtype}")
    return y.astype(np.int64).reshape(-1) if y.ndim == 1 else y
