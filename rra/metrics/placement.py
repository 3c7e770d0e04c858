"""Held-out placement (E11): held-out images placed in each hook's kNN model built on a training
probe (methods.md §4, "Held-out placement"). [ours]

For one hook h with reference (training-probe) embeddings R (n_R rows, labels y_R) and held-out
embeddings Q (m rows, labels y_Q), under the study's distance (``euclidean`` or ``cosine``,
rows prepared as for the graphs):

- N_h(q): the exact k nearest reference rows of held-out row q, sorted by (distance, reference
  index) (``rra.knn.cross.cross_neighbours``); K_h(i): the k nearest *other* reference rows of
  reference row i — the study's own graph on R (leave-one-out, ``rra.knn.knn_exact``);
- vote(S) = the most frequent label among the rows S, ties between classes to the smaller
  label (the rule of ``class_response``'s kNN-vote accuracy, so ``placement_train_acc`` equals
  ``knn_vote_accuracy`` on the same graph);

    placement_acc       = mean_q 1[vote(N_h(q)) = y_q]                      (held-out accuracy)
    placement_train_acc = mean_i 1[vote(K_h(i)) = y_i]                      (leave-one-out)
    placement_gap       = placement_train_acc − placement_acc               (generalisation gap)
    placement_purity    = mean_q |{j ∈ N_h(q) : y_j = y_q}| / k             (row-weighted)
    placement_agreement = mean_q |N_h(q) ∩ N_h'(q)| / |N_h(q) ∪ N_h'(q)|    (h' = next hook)

``placement_agreement`` is NNTS (Hryniowski & Wong) applied to the held-out rows' neighbour
sets in the reference rows, J_q = m_q / (2k − m_q), between consecutive hooks in forward order.
The graph at k is the first k columns of the graph at the largest k (rows sorted by (distance,
index)), so every k costs one search per hook.

Table rows (:data:`rra.metrics.tables.SCHEMA`): ``measure`` one of :data:`OUTPUTS`, ``hook_a``
/ ``pos_a`` (and, for the agreement, ``hook_b`` / ``pos_b`` = the next hook), ``scale_a``
(= ``scale_b``), ``k``, ``value``.

Uncertainty and chance levels (columns ``lo``, ``hi``, ``null``, ``p``; docs/methods.md §4;
:class:`rra.metrics.intervals.PlacementUncertainty`; settings ``metrics.bootstrap``, B = 0: the
columns stay null) [ours]:

- the held-out rows are resampled B times, stratified by their labels, with the seed
  :func:`rra.metrics.intervals.heldout_seed` (independent of the reference rows' resamples);
  the reference rows as the metric tables resample a probe (their seed);
- ``placement_acc``: per held-out row 1[vote = y_q] → resampled means; chance: a held-out row
  is no reference row, so its k neighbours are drawn at random from all n_R reference rows (no
  self to exclude, unlike the metric tables' vote chance, which draws from the n − 1 others):
  q_c = P(majority of k labels drawn without replacement from the reference labels is c)
  (:func:`rra.metrics.uncertainty.vote_null_reference`, Monte-Carlo), null = Σ_c m_c q_c / m,
  sd under the null √(Σ_c m_c q_c (1 − q_c)) / m (m_c held-out rows of class c);
- ``placement_train_acc``: exactly the metric tables' ``knn_vote_accuracy`` stats of the
  reference rows' graph (it is that value);
- ``placement_gap``: each resample's train − held-out of the two independent resamples; null 0
  (no gap) and p **two-sided** from the bootstrap sd of the difference: it tests gap ≠ 0, not
  chance (the only p of the tables that is two-sided);
- ``placement_purity``: per held-out row its own-class share → resampled means; chance: the
  share of class c among k of the n_R reference rows is hypergeometric, E = n_c / n_R,
  Var = E (1 − E)(n_R − k) / ((n_R − 1) k); null = Σ_c m_c E_c / m, sd √(Σ_c m_c Var_c) / m;
- ``placement_agreement``: per held-out row the Jaccard of its neighbour sets at the two hooks
  → resampled means; chance: two independent random k-subsets of the n_R reference rows,
  exact hypergeometric E[J] (``jaccard_null(n_R + 1, k)``, which draws from n − 1 = n_R rows),
  sd √(Var J / m).

Sanity checks: both graphs have the labels' rows (:func:`rra.metrics.uncertainty.check_rows`)
and each held-out graph's agreement with itself is 1 on every row (:func:`~rra.metrics.
uncertainty.check_self`).

Registered in :data:`rra.metrics.registry.MEASURES` (kind ``heldout+embeddings``, table
``placement``): unlike the tables of :func:`rra.metrics.tables.run_tables`, which read one
probe's stored graphs, placement reads a second image set, so its table is written by its own
stage, :func:`placement_stage` (``python -m rra placement``, rule ``placement``: experiment E11),
from a run's embeddings of the reference probe and of the held-out probe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rra.knn.cross import cross_neighbours
from rra.knn.sets import overlap_counts
from rra.metrics.class_response import majority_vote
from rra.metrics.common import check_labels
from rra.metrics.nnts import jaccard_from_overlap

#: the values of the ``measure`` column of a placement table, in row order per hook
OUTPUTS = ("placement_acc", "placement_train_acc", "placement_gap", "placement_purity",
           "placement_agreement")
TAG = "[ours, E11; agreement: NNTS of Hryniowski & Wong on the held-out rows]"


def check_placement_k(ks: Iterable[int] | int, n_ref: int) -> list[int]:
    """The sorted distinct k, each with ``1 ≤ k < n_R`` (the training probe's leave-one-out
    graph has at most n_R − 1 neighbours per row); an error names k and n_R."""
    values = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not values:
        raise ValueError("k: give at least one neighbourhood size")
    out = []
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, got {k!r}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if k >= n_ref:
            raise ValueError(f"k = {k} must be smaller than the number of reference (training "
                             f"probe) rows n_R = {n_ref}: the leave-one-out graph of the "
                             f"training probe has at most n_R − 1 = {n_ref - 1} neighbours")
        out.append(int(k))
    return sorted(set(out))


def _labels(y: Any) -> np.ndarray:
    """Labels (numpy or torch) as int64, checked 1-D, integer, non-negative."""
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    return check_labels(y, int(y.shape[0]) if y.ndim == 1 else -1)


def _classes(y_ref: np.ndarray, y_q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Class positions of the reference and held-out labels in their sorted union."""
    classes, pos = np.unique(np.concatenate([y_ref, y_q]), return_inverse=True)
    return pos[:y_ref.size].astype(np.int64), pos[y_ref.size:].astype(np.int64), classes.size


def vote_accuracy(idx: np.ndarray, y_ref: Any, y_rows: Any, k: int | None = None) -> float:
    """mean_q 1[vote(first k of idx[q]) = y_rows[q]] [ours]: ``idx`` (m × ≥k) holds reference
    row numbers; the vote is the most frequent reference label, ties to the smaller label."""
    idx = np.asarray(idx)[:, :k]
    y_ref, y_rows = _labels(y_ref), check_labels(_labels(y_rows), idx.shape[0])
    if idx.shape[0] == 0:
        return float("nan")
    pos_ref, pos_q, n_classes = _classes(y_ref, y_rows)
    return float((majority_vote(pos_ref[idx], n_classes) == pos_q).mean())


def purity(idx: np.ndarray, y_ref: Any, y_rows: Any, k: int | None = None) -> float:
    """mean_q |{j ∈ first k of idx[q] : y_j = y_q}| / k [ours]."""
    idx = np.asarray(idx)[:, :k]
    y_ref, y_rows = _labels(y_ref), check_labels(_labels(y_rows), idx.shape[0])
    if idx.shape[0] == 0:
        return float("nan")
    return float((y_ref[idx] == y_rows[:, None]).mean())


def agreement(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None) -> float:
    """mean_q |N_a(q) ∩ N_b(q)| / |N_a(q) ∪ N_b(q)| = mean_q m_q / (2k − m_q) of the first k
    columns of two held-out → reference graphs (NNTS on the held-out rows) [ours, after
    Hryniowski & Wong]."""
    a, b = np.asarray(idx_a), np.asarray(idx_b)
    k = min(a.shape[1], b.shape[1]) if k is None else int(k)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"agreement: {a.shape[0]} and {b.shape[0]} rows; both graphs must "
                         "place the same held-out rows")
    if a.shape[0] == 0:
        return float("nan")
    a, b = np.ascontiguousarray(a[:, :k], np.int64), np.ascontiguousarray(b[:, :k], np.int64)
    return float(jaccard_from_overlap(overlap_counts(a, b), k).mean())


def gap(train_idx: np.ndarray, heldout_idx: np.ndarray, y_ref: Any, y_heldout: Any,
        k: int | None = None) -> float:
    """``placement_gap`` = vote accuracy of the reference rows among their leave-one-out
    neighbours ``train_idx`` − that of the held-out rows among their reference neighbours
    ``heldout_idx`` (a per-layer generalisation gap) [ours]."""
    return (vote_accuracy(train_idx, y_ref, y_ref, k)
            - vote_accuracy(heldout_idx, y_ref, y_heldout, k))


@dataclass(frozen=True)
class HookPlacement:
    """The graphs of one hook at the largest k: ``heldout`` (m × k, held-out → reference rows),
    ``train`` (n_R × k, the training probe's leave-one-out graph); ``stats`` of the search."""

    hook: str
    heldout: np.ndarray
    train: np.ndarray
    stats: dict


def place_hook(hook: str, reference: Any, heldout: Any, k: int, distance: str = "euclidean",
               device: str = "cpu", dtype: Any = "float32",
               block_rows: int | None = None) -> HookPlacement:
    """Both exact graphs of one hook at ``k`` (module docstring): the held-out rows' k nearest
    reference rows and the reference rows' k nearest other reference rows."""
    from rra.knn import knn_exact

    n_ref = int(np.shape(reference)[0])
    k = check_placement_k(k, n_ref)[0]
    idx, _, stats = cross_neighbours(reference, heldout, k, distance, block_rows=block_rows,
                                     device=device, dtype=dtype)
    train, _ = knn_exact(reference, k, distance, device=device, dtype=dtype, progress=False)
    return HookPlacement(hook=hook, heldout=idx, train=np.asarray(train, dtype=np.int64),
                         stats=stats)


def placement_rows(hooks: Sequence[str], reference: Mapping[str, Any] | Callable[[str], Any],
                   heldout: Mapping[str, Any] | Callable[[str], Any], y_ref: Any, y_heldout: Any,
                   ks: Iterable[int] | int, distance: str = "euclidean", scale: str = "full",
                   device: str = "cpu", dtype: Any = "float32",
                   positions: Mapping[str, int] | None = None, bootstrap: Any = None,
                   unc: Any = None) -> list[dict]:
    """The placement rows of ``hooks`` (forward order) at every k (module docstring).

    ``reference`` / ``heldout``: hook → embedding (n_R × d_h / m × d_h), a mapping or a
    function (read one hook at a time; only the previous hook's held-out graph is kept for the
    agreement). ``positions``: hook → forward position (default: its place in ``hooks``).
    ``bootstrap``: ``metrics.bootstrap`` (:class:`rra.metrics.uncertainty.Settings`; default
    B = 200; B = 0: the ``lo``, ``hi``, ``null``, ``p`` columns stay null); ``unc``: a
    :class:`rra.metrics.intervals.PlacementUncertainty` to share (its Monte-Carlo vote chances)
    between calls with the same labels and settings.
    """
    from rra.metrics.intervals import PlacementUncertainty
    from rra.metrics.uncertainty import Settings, check_rows, check_self

    get_ref = reference if callable(reference) else reference.__getitem__
    get_q = heldout if callable(heldout) else heldout.__getitem__
    y_ref, y_q = _labels(y_ref), _labels(y_heldout)
    ks = check_placement_k(ks, y_ref.size)
    pos = dict(positions) if positions is not None else {h: i for i, h in enumerate(hooks)}
    settings = Settings.of(bootstrap)
    if unc is None and settings.enabled and y_q.size:
        unc = PlacementUncertainty(y_ref, y_q, settings)
    pos_ref, pos_q, n_classes = _classes(y_ref, y_q)
    rows: list[dict] = []
    prev: HookPlacement | None = None
    for hook in hooks:
        r, q = get_ref(hook), get_q(hook)
        if np.shape(r)[0] != y_ref.size or np.shape(q)[0] != y_q.size:
            raise ValueError(f"hook {hook!r}: {np.shape(r)[0]} reference and {np.shape(q)[0]} "
                             f"held-out rows, but {y_ref.size} and {y_q.size} labels")
        cur = place_hook(hook, r, q, ks[-1], distance, device=device, dtype=dtype)
        where = f"placement, hook {hook!r} at scale {scale}"
        check_rows(y_q.size, {"the held-out graph": cur.heldout}, where)
        check_rows(y_ref.size, {"the training probe's graph": cur.train}, where)
        base = {"hook_a": hook, "pos_a": pos[hook], "scale_a": scale, "scale_b": scale}
        for k in ks:
            check_self(cur.heldout, k, f"{where}, k = {k}")
            acc = vote_accuracy(cur.heldout, y_ref, y_q, k)
            train = vote_accuracy(cur.train, y_ref, y_ref, k)
            values = {"placement_acc": acc, "placement_train_acc": train,
                      "placement_gap": train - acc,
                      "placement_purity": purity(cur.heldout, y_ref, y_q, k)}
            st: dict[str, dict] = {}
            if unc is not None:
                ok_q = majority_vote(pos_ref[cur.heldout[:, :k]], n_classes) == pos_q
                ok_r = majority_vote(pos_ref[cur.train[:, :k]], n_classes) == pos_ref
                st["placement_acc"], s_acc = unc.heldout_acc_stats(ok_q, k)
                st["placement_train_acc"], s_train = unc.train_acc_stats(ok_r, k)
                st["placement_gap"] = unc.gap_stats(train - acc, s_train, s_acc)
                shares = (y_ref[cur.heldout[:, :k]] == y_q[:, None]).mean(axis=1)
                st["placement_purity"] = unc.purity_stats(shares, k)
            for name, value in values.items():
                rows.append({**base, "measure": name, "k": k, "value": value,
                             **st.get(name, {})})
            if prev is not None:
                j = _row_jaccard(prev.heldout, cur.heldout, k)
                rows.append({"hook_a": prev.hook, "pos_a": pos[prev.hook], "hook_b": hook,
                             "pos_b": pos[hook], "scale_a": scale, "scale_b": scale,
                             "measure": "placement_agreement", "k": k,
                             "value": float(j.mean()) if j.size else float("nan"),
                             **(unc.agreement_stats(j, k) if unc is not None and j.size
                                else {})})
        prev = cur
    return rows


def _row_jaccard(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per held-out row m_q / (2k − m_q) of the first k columns of two graphs (the terms of
    :func:`agreement`)."""
    a, b = np.ascontiguousarray(a[:, :k], np.int64), np.ascontiguousarray(b[:, :k], np.int64)
    return jaccard_from_overlap(overlap_counts(a, b), k)


def placement_table(hooks: Sequence[str], reference: Mapping[str, Any] | Callable[[str], Any],
                    heldout: Mapping[str, Any] | Callable[[str], Any], y_ref: Any,
                    y_heldout: Any, ks: Iterable[int] | int, distance: str = "euclidean",
                    scale: str = "full", run: Mapping[str, Any] | None = None,
                    device: str = "cpu", dtype: Any = "float32",
                    positions: Mapping[str, int] | None = None, bootstrap: Any = None,
                    unc: Any = None):
    """:func:`placement_rows` as a tidy polars table with the columns of
    :data:`rra.metrics.tables.SCHEMA`; ``run``: constant identity columns (dataset, model, …,
    probe); ``distance`` and ``backend`` (``exact``) are filled in; ``bootstrap``, ``unc``: as
    in :func:`placement_rows`."""
    from rra.metrics.tables import frame

    rows = placement_rows(hooks, reference, heldout, y_ref, y_heldout, ks, distance, scale,
                          device=device, dtype=dtype, positions=positions,
                          bootstrap=bootstrap, unc=unc)
    return frame(rows, {**dict(run or {}), "distance": distance, "backend": "exact"})


def placement_stage(reference_dir: Any, heldout_dir: Any, out_dir: Any, *, ks: Iterable[int],
                    distance: str = "euclidean", run: Mapping[str, Any] | None = None,
                    device: str = "cpu", bootstrap: Any = None) -> dict:
    """The E11 stage: the placement table of one run from its embeddings of the reference
    (training) probe and of the held-out probe (two ``rra.embed`` folders of the same
    checkpoint, hooks and scales), read memory-mapped one hook at a time.

    Writes ``out_dir/placement.parquet`` (and ``.csv`` when small; :func:`placement_table` at
    every scale the folders hold, hooks in forward order) and, last, ``manifest.json``: k,
    distance, run, both probes and sizes, the SHA-256 of both embed manifests, seconds and
    provenance. ``run``: the identity columns (its ``probe`` is the held-out probe's).
    ``bootstrap``: ``metrics.bootstrap`` (:func:`placement_rows`; one bootstrap and one set of
    vote chances serve every scale)."""
    import dataclasses
    import time
    from pathlib import Path

    import polars as pl

    from rra.io import load_npy, provenance, sha256_artifact, write_json, write_table
    from rra.metrics.tables import frame

    t0 = time.perf_counter()
    ref_dir, q_dir, out = Path(reference_dir), Path(heldout_dir), Path(out_dir)
    manifests, files = _embed_pair(ref_dir, q_dir)
    y_ref = load_npy(ref_dir / "labels.npy", mmap=False)
    y_q = load_npy(q_dir / "labels.npy", mmap=False)
    ks = check_placement_k(ks, int(np.shape(y_ref)[0]))
    from rra.metrics.intervals import PlacementUncertainty
    from rra.metrics.uncertainty import Settings

    settings = Settings.of(bootstrap)
    unc = (PlacementUncertainty(_labels(y_ref), _labels(y_q), settings)
           if settings.enabled and np.size(y_q) else None)
    order = list(manifests[0]["hooks"])
    tables = []
    for scale in [str(s) for s in manifests[0]["scales"]]:
        hooks = [h for h in order if (h, scale) in files]
        if hooks:
            tables.append(placement_table(
                hooks, lambda h, s=scale: load_npy(ref_dir / files[(h, s)]),
                lambda h, s=scale: load_npy(q_dir / files[(h, s)]), y_ref, y_q, ks, distance,
                scale=scale, run=run, device=device,
                positions={h: i for i, h in enumerate(order)}, bootstrap=settings, unc=unc))
    df = pl.concat(tables) if tables else frame([], {**dict(run or {}), "distance": distance})
    out.mkdir(parents=True, exist_ok=True)
    manifest = dict(
        tables={"placement": write_table(df, out / "placement")}, ks=ks, distance=distance,
        run=dict(run or {}), hooks=order, scales=[str(s) for s in manifests[0]["scales"]],
        reference={"probe": ref_dir.name, "n": int(y_ref.size),
                   "embed_manifest_sha256": sha256_artifact(ref_dir / "manifest.json")},
        heldout={"probe": q_dir.name, "n": int(y_q.size),
                 "embed_manifest_sha256": sha256_artifact(q_dir / "manifest.json")},
        bootstrap=dataclasses.asdict(settings), seconds=round(time.perf_counter() - t0, 3),
        **provenance(config={"ks": ks, "distance": distance,
                             "bootstrap": dataclasses.asdict(settings)}))
    write_json(out / "manifest.json", manifest)
    return manifest


def _embed_pair(ref_dir: Any, q_dir: Any) -> tuple[tuple[dict, dict], dict]:
    """Both embed manifests and the ``(hook, scale) → file`` of their (equal) entries; an error
    names both folders when the held-out embeddings are not of the reference's checkpoint,
    hooks, scales or widths."""
    from rra.io import read_json

    ref, held = read_json(ref_dir / "manifest.json"), read_json(q_dir / "manifest.json")
    both = f"the reference embeddings {ref_dir} and the held-out embeddings {q_dir}"
    fix = "embed both probes with the same run, hooks (embed.input) and scales"
    if list(ref["hooks"]) != list(held["hooks"]):
        raise ValueError(f"{both} have different hooks ({list(ref['hooks'])} vs "
                         f"{list(held['hooks'])}); {fix}")
    if ref.get("checkpoint_sha256") != held.get("checkpoint_sha256"):
        raise ValueError(f"{both} come from different checkpoints (checkpoint_sha256 differs); "
                         f"{fix}")
    shapes = [{(e["hook"], str(e["scale"])): (e["file"], tuple(e["shape"][1:]))
               for e in m["entries"]} for m in (ref, held)]
    if shapes[0] != shapes[1]:
        differ = sorted(set(shapes[0].items()) ^ set(shapes[1].items()))
        raise ValueError(f"{both} have different (hook, scale) embeddings or widths "
                         f"(e.g. {differ[0][0]}); {fix}")
    return (ref, held), {key: f for key, (f, _) in shapes[0].items()}
