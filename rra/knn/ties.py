"""The exact order of equal and nearly equal distances. [ours]

The exact searches order a row's neighbours by ``(e_ij, j)``: the squared distance
``e_ij = ‖z_i − z_j‖²``, ties to the smaller row index. Their float64 value ``ê_ij``
(``rra.knn.kernels._sqdist``: direct differences, a fixed summation order) is within

- euclidean: ``B(ê) = 1.01 γ_{d+3} ê + 4 d 2⁻¹⁰⁷⁴`` (a difference, a square and a sum of d
  non-negative terms, each rounded; the last term covers underflow),
- cosine: ``B = 12.2 γ_{d+3}`` (``z = x / ‖x‖`` rounded through the norm and the division,
  ``|Δ ẑ_t| ≤ γ_{d+3} (|z_it| + |z_jt|)``; with ``‖z‖ = 1`` and ``e ≤ 4`` the error of the sum is
  at most ``8 ρ + 4 ρ² + 4 γ_{d+1} (1 + 2ρ + ρ²)``, ρ = γ_{d+3})

of ``e_ij`` (``γ_m = m u / (1 − m u)``, u = 2⁻⁵³), and both ``ê − B(ê)`` and ``ê + B(ê)`` grow
with ``ê``. So two neighbours whose values differ by more than the sum of their bounds are in
their true order; those closer are *near ties*: mathematically equal distances that round
differently (collinear rows under cosine, coordinates permuted), or different ones that round
together. Without this module they were ordered by their rounding.

Here a row's neighbours, sorted by ``(ê, j)``, are cut into *groups*: maximal runs in which each
value is within the bounds of the next. Values in different groups are in their true order.
Inside a group of rows that are not all identical (identical rows have equal distances and
equal values, already ordered by index), the order is decided by exact integer arithmetic on the
stored values (every float is ``M · 2^E``: scaled to integers, the squared distance, or under
cosine the key ``−sign(p) p² / ‖x_j‖²`` with ``p = x_i·x_j``, are exact), for every row of the
group, identical ones included: a pair of identical rows does not cut a group, since their
common distance can equal, or lie on either side of, another member's. If a group reaches
past the k-th place, every row of the probe within the bounds is a candidate: the row's float64
distances to all rows are recomputed first (also for a group of identical rows that reaches the
last searched column: a row not searched may be within its bounds).

Cost: nothing for rows without near ties (a vectorised check of adjacent values); rows with
one pay exact arithmetic for the rows of their groups (Python integers, d operations each) and,
at the k-th place, one pass of n float64 distances.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np

from rra.knn.common import Points

U64 = 2.0 ** -53


def _gamma(m: int) -> float:
    return m * U64 / (1 - m * U64)


def bound_terms(d: int, distance: str) -> tuple[float, float]:
    """``(rel, abs)`` with ``B(ê) = rel · ê + abs`` (module docstring)."""
    if distance == "cosine":
        return 0.0, 12.2 * _gamma(d + 3)
    return 1.01 * _gamma(d + 3), 4 * d * 2.0 ** -1074


def sqdist_bound(sqd: np.ndarray, d: int, distance: str) -> np.ndarray:
    """``B(ê)``: how far the float64 squared distances ``sqd`` can be from the exact ones
    (module docstring); same shape as ``sqd``."""
    rel, abs_ = bound_terms(d, distance)
    return rel * np.asarray(sqd, dtype=np.float64) + abs_


def near_pairs(points: Points, cols: np.ndarray, sqd: np.ndarray,
               open_end: bool = True) -> np.ndarray:
    """``near[r, t]``: positions ``t`` and ``t + 1`` of row r (sorted by (ê, j)) are in one group
    (a maximal run of values each within the bounds of the next) that needs exact ordering: one
    with at least two rows that are not identical. A group made only of identical rows (equal
    distances, equal values, already ordered by index) is left out; one with identical rows and
    others is kept whole, the identical rows included (their exact distances may still come
    before or after the others'). ``open_end``: the rows ``cols`` are only the first columns of
    the sorted row, so a group of identical rows that reaches the last column is kept too (a row
    not listed may be within its bounds; the caller recomputes the whole row)."""
    bound = sqdist_bound(sqd, points.d, points.distance)
    near = (sqd[:, 1:] - sqd[:, :-1]) <= bound[:, 1:] + bound[:, :-1]
    rows, ts = np.nonzero(near)  # row-major: each group's pairs are consecutive
    if rows.size:
        same = identical_rows(np.asarray(points.x), cols[rows, ts], cols[rows, ts + 1])
        if same.any():
            start = np.ones(rows.size, dtype=bool)
            start[1:] = (rows[1:] != rows[:-1]) | (ts[1:] != ts[:-1] + 1)
            group = np.cumsum(start) - 1
            mixed = np.bincount(group, weights=~same) > 0
            if open_end:
                mixed[group[ts == near.shape[1] - 1]] = True
            drop = ~mixed[group]
            near[rows[drop], ts[drop]] = False
    return near


def identical_rows(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[p]``: rows ``a[p]`` and ``b[p]`` of ``x`` hold the same bytes. Few pairs are
    compared directly; many (duplicate-heavy embeddings: every pair of a row's identical
    neighbours) through a 128-bit BLAKE2 digest of each row involved, computed once."""
    if a.size <= 256:
        return np.array([np.array_equal(x[i], x[j]) for i, j in zip(a, b)], dtype=bool)
    involved, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    digests = {}
    ids = np.empty(involved.size, dtype=np.int64)
    for t, r in enumerate(involved):
        key = hashlib.blake2b(np.ascontiguousarray(x[r]).tobytes(), digest_size=16).digest()
        ids[t] = digests.setdefault(key, len(digests))
    return ids[inverse[:a.size]] == ids[inverse[a.size:]]


def _as_integers(rows: np.ndarray) -> list[list[int]]:
    """The values of ``rows`` (a 2-D float or integer array) as Python integers ``v · 2^-S``
    with one shift S for all of them (exact: every float is ``M · 2^E``)."""
    if np.issubdtype(rows.dtype, np.integer):
        return [[int(v) for v in r] for r in rows.tolist()]
    mant, expo = np.frexp(rows.astype(np.float64))
    m = (mant * 2.0 ** 53).astype(np.int64)  # exact: |mant| < 1, 53 bits
    e = expo.astype(np.int64) - 53
    shift = int(e[m != 0].min()) if (m != 0).any() else 0
    return [[int(mi) << int(ei - shift) if mi else 0 for mi, ei in zip(mr, er)]
            for mr, er in zip(m.tolist(), e.tolist())]


def exact_keys(points: Points, i: int, cols: np.ndarray) -> list:
    """Exact sort keys of the distances from row ``i`` to the rows ``cols`` (smaller =
    nearer): the squared distance (scaled to an integer) under euclidean, ``−sign(p) p² /
    ‖x_j‖²`` with ``p = x_i·x_j`` under cosine (the order of ``1 − cos``)."""
    x = np.asarray(points.x)
    cols = np.asarray(cols, dtype=np.int64)
    unique, inverse = np.unique(cols, return_inverse=True)
    ints = _as_integers(np.concatenate([x[i][None], x[unique]]))
    xi = ints[0]
    keys = []
    for xj in ints[1:]:
        if points.distance == "cosine":
            p = sum(a * b for a, b in zip(xi, xj))
            keys.append(Fraction(-(1 if p > 0 else -1) * p * p, sum(b * b for b in xj)))
        else:
            keys.append(sum((a - b) * (a - b) for a, b in zip(xi, xj)))
    return [keys[t] for t in inverse]


def _groups(near_row: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of positions joined by near pairs."""
    out = []
    t = 0
    while t < near_row.size:
        if near_row[t]:
            s = t
            while t < near_row.size and near_row[t]:
                t += 1
            out.append((s, t + 1))
        t += 1
    return out


def order_row(points: Points, i: int, cols: np.ndarray, sqd: np.ndarray, k: int,
              near_row: np.ndarray | None = None,
              set_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of row ``i``'s neighbours ``cols`` (sorted by (ê, j), with values
    ``sqd``) in exact (distance, index) order (``set_only``: only the set is exact, the groups
    inside it keep their float64 order). ``cols`` must hold every row that can be among the k
    nearest (the caller checks that its last group ends before it does); without ``near_row``
    they are the whole row (``near_pairs`` with ``open_end=False``)."""
    if near_row is None:
        near_row = near_pairs(points, cols[None], sqd[None], open_end=False)[0]
    cols, sqd = cols.copy(), sqd.copy()
    for s, e in _groups(near_row):
        if s >= k:
            break
        if set_only and e <= k:
            continue
        keys = exact_keys(points, i, cols[s:e])
        order = sorted(range(e - s), key=lambda t: (keys[t], cols[s + t]))
        cols[s:e] = cols[s:e][order]
        sqd[s:e] = sqd[s:e][order]
    return cols[:k], sqd[:k]


def full_row(points: Points, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i``'s float64 squared distances to every other row, sorted by (ê, j)."""
    cols = np.delete(np.arange(points.n, dtype=np.int64), i)
    sqd = points.sqdist(np.array([i]), cols[None])[0]
    order = np.lexsort((cols, sqd))
    return cols[order], sqd[order]


def resolve_ties(points: Points, queries: np.ndarray, idx: np.ndarray, sqd: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The graph rows ``(idx, sqd)`` of ``queries`` (sorted by (ê, j); ``k + 1`` columns, or
    ``k`` when k = n − 1) cut to ``k`` columns in exact order. Returns ``(idx, sqd, rows)``,
    ``rows`` = how many rows had near ties to resolve."""
    near = near_pairs(points, idx, sqd, open_end=idx.shape[1] > k)
    flagged = np.flatnonzero(near[:, :k].any(axis=1)) if near.shape[1] else np.empty(0, int)
    out_idx = np.array(idx[:, :k])
    out_sqd = np.array(sqd[:, :k])
    for r in flagged:
        i = int(queries[r])
        cols, vals, near_row = idx[r], sqd[r], near[r]
        if idx.shape[1] > k and near_row[k - 1]:  # a group crosses the k-th place
            cols, vals = full_row(points, i)
            near_row = None
        out_idx[r], out_sqd[r] = order_row(points, i, cols, vals, k, near_row)
    return out_idx, out_sqd, int(flagged.size)


def resolve_set(points: Points, i: int, k: int) -> np.ndarray:
    """The exact k nearest rows of row ``i`` by (distance, index), as a set (any order)."""
    cols, vals = full_row(points, i)
    return order_row(points, i, cols, vals, k, set_only=True)[0]
