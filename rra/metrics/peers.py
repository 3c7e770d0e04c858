"""kNN-based peer similarity measures between two neighbour graphs of the same rows (methods.md §3).

Notation: K_a[i], K_b[i] are the neighbour lists of row i in graphs a and b (n × k index arrays,
sorted by (distance, index), self excluded; see ``rra.knn.sets``), both cut to the same k
(default: the smaller stored k); m_i = |K_a[i] ∩ K_b[i]|. Every measure is a mean over rows of
a per-row score; the per-row scores are computed by the private ``_*_rows`` functions.

Each function works in row blocks so that memory stays O(block · k²), O(block · k · d) or
O(block · (n + d)).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
from tqdm import tqdm

from rra.knn.sets import check_pair, overlap_counts
from rra.metrics.common import row_blocks

DISTANCES = ("euclidean", "cosine")


# --------------------------------------------------------------------------------------------
# mutual kNN


def _mutual_knn_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return overlap_counts(a, b) / a.shape[1]


def mutual_knn(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None) -> float:
    """Mutual kNN: mean_i m_i / k.  [source: Huh et al. 2024, "The Platonic Representation
    Hypothesis", mutual nearest-neighbour alignment]

    1 when both graphs have the same neighbour sets, 0 when they share no neighbour.
    Symmetric. Equal to the mean Jaccard only in the limits (J_i = m_i / (2k − m_i)).
    """
    a, b = check_pair(idx_a, idx_b, k)
    return float(_mutual_knn_rows(a, b).mean())


# --------------------------------------------------------------------------------------------
# cycle kNN


def _cycle_knn_rows(a: np.ndarray, b: np.ndarray, max_elements: int = 2**22) -> np.ndarray:
    n, k = a.shape
    block = max(1, max_elements // (k * k))
    hit = np.empty(n, dtype=bool)
    for rows in row_blocks(n, block):
        two_hops = a[b[rows]]                       # (B, k, k): K_a[j] for j in K_b[i]
        own = np.arange(rows.start, rows.stop)[:, None, None]
        hit[rows] = (two_hops == own).any(axis=(1, 2))
    return hit.astype(np.float64)


def cycle_knn(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None) -> float:
    """Cycle kNN: mean_i 1[i ∈ ∪_{j ∈ K_b[i]} K_a[j]].  [source: Huh et al. 2024]

    Row i counts when a walk i → j (a neighbour of i in b) → (a neighbour of j in a) can return
    to i. This is exactly platonic-rep's ``cycle_knn(feats_A, feats_B)``, which evaluates
    ``compute_knn_accuracy(knn_A[knn_B])``: the (n × k × k) array knn_A[knn_B][i] holds
    K_a[j] for j ∈ K_b[i], and a row scores 1 if it contains i. Differences from platonic-rep
    lie only in how the graphs are built (there: inner-product similarity of normalised features,
    no tie rule; here: the stored graphs, any distance). Not symmetric: cycle_knn(a, b) uses b
    for the first hop and a for the second. Computed in row blocks of at most ``2**22 / k²`` rows
    to bound the gathered array.
    """
    a, b = check_pair(idx_a, idx_b, k)
    return float(_cycle_knn_rows(a, b).mean())


# --------------------------------------------------------------------------------------------
# rank similarity


def _rank_similarity_rows(a: np.ndarray, b: np.ndarray, block_rows: int = 8192) -> np.ndarray:
    n, k = a.shape
    # harmonic[m] = v(m) = Σ_{l=1}^{m} 1/l, harmonic[0] = 0 (only used where m_i > 0)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, k + 1))])
    out = np.empty(n)
    for rows in row_blocks(n, block_rows):
        both = np.concatenate([a[rows], b[rows]], axis=1)          # positions < k come from a
        order = np.argsort(both, axis=1, kind="stable")
        ordered = np.take_along_axis(both, order, axis=1)
        # rows hold no repeated index, so a shared index appears exactly twice, side by side,
        # and the stable sort puts its position in a before its position in b
        r, p = np.nonzero(ordered[:, 1:] == ordered[:, :-1])
        rank_a = order[r, p] + 1
        rank_b = order[r, p + 1] - k + 1
        terms = 2.0 / ((1.0 + np.abs(rank_a - rank_b)) * (rank_a + rank_b))
        nb = rows.stop - rows.start
        score = np.bincount(r, weights=terms, minlength=nb)
        m = np.bincount(r, minlength=nb)
        out[rows] = np.where(m > 0, score / np.where(m > 0, harmonic[m], 1.0), 0.0)
    return out


def rank_similarity(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None) -> float:
    """Rank similarity.  [source: Klabunde et al., ReSi benchmark / similarity survey]

    With r_a(j), r_b(j) the 1-based ranks of j in K_a[i] and K_b[i]:

        s_i = (1 / v_i) Σ_{j ∈ K_a[i] ∩ K_b[i]} 2 / ((1 + |r_a(j) − r_b(j)|)(r_a(j) + r_b(j))),
        v_i = Σ_{l=1}^{m_i} 1/l,   s_i = 0 if m_i = 0;   rank_similarity = mean_i s_i.

    v_i is the largest possible sum for m_i shared neighbours (ranks 1..m_i in both lists, in
    the same order), so s_i ∈ [0, 1] and s_i = 1 for identical lists. Symmetric.

    Checked against ReSi's ``repsim/measures/nearest_neighbor.py`` (``_rank_sim_i``,
    ``rank_similarity``): same terms, same normalisation (Σ_{l=1}^{|shared|} 1/l), 0 for no
    shared neighbour, plain mean over rows — the formula agrees. ReSi differs only in the
    neighbour search: sklearn NearestNeighbors (cosine by default) with k + 1 neighbours and the
    first column dropped as "self", which removes a duplicate instead of self when points
    coincide, and leaves tie order to sklearn; here the stored graphs (self excluded, ties by
    index) are used.
    """
    a, b = check_pair(idx_a, idx_b, k)
    return float(_rank_similarity_rows(a, b).mean())


# --------------------------------------------------------------------------------------------
# second-order cosine similarity


def _check_embedding(x: np.ndarray, n: int, name: str) -> np.ndarray:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: embedding must be 2-D (n × d), got shape {x.shape}")
    if x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} rows but the graphs have {n}: embeddings and "
                         "graphs must describe the same probe rows")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: embedding has no features (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: embedding must be real-valued, got {x.dtype}")
    return x


def _load_rows(x: np.ndarray, rows: np.ndarray, distance: str, name: str) -> np.ndarray:
    """Rows of x as float64 (L2-normalised under ``cosine``), with finiteness / norm checks."""
    v = np.asarray(x[rows], dtype=np.float64)
    if not np.isfinite(v).all():
        bad = rows.ravel()[~np.isfinite(v.reshape(rows.size, -1)).all(axis=1)]
        raise ValueError(f"{name}: row {int(bad[0])} contains NaN or inf")
    if distance == "cosine":
        norms = np.sqrt(np.einsum("...d,...d->...", v, v))
        if (norms == 0).any():
            bad = rows.ravel()[(norms == 0).ravel()]
            raise ValueError(f"{name}: row {int(bad[0])} has zero norm; cosine distance is "
                             "undefined")
        v = v / norms[..., None]
    return v


def _distances(x: np.ndarray, rows: slice, cols: np.ndarray, distance: str,
               name: str) -> np.ndarray:
    """d(i, j) for i in ``rows`` and j in ``cols[i - rows.start]`` (B × m), float64, from the
    gathered rows (the "gather" path: B · m · d values read per block)."""
    return _distances_at(x, np.arange(rows.start, rows.stop), cols, distance, name)


def _distances_at(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, distance: str,
                  name: str) -> np.ndarray:
    """:func:`_distances` for arbitrary row indices: d(rows[t], cols[t, m]) (B × m), float64."""
    xi = _load_rows(x, np.asarray(rows), distance, name)                     # B × d
    xj = _load_rows(x, cols, distance, name)                                  # B × m × d
    diff = xj - xi[:, None, :]
    return np.sqrt(np.einsum("bmd,bmd->bm", diff, diff))


# Gram path: per row one product with all n rows (n · d multiply-adds in BLAS) instead of a gather
# of m = 2k rows (m · d values copied, converted to float64 and differenced). Measured on the
# 2-core dev machine (d = 800–12,544, n = 500–2,000) the Gram path is faster up to
# n ≈ 100–150 · m; GRAM_GATHER_RATIO = 64 keeps a margin (BLAS gains more from extra cores than
# the gather does).  [ours]
GRAM_GATHER_RATIO = 64
# d² computed as ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j loses digits to cancellation when it is small
# against ‖x_i‖² + ‖x_j‖²; below this fraction it is recomputed from the differences.  [ours]
_CANCELLATION_REL = 1e-4
SECOND_ORDER_METHODS = ("auto", "gather", "gram")


class _GramDistances:
    """Exact d(i, j) from d² = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j.  [ours]

    float64 throughout; rows are L2-normalised first under ``cosine``. Called with a row block
    and B × m column indices, it forms the block's product with all n rows (B × n) and takes the
    needed columns. The rows are read once up front (finiteness / zero-norm checks, squared norms
    ‖x_i‖² computed once) and kept in memory when n · d ≤ ``max_elements``; otherwise they are
    re-read in tiles of at most ``max_elements`` values. d² is clamped at 0. Entries with
    d² < 1e-4 (‖x_i‖² + ‖x_j‖²), where cancellation could cost more than ~1e-10 of relative
    accuracy (every pair of identical rows among them), are recomputed as ‖x_i − x_j‖² as in the
    gather path, so d = 0 exactly when the (normalised) rows are equal.
    """

    def __init__(self, x: np.ndarray, distance: str, name: str, max_elements: int):
        self.x, self.distance, self.name = x, distance, name
        n, d = x.shape
        self.max_elements = max_elements
        self.tiles = list(row_blocks(n, max(1, max_elements // d)))
        self.sq = np.empty(n)
        self.full: np.ndarray | None = None
        for t in self.tiles:
            v = self._load(t)
            self.sq[t] = np.einsum("ij,ij->i", v, v)
            if len(self.tiles) == 1:
                self.full = v

    def _load(self, rows: slice) -> np.ndarray:
        if self.full is not None:
            return self.full[rows]
        return _load_rows(self.x, np.arange(rows.start, rows.stop), self.distance, self.name)

    def __call__(self, rows: slice, cols: np.ndarray) -> np.ndarray:
        xi = self._load(rows)                                                 # B × d
        prod = np.empty((xi.shape[0], self.x.shape[0]))                       # B × n
        for t in self.tiles:
            prod[:, t] = xi @ self._load(t).T
        cross = np.take_along_axis(prod, cols, axis=1)                        # B × m
        scale = self.sq[rows][:, None] + self.sq[cols]
        d2 = np.maximum(scale - 2.0 * cross, 0.0)
        fix = np.nonzero(d2 < _CANCELLATION_REL * scale)
        if fix[0].size:
            d2[fix] = self._exact_sq(fix[0] + rows.start, cols[fix])
        return np.sqrt(d2)

    def _exact_sq(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """‖x_i − x_j‖² for index pairs (i[t], j[t]), read in chunks of bounded size."""
        out = np.empty(i.size)
        step = max(1, self.max_elements // (2 * self.x.shape[1]))
        for s in range(0, i.size, step):
            c = slice(s, s + step)
            diff = (_load_rows(self.x, i[c], self.distance, self.name)
                    - _load_rows(self.x, j[c], self.distance, self.name))
            out[c] = np.einsum("bd,bd->b", diff, diff)
        return out


DistanceFn = Callable[[slice, np.ndarray], np.ndarray]


def _second_order_rows_from(a: np.ndarray, b: np.ndarray, dist_a: DistanceFn, dist_b: DistanceFn,
                            block: int) -> np.ndarray:
    """Per-row s_i; ``dist_*(rows, cols)`` give the B × m distances d(i, cols[i]) in a and b."""
    n = a.shape[0]
    out = np.empty(n)
    for rows in tqdm(list(row_blocks(n, block)), desc="second-order cosine", disable=None,
                     leave=False):
        union = np.sort(np.concatenate([a[rows], b[rows]], axis=1), axis=1)   # B × 2k
        first = np.ones(union.shape, dtype=bool)
        first[:, 1:] = union[:, 1:] != union[:, :-1]                         # count each j once
        d_a = dist_a(rows, union) * first
        d_b = dist_b(rows, union) * first
        dot = np.einsum("bm,bm->b", d_a, d_b)
        norm_a = np.sqrt(np.einsum("bm,bm->b", d_a, d_a))
        norm_b = np.sqrt(np.einsum("bm,bm->b", d_b, d_b))
        zero_a, zero_b = norm_a == 0, norm_b == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = dot / (norm_a * norm_b)
        cos = np.where(zero_a & zero_b, 1.0, np.where(zero_a | zero_b, 0.0, cos))
        out[rows] = np.clip(cos, 0.0, 1.0)
    return out


def _second_order_cosine_rows(a: np.ndarray, b: np.ndarray, x_a: np.ndarray, x_b: np.ndarray,
                              distance: str, max_elements: int = 2**23,
                              method: str = "auto") -> np.ndarray:
    """Per-row second-order cosine from embeddings.

    ``method``: ``"gather"`` (:func:`_distances`), ``"gram"`` (:class:`_GramDistances`) or
    ``"auto"`` (gram when n ≤ GRAM_GATHER_RATIO · 2k); both exact up to rounding. A row block
    holds at most ``max_elements`` values of the largest intermediate (B · 2k · d gathered values;
    B · n products and B · d rows on the Gram path).
    """
    if method not in SECOND_ORDER_METHODS:
        raise ValueError(f"method must be one of {SECOND_ORDER_METHODS}, got {method!r}")
    n, k = a.shape
    if method == "auto":
        method = "gram" if n <= GRAM_GATHER_RATIO * 2 * k else "gather"
    fns: list[DistanceFn] = []
    width = 1
    for x, name in ((x_a, "x_a"), (x_b, "x_b")):
        if method == "gram":
            fns.append(_GramDistances(x, distance, name, max_elements))
            width = max(width, n, x.shape[1])
        else:
            fns.append(partial(_distances, x, distance=distance, name=name))
            width = max(width, 2 * k * x.shape[1])
    return _second_order_rows_from(a, b, fns[0], fns[1], max(1, max_elements // width))


def second_order_cosine(idx_a: np.ndarray, idx_b: np.ndarray, x_a: np.ndarray, x_b: np.ndarray,
                        k: int | None = None, distance: str = "euclidean") -> float:
    """Second-order cosine similarity.  [source: Hamilton et al. 2016, as used in ReSi]

    For row i, U_i = K_a[i] ∪ K_b[i] (each index once) and the vectors
    u_i = (d_a(i, j))_{j ∈ U_i}, w_i = (d_b(i, j))_{j ∈ U_i} of distances in embedding a and b:

        s_i = ⟨u_i, w_i⟩ / (‖u_i‖ ‖w_i‖),   second_order_cosine = mean_i s_i.

    Distances follow the kNN stage: ``euclidean`` = ‖x_i − x_j‖; ``cosine`` = Euclidean distance
    between L2-normalised rows = sqrt(2 − 2 cos θ_ij). x_a, x_b (n × d_a, n × d_b; may be
    memory-mapped) are read in row blocks of bounded size; the graphs should be the ones built
    from them with the same ``distance``. Symmetric; s_i ∈ [0, 1] since distances are
    non-negative.

    Computation [ours]: when n ≤ 64 · 2k the distances come from one float64 product per row
    block with all rows, ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j (small values recomputed from differences,
    see ``_GramDistances``); otherwise from the gathered neighbour rows. Both are exact up to
    rounding (tested to agree within 1e-9).

    Zero vectors [ours]: if every j ∈ U_i coincides with i in both embeddings (u_i = w_i = 0),
    s_i = 1 (the two embeddings agree); if only one of u_i, w_i is zero, s_i = 0.

    Differences from the sources [ours to follow the spec]: Hamilton et al. compare vectors of
    cosine *similarities* to the union of neighbours; ReSi's ``second_order_cosine_similarity``
    uses cosine *distances* 1 − cos θ (sklearn ``pairwise_distances(metric="cosine")``, with an
    n × n matrix) and always cosine neighbours. We use distances in the graphs' own convention;
    for ``cosine`` our sqrt(2 − 2 cos θ) is a monotone but non-linear transform of ReSi's
    1 − cos θ, so values differ slightly from ReSi's. ReSi returns NaN for zero vectors.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    a, b = check_pair(idx_a, idx_b, k)
    n = a.shape[0]
    x_a = _check_embedding(x_a, n, "x_a")
    x_b = _check_embedding(x_b, n, "x_b")
    return float(_second_order_cosine_rows(a, b, x_a, x_b, distance).mean())


def pairwise_distances(x: np.ndarray, distance: str = "euclidean", *,
                       max_elements: int = 2**23) -> np.ndarray:
    """The dense n × n float64 matrix of d(i, j) under ``distance`` (as in
    :func:`second_order_cosine`), computed like its Gram path: ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j per
    row block, clamped at 0, entries below 1e-4 (‖x_i‖² + ‖x_j‖²) recomputed from differences;
    the diagonal is exactly 0.  [ours]

    For callers that compare one embedding with many (``rra.metrics.tables``): one n² · d product
    per embedding instead of one per pair. Memory: the n × n result plus blocks of at most
    ``max_elements`` values.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    x = _check_embedding(x, x.shape[0], "x")
    n = x.shape[0]
    fn = _GramDistances(x, distance, "x", max_elements)
    block = max(1, max_elements // max(n, x.shape[1]))
    out = np.empty((n, n))
    cols = np.arange(n)
    for rows in row_blocks(n, block):
        out[rows] = fn(rows, np.broadcast_to(cols, (rows.stop - rows.start, n)))
    return out


def second_order_cosine_from_distances(idx_a: np.ndarray, idx_b: np.ndarray, dist_a: np.ndarray,
                                       dist_b: np.ndarray, k: int | None = None) -> float:
    """:func:`second_order_cosine` from precomputed n × n distance matrices (e.g. from
    :func:`pairwise_distances`): the same formula, with d_a(i, j) = dist_a[i, j].  [ours]"""
    a, b = check_pair(idx_a, idx_b, k)
    n = a.shape[0]
    for d, name in ((dist_a, "dist_a"), (dist_b, "dist_b")):
        if getattr(d, "shape", None) != (n, n):
            raise ValueError(f"{name} must be an n × n distance matrix with n = {n} (the graphs' "
                             f"rows), got shape {getattr(d, 'shape', None)}")

    def take(d: np.ndarray) -> DistanceFn:
        return lambda rows, cols: np.take_along_axis(np.asarray(d[rows], dtype=np.float64),
                                                     cols, axis=1)

    return float(_second_order_rows_from(a, b, take(dist_a), take(dist_b), 8192).mean())
