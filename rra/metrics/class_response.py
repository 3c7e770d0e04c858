"""Class response: the class composition of kNN neighbourhoods (methods.md §3).

[ours, after ClassRepSim's "class representational response"]. For one kNN graph (one hook and
scale) with labels y:

    P[c, c'] = mean over rows i with y_i = c of |{j ∈ K[i] : y_j = c'}| / k     (rows sum to 1)

Summaries: kNN class purity = mean over classes of P[c, c] (class-balanced, the methods'
definition); row-weighted purity = mean over rows of the fraction of same-class neighbours
(= purity when classes are balanced); kNN-vote accuracy = fraction of rows whose majority
neighbour label (ties to the smaller label) equals their own label, overall and per class. The
off-diagonal entries of P are the per-class-pair confusion mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rra.knn.sets import prefix
from rra.metrics.common import check_labels


@dataclass(frozen=True)
class ClassResponse:
    """Class response of one graph.

    classes: (C,) int64 labels indexing the rows/columns of P (sorted labels present, or
        0 … num_classes − 1).
    P: C × C float64 class composition (see module docstring); a class without rows has a
        row of NaN.
    class_sizes: (C,) int64 rows per class.
    purity: mean over classes with rows of P[c, c] [ours; the methods' "kNN class purity"].
    row_weighted_purity: mean over rows of |{j ∈ K[i] : y_j = y_i}| / k [ours].
    vote_accuracy: fraction of rows whose majority neighbour label (ties to the smaller label)
        equals their own [ours].
    vote_accuracy_per_class: (C,) the same over the rows of each class (NaN without rows).
    k: neighbours per row used.
    row_fractions: n × C float64, row i's share of neighbours in each class (P's rows are its
        class means); row_correct: (n,) bool, row i's vote is its own label. The per-row
        quantities the bootstrap resamples (``rra.metrics.uncertainty``).
    """

    classes: np.ndarray
    P: np.ndarray
    class_sizes: np.ndarray
    purity: float
    row_weighted_purity: float
    vote_accuracy: float
    vote_accuracy_per_class: np.ndarray
    k: int
    row_fractions: np.ndarray | None = None
    row_correct: np.ndarray | None = None


def class_positions(labels: np.ndarray, num_classes: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Return (classes, position of each row's label in classes).

    classes = sorted labels present, or 0 … num_classes − 1 when ``num_classes`` is given (labels
    must then lie in that range).
    """
    if num_classes is None:
        classes, pos = np.unique(labels, return_inverse=True)
        return classes.astype(np.int64), pos.astype(np.int64)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"labels: label {labels.max()} is outside range(num_classes = "
                         f"{num_classes})")
    return np.arange(num_classes, dtype=np.int64), labels.astype(np.int64)


def majority_vote(neighbour_classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Per row, the most frequent value of an n × k array of class positions; ties to the
    smaller value. O(n·k log(n·k)) time, O(n·k) memory (no n × C table)."""
    n, k = neighbour_classes.shape
    keys = (np.arange(n, dtype=np.int64)[:, None] * num_classes + neighbour_classes).ravel()
    pairs, counts = np.unique(keys, return_counts=True)  # sorted by row, then class
    row, cls = pairs // num_classes, pairs % num_classes
    order = np.lexsort((cls, -counts, row))  # by row, then larger count, then smaller class
    row_sorted = row[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = row_sorted[1:] != row_sorted[:-1]
    return cls[order[first]]  # every row has ≥ 1 neighbour, so one entry per row, in order


def class_response(idx: np.ndarray, labels: np.ndarray, k: int | None = None,
                   num_classes: int | None = None) -> ClassResponse:
    """Class response P of one kNN graph and its purity / vote summaries [ours].

    P[c, c'] = mean_{i: y_i = c} |{j ∈ K[i] : y_j = c'}| / k. ``k=None`` uses all columns.
    """
    g = prefix(idx, k, "graph")
    n, k_used = g.shape
    y = check_labels(labels, n)
    classes, pos = class_positions(y, num_classes)
    n_classes = classes.size
    nbr = pos[g]  # n × k class positions of the neighbours
    row_counts = np.bincount((np.arange(n, dtype=np.int64)[:, None] * n_classes + nbr).ravel(),
                             minlength=n * n_classes).reshape(n, n_classes)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, pos, row_counts)
    sizes = np.bincount(pos, minlength=n_classes).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        P = counts / (k_used * sizes[:, None].astype(np.float64))
        correct = majority_vote(nbr, n_classes) == pos
        per_class = np.bincount(pos, weights=correct, minlength=n_classes) / sizes
    present = sizes > 0
    return ClassResponse(
        classes=classes, P=P, class_sizes=sizes,
        purity=float(np.diag(P)[present].mean()),
        row_weighted_purity=float(np.trace(counts) / (n * k_used)),
        vote_accuracy=float(correct.mean()),
        vote_accuracy_per_class=per_class, k=int(k_used),
        row_fractions=row_counts / float(k_used), row_correct=correct)
