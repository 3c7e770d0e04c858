"""Exact k nearest *reference* rows of query rows from another set (E11's held-out placement).
[ours: the cross search; its steps, error bound and certificate are those of the per-block
search of ``rra.knn.exact`` (docs/methods.md, "The exact search and its error bound")]

For a reference set R (n_R × d) and queries Q (m × d), both prepared like the study's graphs
(``rra.knn.common.prepare_points``: ``z = x`` under euclidean, ``z = x / ‖x‖`` under cosine):

    N(q) = the k rows j of R with the smallest ‖z_q − z_j‖, sorted by (distance, j)

so ties — at the k-th place too — go to the smaller reference index, by the exact distance.
No self is excluded (q is not a row of R), so 1 ≤ k ≤ n_R; a query equal to a reference row
has that row at distance 0.

Why not ``exact_neighbours``: it searches rows of one set among *all* rows of that set, so
stacking R and Q would let held-out rows be each other's neighbours. Here the same steps run
with the reference rows as keys and the queries as the (foreign) query rows:

1. centre every row by the *reference* mean, ``c = fl(z − μ_R)`` (``kernels.centred_keys``);
2. per block of queries, products ``o_qj = c_q·c_j − ‖c_j‖²/2`` against every reference row
   (torch, float32 or float64, any device);
3. candidates: the p = k + 1 + ``candidate_margin(k)`` largest (``torch.topk``), τ_q the
   smallest of them (no other row's value exceeds it);
4. the candidates' float64 squared distances by direct differences (``Points.sqdist``, the
   stored graphs' values), sorted by (ê, j), k + 1 kept;
5. certificate: every non-candidate has ``e ≥ ‖c_q‖² − 2 τ_q − γ (‖c_q‖ + R)²`` (R the largest
   reference ‖c‖, γ of ``rra.knn.exact.error_gamma``); it must exceed the (k + 1)-th value ê plus
   its float64 bound (``rra.knn.ties.sqdist_bound``: a little stricter than the graphs'
   search), else the row gets all n_R distances.

Near ties are put in exact order as in the graphs (``rra.knn.ties``: integer arithmetic on the
stored values; a group that crosses the k-th place recomputes the row against all reference
rows). The result therefore equals a float64 brute force (full distance matrix, lexsort by
(distance, index)) wherever float64 separates the distances, and does not depend on the block
size, device or product dtype.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from rra.knn.common import Points, prepare_points, sort_neighbours
from rra.knn.exact import _product_precision, _torch_dtype, candidate_margin, error_gamma
from rra.knn.ties import near_pairs, order_row, sqdist_bound

__all__ = ["cross_neighbours", "check_cross_k"]


def check_cross_k(k: Any, n_ref: int) -> int:
    """``k`` as an int with ``1 ≤ k ≤ n_ref`` (a query is not a reference row, so all n_ref
    reference rows can be its neighbours)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n_ref:
        raise ValueError(f"k = {k} exceeds the number of reference rows n_R = {n_ref}")
    return k


def _stack(reference: Any, queries: Any, distance: str) -> tuple[Points, int, int]:
    """One ``Points`` over [R; Q] (R first), centred by R's mean; ``(points, n_R, m)``. Both
    parts are validated on their own first, so an error names the part."""
    ref = prepare_points(reference, distance, "reference")
    q = queries.detach().cpu().numpy() if hasattr(queries, "detach") else np.asarray(queries)
    if q.ndim != 2 or q.shape[0] < 1:
        raise ValueError(f"held-out rows must be a 2-D array (m ≥ 1 rows × d features), got "
                         f"shape {q.shape}")
    if q.shape[1] != ref.d:
        raise ValueError(f"held-out rows have {q.shape[1]} features but the reference rows have "
                         f"{ref.d}: both must be embeddings of the same hook")
    # prepare_points needs 2 rows: a single held-out row is checked twice
    prepare_points(q if q.shape[0] >= 2 else np.concatenate([q, q]), distance, "held-out")
    both = prepare_points(np.concatenate([np.asarray(ref.x), q]), distance,
                          "reference and held-out rows")
    return dataclasses.replace(both, mean=ref.mean), ref.n, int(q.shape[0])


def cross_neighbours(reference: Any, queries: Any, k: int, distance: str = "euclidean", *,
                     block_rows: int | None = None, device: str = "cpu",
                     dtype: Any = "float32") -> tuple[np.ndarray, np.ndarray, dict]:
    """The exact k nearest reference rows of every query row (module docstring).

    ``reference``: n_R × d, ``queries``: m × d (numpy or torch; the same hook's embedding).
    Returns ``(idx int64 m × k, squared distances float64 m × k, stats)``; ``idx`` holds
    reference row numbers, each row sorted by (distance, index). ``stats``: ``candidates`` (p),
    ``rows_rechecked`` (certificate failed: all n_R distances), ``rows_tie_resolved``,
    ``exact_pairs``, ``block_rows``, ``device``, ``dtype``, ``seconds``.
    """
    import torch

    from rra.device import pick_device
    from rra.knn import kernels

    t0 = time.perf_counter()
    points, n_ref, m = _stack(reference, queries, distance)
    k = check_cross_k(k, n_ref)
    kk = min(k + 1, n_ref)  # one more: near ties at the k-th place are seen
    d = points.d
    dev = pick_device(device)
    tdtype, u = _product_precision(_torch_dtype(dtype), dev, d)
    gamma = error_gamma(d, u)
    np_dtype = np.float32 if tdtype == torch.float32 else np.float64
    # 1. keys [c_j, −‖c_j‖²/2] of every row (reference and queries), centred by R's mean
    ka = np.empty((n_ref + m, d + 2), dtype=np_dtype)
    keys_np = ka[:, :d + 1]
    sq = np.empty(n_ref + m, dtype=np.float64)
    kernels.centred_keys(np.asarray(points.x), points.kernel_norms, points.mean, keys_np, sq)
    if 4 * sq.max() >= np.finfo(np_dtype).max:
        raise ValueError(f"values too large for {np_dtype.__name__} products (max squared norm "
                         f"{sq.max():.3g} after centring); use dtype='float64'")
    nc = np.sqrt(sq)
    radius = float(nc[:n_ref].max())
    p = min(n_ref, kk + candidate_margin(k))
    keys = torch.from_numpy(np.ascontiguousarray(keys_np[:n_ref])).to(dev)
    b = int(block_rows) if block_rows is not None else max(1, min(4096, (64 << 20) // (
        np.dtype(np_dtype).itemsize * n_ref)))
    if b < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    out_idx = np.empty((m, kk), dtype=np.int64)
    out_sqd = np.empty((m, kk), dtype=np.float64)
    rechecked = exact_pairs = 0
    bound = _Bound(sq, nc, radius, gamma, d, distance)
    for s in range(0, m, b):
        rows = np.arange(s, min(m, s + b), dtype=np.int64)
        qk = torch.from_numpy(np.array(keys_np[n_ref + rows])).to(dev)
        qk[:, d] = 1
        c_idx, c_sqd, n_bad, n_pairs = _block(points, n_ref + rows, qk @ keys.T, p, kk, bound)
        rechecked, exact_pairs = rechecked + n_bad, exact_pairs + n_pairs
        out_idx[rows], out_sqd[rows] = c_idx, c_sqd
    idx, sqd, tied = _resolve(points, n_ref, out_idx, out_sqd, k)
    stats = {"candidates": p, "rows_rechecked": int(rechecked), "rows_tie_resolved": tied,
             "exact_pairs": int(exact_pairs), "block_rows": b, "device": str(dev),
             "dtype": str(tdtype), "seconds": time.perf_counter() - t0}
    return idx, sqd, stats


@dataclasses.dataclass(frozen=True)
class _Bound:
    """What step 5's certificate reads: every row's squared centred norm ``sq`` and norm ``nc``,
    the largest reference norm, γ, d and the distance."""

    sq: np.ndarray
    nc: np.ndarray
    radius: float
    gamma: float
    d: int
    distance: str


def _block(points: Points, qrows: np.ndarray, o, p: int, kk: int,
           bound: _Bound) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Steps 3–5 for one block of queries (``qrows``: their rows in the stacked points) from
    their products ``o`` against every reference row: the first kk by (distance, index), the
    number of rows whose certificate failed (recomputed against all n_R rows) and the number
    of exact distances computed."""
    import torch

    n_ref = o.shape[1]
    all_cols = np.arange(n_ref, dtype=np.int64)
    if p < n_ref:  # 3. candidates and the threshold τ_q
        vals, cand = torch.topk(o, p, dim=1, largest=True, sorted=False)
        cand = cand.cpu().numpy().astype(np.int64)
        tau = vals.min(dim=1).values.cpu().numpy().astype(np.float64)
    else:
        cand = np.broadcast_to(all_cols, (qrows.size, n_ref))
        tau = np.full(qrows.size, -np.inf)
    # 4. exact float64 distances of the candidates, first kk by (ê, j)
    e = points.sqdist(qrows, cand)
    exact_pairs = e.size
    c_idx, c_sqd = sort_neighbours(cand, e, kk)
    # 5. certificate: no non-candidate can come before the kk-th
    last = c_sqd[:, kk - 1]
    lower = bound.sq[qrows] - 2.0 * tau - bound.gamma * (bound.nc[qrows] + bound.radius) ** 2
    bad = np.flatnonzero(~(lower > last + sqdist_bound(last, bound.d, bound.distance)))
    for r in bad:  # all n_R distances
        full = points.sqdist(qrows[r:r + 1], all_cols[None])
        c_idx[r], c_sqd[r] = (v[0] for v in sort_neighbours(all_cols[None], full, kk))
        exact_pairs += n_ref
    return c_idx, c_sqd, int(bad.size), int(exact_pairs)


def _resolve(points: Points, n_ref: int, idx: np.ndarray, sqd: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``rra.knn.ties.resolve_ties`` for query rows against reference rows only: rows with near
    ties among their first k get them in exact order; a group crossing the k-th place
    recomputes the row against every reference row first."""
    near = near_pairs(points, idx, sqd, open_end=idx.shape[1] > k)
    flagged = np.flatnonzero(near[:, :k].any(axis=1)) if near.shape[1] else np.empty(0, int)
    out_idx, out_sqd = np.array(idx[:, :k]), np.array(sqd[:, :k])
    all_cols = np.arange(n_ref, dtype=np.int64)
    for r in flagged:
        i = n_ref + int(r)
        cols, vals, near_row = idx[r], sqd[r], near[r]
        if idx.shape[1] > k and near_row[k - 1]:  # a group crosses the k-th place
            full = points.sqdist(np.array([i]), all_cols[None])
            cols, vals = (v[0] for v in sort_neighbours(all_cols[None], full, n_ref))
            near_row = None
        out_idx[r], out_sqd[r] = order_row(points, i, cols, vals, k, near_row)
    return out_idx, out_sqd, int(flagged.size)
