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

1. centre every reference row by the reference mean, ``c = fl(z − μ_R)``
   (``kernels.centred_keys``), once: the keys ``[c_j, −‖c_j‖²/2]`` (n_R × (d + 1));
2. per block of queries (read from ``queries`` one block at a time: memory-mapped inputs stay
   on disk), the block's rows centred by μ_R the same way and their products
   ``o_qj = c_q·c_j − ‖c_j‖²/2`` against every reference row (torch, float32 or float64, any
   device);
3. candidates: the p = k + 1 + ``candidate_margin(k)`` largest (``torch.topk``), τ_q the
   smallest of them (no other row's value exceeds it);
4. the candidates' float64 squared distances by direct differences
   (``rra.knn.cross_kernels.cross_sqdist``: the summation order of the stored graphs' values),
   sorted by (ê, j), k + 1 kept;
5. certificate: every non-candidate has ``e ≥ ‖c_q‖² − 2 τ_q − γ (‖c_q‖ + R)²`` (R the largest
   reference ‖c‖, γ of ``rra.knn.exact.error_gamma``); it must exceed the (k + 1)-th value ê plus
   its float64 bound (``rra.knn.ties.sqdist_bound``: a little stricter than the graphs'
   search), else the row gets all n_R distances.

Near ties are put in exact order as in the graphs (``rra.knn.ties``: integer arithmetic on the
stored values; a group that crosses the k-th place recomputes the row against all reference
rows), per block. The result therefore equals a float64 brute force (full distance matrix,
lexsort by (distance, index)) wherever float64 separates the distances, and does not depend on
the block size, device or product dtype.

Memory: the reference keys (n_R × (d + 1) in the product dtype) and one block's products
(block × n_R); R and Q are never stacked or copied whole (a memory-mapped 60,000 × 4,704 float32
reference is read, not duplicated, beside its keys).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from rra.knn.common import Points, as_matrix, prepare_points, sort_neighbours
from rra.knn.exact import _product_precision, _torch_dtype, candidate_margin, error_gamma
from rra.knn.ties import near_pairs, order_row, sqdist_bound

__all__ = ["cross_neighbours", "check_cross_k"]

#: bytes of one block's products (block rows × n_R) when ``block_rows`` is not given
BLOCK_BYTES = 64 << 20


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


def _query_matrix(queries: Any, d: int) -> np.ndarray:
    """The held-out rows as a 2-D array without a copy (a memory map stays mapped), with m ≥ 1
    rows of the reference's d features."""
    q = queries.detach().cpu().numpy() if hasattr(queries, "detach") else np.asarray(queries)
    if q.ndim != 2 or q.shape[0] < 1:
        raise ValueError(f"held-out rows must be a 2-D array (m ≥ 1 rows × d features), got "
                         f"shape {q.shape}")
    if q.shape[1] != d:
        raise ValueError(f"held-out rows have {q.shape[1]} features but the reference rows have "
                         f"{d}: both must be embeddings of the same hook")
    if q.shape[0] >= 2:
        as_matrix(q, "held-out rows")  # numeric
    return q


@dataclasses.dataclass(frozen=True)
class _Queries:
    """One block of held-out rows: ``points`` (its rows, prepared like the reference's, with the
    reference's mean), their centred keys ``[c_q, 1]`` in the product dtype, ``sq`` = ‖c_q‖²
    and ``nc`` = ‖c_q‖ (float64), and ``start``, the block's first row in the queries."""

    points: Points
    keys: np.ndarray
    sq: np.ndarray
    nc: np.ndarray
    start: int

    @classmethod
    def of(cls, q: np.ndarray, start: int, ref: Points, np_dtype: Any) -> _Queries:
        from rra.knn import kernels

        x = np.array(q, dtype=q.dtype if q.dtype in (np.float32, np.float64) else
                     (np.float32 if q.dtype == np.float16 else np.float64))
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"held-out row {start + int(np.argmax(bad))} contains NaN or inf; "
                             "embeddings must be finite")
        norms = None
        if ref.distance == "cosine":
            norms = np.linalg.norm(x.astype(np.float64), axis=1)
            zero = np.flatnonzero(norms == 0)
            if zero.size:
                raise ValueError(f"held-out rows: {zero.size} row(s) have zero norm, so their "
                                 f"cosine distance is undefined: rows "
                                 f"{', '.join(str(start + int(i)) for i in zero[:10])}")
        x.flags.writeable = False
        points = Points(x=x, distance=ref.distance, norms=norms, mean=ref.mean)
        keys = np.empty((x.shape[0], ref.d + 1), dtype=np_dtype)
        sq = np.empty(x.shape[0], dtype=np.float64)
        kernels.centred_keys(x, points.kernel_norms, ref.mean, keys, sq)
        _check_range(sq, np_dtype)
        keys[:, ref.d] = 1
        return cls(points, keys, sq, np.sqrt(sq), start)

    def sqdist(self, ref: Points, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact float64 ``‖z_ref[cols[r, c]] − z_q[rows[r]]‖²``, shape of ``cols``."""
        from rra.knn.cross_kernels import cross_sqdist

        rows = np.ascontiguousarray(rows, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        out = np.empty(cols.shape, dtype=np.float64)
        if out.size:
            cross_sqdist(self.points.x, self.points.kernel_norms, np.asarray(ref.x),
                         ref.kernel_norms, rows, cols, out)
        return out


def _check_range(sq: np.ndarray, np_dtype: Any) -> None:
    if sq.size and 4 * sq.max() >= np.finfo(np_dtype).max:
        raise ValueError(f"values too large for {np.dtype(np_dtype).name} products (max squared "
                         f"norm {sq.max():.3g} after centring); use dtype='float64'")


@dataclasses.dataclass(frozen=True)
class _Bound:
    """What step 5's certificate reads besides the block: the largest reference norm, γ, d
    and the distance."""

    radius: float
    gamma: float
    d: int
    distance: str


def cross_neighbours(reference: Any, queries: Any, k: int, distance: str = "euclidean", *,
                     block_rows: int | None = None, device: str = "cpu",
                     dtype: Any = "float32") -> tuple[np.ndarray, np.ndarray, dict]:
    """The exact k nearest reference rows of every query row (module docstring).

    ``reference``: n_R × d, ``queries``: m × d (numpy, memory-mapped numpy or torch; the same
    hook's embedding). ``block_rows``: query rows per block (default: 64 MB of products).
    Returns ``(idx int64 m × k, squared distances float64 m × k, stats)``; ``idx`` holds
    reference row numbers, each row sorted by (distance, index). ``stats``: ``candidates`` (p),
    ``rows_rechecked`` (certificate failed: all n_R distances), ``rows_tie_resolved``,
    ``exact_pairs``, ``block_rows``, ``blocks``, ``device``, ``dtype``, ``seconds``.
    """
    import torch

    from rra.device import pick_device

    t0 = time.perf_counter()
    ref = prepare_points(reference, distance, "reference")
    q = _query_matrix(queries, ref.d)
    k = check_cross_k(k, ref.n)
    n_ref, m, d = ref.n, int(q.shape[0]), ref.d
    kk = min(k + 1, n_ref)  # one more: near ties at the k-th place are seen
    dev = pick_device(device)
    tdtype, u = _product_precision(_torch_dtype(dtype), dev, d)
    np_dtype = np.float32 if tdtype == torch.float32 else np.float64
    keys, radius = _reference_keys(ref, np_dtype, dev)
    bound = _Bound(radius, error_gamma(d, u), d, distance)
    p = min(n_ref, kk + candidate_margin(k))
    b = (int(block_rows) if block_rows is not None
         else max(1, min(4096, BLOCK_BYTES // (np.dtype(np_dtype).itemsize * n_ref))))
    if b < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    idx = np.empty((m, k), dtype=np.int64)
    sqd = np.empty((m, k), dtype=np.float64)
    counts = np.zeros(3, dtype=np.int64)  # rows rechecked, exact pairs, rows tie-resolved
    for s in range(0, m, b):
        block = _Queries.of(q[s:s + b], s, ref, np_dtype)
        o = torch.from_numpy(block.keys).to(dev) @ keys.T
        c_idx, c_sqd, n_bad, n_pairs = _block(ref, block, o, p, kk, bound)
        del o
        idx[s:s + b], sqd[s:s + b], tied = _resolve(ref, block, c_idx, c_sqd, k)
        counts += (n_bad, n_pairs, tied)
    stats = {"candidates": p, "rows_rechecked": int(counts[0]),
             "rows_tie_resolved": int(counts[2]), "exact_pairs": int(counts[1]),
             "block_rows": b, "blocks": -(-m // b), "device": str(dev), "dtype": str(tdtype),
             "seconds": time.perf_counter() - t0}
    return idx, sqd, stats


def _reference_keys(ref: Points, np_dtype: Any, dev: Any) -> tuple[Any, float]:
    """Step 1: the reference keys ``[c_j, −‖c_j‖²/2]`` (one contiguous n_R × (d + 1) array, as a
    torch tensor on ``dev``; shared with numpy on the CPU) and the largest ‖c_j‖."""
    import torch

    from rra.knn import kernels

    keys = np.empty((ref.n, ref.d + 1), dtype=np_dtype)
    sq = np.empty(ref.n, dtype=np.float64)
    kernels.centred_keys(np.asarray(ref.x), ref.kernel_norms, ref.mean, keys, sq)
    _check_range(sq, np_dtype)
    return torch.from_numpy(keys).to(dev), float(np.sqrt(sq.max()))


def _block(ref: Points, block: _Queries, o, p: int, kk: int,
           bound: _Bound) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Steps 3–5 for one block of queries from their products ``o`` against every reference
    row: the first kk by (distance, index), the number of rows whose certificate failed
    (recomputed against all n_R rows) and the number of exact distances computed."""
    import torch

    n_ref, nb = o.shape[1], o.shape[0]
    rows = np.arange(nb, dtype=np.int64)
    all_cols = np.arange(n_ref, dtype=np.int64)
    if p < n_ref:  # 3. candidates and the threshold τ_q
        vals, cand = torch.topk(o, p, dim=1, largest=True, sorted=False)
        cand = cand.cpu().numpy().astype(np.int64)
        tau = vals.min(dim=1).values.cpu().numpy().astype(np.float64)
    else:
        cand = np.broadcast_to(all_cols, (nb, n_ref))
        tau = np.full(nb, -np.inf)
    # 4. exact float64 distances of the candidates, first kk by (ê, j)
    e = block.sqdist(ref, rows, cand)
    exact_pairs = e.size
    c_idx, c_sqd = sort_neighbours(cand, e, kk)
    # 5. certificate: no non-candidate can come before the kk-th
    last = c_sqd[:, kk - 1]
    lower = block.sq - 2.0 * tau - bound.gamma * (block.nc + bound.radius) ** 2
    bad = np.flatnonzero(~(lower > last + sqdist_bound(last, bound.d, bound.distance)))
    for r in bad:  # all n_R distances
        full = block.sqdist(ref, rows[r:r + 1], all_cols[None])
        c_idx[r], c_sqd[r] = (v[0] for v in sort_neighbours(all_cols[None], full, kk))
        exact_pairs += n_ref
    return c_idx, c_sqd, int(bad.size), int(exact_pairs)


def _resolve(ref: Points, block: _Queries, idx: np.ndarray, sqd: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``rra.knn.ties.resolve_ties`` for one block's query rows against the reference rows:
    rows with near ties among their first k get them in exact order; a group crossing the k-th
    place recomputes the row against every reference row first."""
    near = near_pairs(ref, idx, sqd, open_end=idx.shape[1] > k)
    flagged = np.flatnonzero(near[:, :k].any(axis=1)) if near.shape[1] else np.empty(0, int)
    out_idx, out_sqd = np.array(idx[:, :k]), np.array(sqd[:, :k])
    all_cols = np.arange(ref.n, dtype=np.int64)
    for r in flagged:
        cols, vals, near_row = idx[r], sqd[r], near[r]
        if idx.shape[1] > k and near_row[k - 1]:  # a group crosses the k-th place
            full = block.sqdist(ref, np.array([r]), all_cols[None])
            cols, vals = (v[0] for v in sort_neighbours(all_cols[None], full, ref.n))
            near_row = near_pairs(ref, cols[None], vals[None], open_end=False)[0]
        out_idx[r], out_sqd[r] = _order(ref, block, int(r), cols, vals, k, near_row)
    return out_idx, out_sqd, int(flagged.size)


def _order(ref: Points, block: _Queries, r: int, cols: np.ndarray, vals: np.ndarray, k: int,
           near_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rra.knn.ties.order_row`` of query row ``r`` of the block: on a small stacked set of the
    query row and the reference rows of the groups up to the k-th place (renumbered in index
    order, so ties by index keep their order), never the whole reference."""
    after = np.flatnonzero(~near_row[k - 1:])  # the group holding place k ends there
    stop = k + int(after[0]) if after.size else cols.size
    uniq, inverse = np.unique(cols[:stop], return_inverse=True)
    x = np.concatenate([block.points.x[r:r + 1], np.asarray(ref.x[uniq])])
    norms = (None if ref.norms is None
             else np.concatenate([block.points.norms[r:r + 1], ref.norms[uniq]]))
    small = Points(x=x, distance=ref.distance, norms=norms, mean=ref.mean)
    c, v = order_row(small, 0, inverse.astype(np.int64) + 1, vals[:stop], k,
                     near_row[:stop - 1])
    return uniq[c - 1], v
