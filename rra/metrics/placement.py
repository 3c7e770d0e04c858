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

Not in :data:`rra.metrics.registry.MEASURES` (yet): every registered measure reads the stored
graphs of one probe (its ``kind``), and every registered table is computed by
``rra.metrics.tables.run_tables`` from a run's embed/kNN folders and named in
``config/schema.yaml``'s analysis tables. Placement reads a second image set (the held-out
embeddings), which a run's folders do not hold; it is registered when the workflow writes them.
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
                   positions: Mapping[str, int] | None = None) -> list[dict]:
    """The placement rows of ``hooks`` (forward order) at every k (module docstring).

    ``reference`` / ``heldout``: hook → embedding (n_R × d_h / m × d_h), a mapping or a
    function (read one hook at a time; only the previous hook's held-out graph is kept for the
    agreement). ``positions``: hook → forward position (default: its place in ``hooks``).
    """
    get_ref = reference if callable(reference) else reference.__getitem__
    get_q = heldout if callable(heldout) else heldout.__getitem__
    y_ref, y_q = _labels(y_ref), _labels(y_heldout)
    ks = check_placement_k(ks, y_ref.size)
    pos = dict(positions) if positions is not None else {h: i for i, h in enumerate(hooks)}
    rows: list[dict] = []
    prev: HookPlacement | None = None
    for hook in hooks:
        r, q = get_ref(hook), get_q(hook)
        if np.shape(r)[0] != y_ref.size or np.shape(q)[0] != y_q.size:
            raise ValueError(f"hook {hook!r}: {np.shape(r)[0]} reference and {np.shape(q)[0]} "
                             f"held-out rows, but {y_ref.size} and {y_q.size} labels")
        cur = place_hook(hook, r, q, ks[-1], distance, device=device, dtype=dtype)
        base = {"hook_a": hook, "pos_a": pos[hook], "scale_a": scale, "scale_b": scale}
        for k in ks:
            acc = vote_accuracy(cur.heldout, y_ref, y_q, k)
            train = vote_accuracy(cur.train, y_ref, y_ref, k)
            for name, value in (("placement_acc", acc), ("placement_train_acc", train),
                                ("placement_gap", train - acc),
                                ("placement_purity", purity(cur.heldout, y_ref, y_q, k))):
                rows.append({**base, "measure": name, "k": k, "value": value})
            if prev is not None:
                rows.append({"hook_a": prev.hook, "pos_a": pos[prev.hook], "hook_b": hook,
                             "pos_b": pos[hook], "scale_a": scale, "scale_b": scale,
                             "measure": "placement_agreement", "k": k,
                             "value": agreement(prev.heldout, cur.heldout, k)})
        prev = cur
    return rows


def placement_table(hooks: Sequence[str], reference: Mapping[str, Any] | Callable[[str], Any],
                    heldout: Mapping[str, Any] | Callable[[str], Any], y_ref: Any,
                    y_heldout: Any, ks: Iterable[int] | int, distance: str = "euclidean",
                    scale: str = "full", run: Mapping[str, Any] | None = None,
                    device: str = "cpu", dtype: Any = "float32",
                    positions: Mapping[str, int] | None = None):
    """:func:`placement_rows` as a tidy polars table with the columns of
    :data:`rra.metrics.tables.SCHEMA`; ``run``: constant identity columns (dataset, model, …,
    probe); ``distance`` and ``backend`` (``exact``) are filled in."""
    from rra.metrics.tables import frame

    rows = placement_rows(hooks, reference, heldout, y_ref, y_heldout, ks, distance, scale,
                          device=device, dtype=dtype, positions=positions)
    return frame(rows, {**dict(run or {}), "distance": distance, "backend": "exact"})
