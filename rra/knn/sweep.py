"""One pass over row blocks for every hook of a scale: the stored kNN graphs and, for large k,
the NNTS overlaps, without n × k graphs. [ours]

NNTS at k in the thousands (the published E1: k = 6000 and 12000 of n = 60,000 rows) needs
only ``m_i = |K_a[i] ∩ K_b[i]|`` for every pair of hooks, never the neighbour lists themselves;
stored as n × k graphs they would take 5.8 GB per hook. Here each block of rows is taken
through every hook in turn:

1. the block's values ``o_ij = z_i·z_j − h_j`` against every row (one float32 matrix product,
   ``h_j = fl(‖z_j‖²/2)``, the per-block values of ``rra.knn.exact``; ``z`` the rows
   themselves under euclidean float32, no copy, else ``fl32(x / ‖x‖)`` or ``fl32(x)``);
2. the stored graph's rows at ``k_graph`` (``rra.knn.kernels.select_refine``, the per-block
   exact search: the same graph as ``rra.knn.exact.knn_exact`` builds);
3. for each large k, the row's exact k nearest by (distance, index) as a bitmap
   (``rra.knn.kernels.members_select``, ``band_distances``, ``members_finish``: float32 values
   decide all but a thin band around the k-th, whose members get float64 distances);

then the overlaps of every hook pair at every large k are popcounts of the bitmaps' AND
(``rra.knn.kernels.pair_overlaps``). An embedding whose rows lie in a low-dimensional
subspace (a linear image of an earlier hook) takes its products from its r coordinates there,
with the measured residuals in the bound (``rra.knn.lowrank``). Every product is computed once
per ordered pair of rows
(``n² d`` multiply-adds per hook, twice the symmetric search's), and it serves both the graph
and every large k. Memory: the embeddings (memory-mapped), one block of products and the
block's bitmaps (hooks × large ks × block × n / 8 bytes); the graphs at ``k_graph`` are
streamed to disk by the caller's writers (or returned, when there are none).

The sets are exactly those of the stored-graph path: the overlaps equal
``rra.knn.sets.overlap_counts`` of exact graphs at k (tests compare them, with ties and
duplicate rows).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rra.knn.common import Points, check_k
from rra.knn.ties import bound_terms, resolve_set, resolve_ties
from rra.knn.exact import candidate_margin, default_block_rows, error_gamma, recheck_rows

#: the bitmaps of one block (hooks × large ks × rows × n bits) stay within this many bytes
BITMAP_BYTES = 128 << 20
#: unit round-off of the products: IEEE single precision (numpy's float32 BLAS has no
#: reduced-precision mode, unlike torch's TF32/bf16 settings)
UNIT_ROUNDOFF = 2.0 ** -24
#: products are summed over chunks of at most this many features (each one matrix product, then
#: added in order): the worst-case rounding bound is that of a dot product of length
#: K + m − 1 (K the longest of m chunks) instead of d, which narrows the band of rows whose
#: exact distance must be computed by about d / K at the cost of m − 1 passes over a block.
#: [ours, measured on the published E1: at d = 4,704 the band shrinks 5× (417 → 86 rows per row
#: and k) and the whole sweep gets about 40 s faster than with one product over all d]
CHUNK_FEATURES = 1024
#: columns per panel when the chunks are summed (the panel's partial sums stay in cache)
PANEL_COLUMNS = 4096
#: constant columns (one value in every row) are left out of the products where at least this
#: share of an embedding's columns are constant (below it, the copy costs more than it saves)
CONSTANT_MIN_FRACTION = 0.1
#: band columns kept per row and large k for the column-ordered exact distances; a larger band
#: (rare: a very wide error bound) is redone row by row
BAND_CAP = 2048


@dataclass
class SweepResult:
    """Graphs (per point set: int32 indices and float32 distances, n × k_graph, or ``None``),
    overlap counts per large k (int32 n × P, column p = pair ``pairs[p]``) and per-set stats."""

    graphs: list[tuple[np.ndarray, np.ndarray] | None]
    overlaps: dict[int, np.ndarray]
    pairs: list[tuple[int, int]]
    stats: list[dict] = field(default_factory=list)


def hook_pairs(count: int) -> list[tuple[int, int]]:
    """The pairs a < b of ``count`` point sets in the overlaps' column order."""
    return [(a, b) for a in range(count) for b in range(a + 1, count)]


class _Keys:
    """One point set prepared for the products: ``z`` (float32 n × d, possibly the memory map
    itself; without its constant columns, :func:`_product_rows`; or the rows' n × r
    coordinates in a basis of their span, ``rra.knn.lowrank``),
    ``h = fl(‖z‖²/2)``, ``sq = ‖z‖²`` and ``nc = ‖z‖`` (float64; the bound norms ñ of the
    coordinates), R = max nc, the feature chunks of the products and γ (that of
    ``rra.knn.exact`` for a dot product of length K + m − 1, see :data:`CHUNK_FEATURES`; γ' of
    the coordinates). ``low_rank``: try the coordinates (True), never (False), or where
    ``rra.knn.lowrank.worth_trying`` (None)."""

    def __init__(self, points: Points, low_rank: bool | None = None):
        from rra.knn import lowrank

        x = np.asarray(points.x)
        n, d = x.shape
        self.points, self.x, self.norms, self.d = points, x, points.kernel_norms, d
        self.sq = np.empty(n, dtype=np.float64)
        z, own = _product_rows(points, x, self.sq)
        if 4 * self.sq.max() >= np.finfo(np.float32).max:
            raise ValueError(f"values too large for float32 products (max squared norm "
                             f"{self.sq.max():.3g}); use the exact backend's float64 products")
        u = UNIT_ROUNDOFF
        chunks, length = _chunks(z.shape[1])
        # no check that the bound is void ((length + 2) u ≥ ½): with u = 2⁻²⁴ and chunks of
        # CHUNK_FEATURES that takes d ≈ 8.6·10⁹ features (a 34 GB row); error_gamma refuses it
        self.nc, self.gamma = np.sqrt(self.sq), error_gamma(length, u)
        # an embedding in a low-dimensional subspace: products of its coordinates there, the
        # residuals in the bound (rra.knn.lowrank); None: the rows themselves
        self.low_rank = None
        if own and (low_rank or (low_rank is None and lowrank.worth_trying(
                n, d, points.distance, x))):
            self.low_rank = lowrank.low_rank(z, self.sq, u, lambda r: _chunks(r)[1],
                                             self.gamma)
        if self.low_rank is not None:
            z = self.low_rank.u
            chunks, length = _chunks(z.shape[1])
            self.nc, self.gamma = self.low_rank.bound(self.nc, length, u)
        self.chunks = chunks
        self.radius = float(self.nc.max())
        self._tmp = None
        self.z = z
        self.h = (self.sq / 2).astype(np.float32)

    def products(self, rows, out=None) -> np.ndarray:
        """``o_ij = fl(z_i·z_j − h_j)`` (float32) for the rows ``rows`` (a slice or an index
        array), by numpy's BLAS (OpenBLAS: 93–100 G multiply-adds/s on this machine's two AMD
        cores against torch's 52–64, measured 2026-12-04; any summation order keeps the bound)."""
        zi = self.z[rows]
        (a, b), rest = self.chunks[0], self.chunks[1:]
        o = np.matmul(zi[:, a:b], self.z[:, a:b].T, out=out)
        if rest:  # the other chunks panel by panel of columns: the sums stay in cache
            m, n = o.shape
            if self._tmp is None or self._tmp.size < m * PANEL_COLUMNS:
                self._tmp = np.empty(m * PANEL_COLUMNS, np.float32)
            for c0 in range(0, n, PANEL_COLUMNS):
                c1 = min(n, c0 + PANEL_COLUMNS)
                tmp = self._tmp[:m * (c1 - c0)].reshape(m, c1 - c0)
                for a, b in rest:
                    o[:, c0:c1] += np.matmul(zi[:, a:b], self.z[c0:c1, a:b].T, out=tmp)
        o -= self.h
        return o


def _product_rows(points: Points, x: np.ndarray, sq: np.ndarray) -> tuple[np.ndarray, bool]:
    """The rows the products are taken of, with their exact squared norms written into ``sq``,
    and whether they are the stored values themselves: under euclidean float32 the rows ``x``
    (no copy), or a copy without their constant columns where those are at least
    :data:`CONSTANT_MIN_FRACTION` of them (a column of one value in every row adds nothing to a
    difference, so every distance is unchanged and the products and bound shrink; e.g. dead
    ReLU units); otherwise ``fl32(x / ‖x‖)`` (cosine) or ``fl32(x)`` (float64 input)."""
    from rra.knn import kernels

    if points.distance == "euclidean" and x.dtype == np.float32 and x.flags.c_contiguous:
        z = _varying_columns(x)
        kernels.row_sqnorms(z, sq)
        return z, True
    n, d = x.shape
    keys = np.empty((n, d + 1), dtype=np.float32)
    kernels.centred_keys(x, points.kernel_norms, np.zeros(d), keys, sq)
    return keys[:, :d], False


def _varying_columns(x: np.ndarray) -> np.ndarray:
    """``x`` itself, or a C-contiguous copy of its columns that are not constant over the rows
    where the constant ones are at least :data:`CONSTANT_MIN_FRACTION` of them."""
    n, d = x.shape
    step = max(1, (64 << 20) // (4 * d))
    low, high = np.asarray(x[0]).copy(), np.asarray(x[0]).copy()
    for a in range(0, n, step):
        block = np.asarray(x[a:a + step])
        np.minimum(low, block.min(axis=0), out=low)
        np.maximum(high, block.max(axis=0), out=high)
    varying = np.flatnonzero(low != high)
    if d - varying.size < CONSTANT_MIN_FRACTION * d or not varying.size:
        return x
    out = np.empty((n, varying.size), np.float32)
    for a in range(0, n, step):
        out[a:a + step] = np.asarray(x[a:a + step])[:, varying]
    return out


def _chunks(width: int) -> tuple[list[tuple[int, int]], int]:
    """Products over ``width`` features in m chunks of at most :data:`CHUNK_FEATURES`, summed in
    order: the chunks and the length K + m − 1 (K the longest chunk) of the dot product whose
    error bound they have, instead of ``width``."""
    m = -(-width // CHUNK_FEATURES)
    bounds = np.linspace(0, width, m + 1).round().astype(int)
    chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return chunks, max(b - a for a, b in chunks) + m - 1


def sweep(points: Sequence[Points], k_graph: int | None, ks: Sequence[int], *,
          block_rows: int | None = None, progress: bool = True,
          names: Sequence[str] | None = None, writers: Sequence[tuple] | None = None,
          low_rank: bool | None = None) -> SweepResult:
    """Exact kNN graphs at ``k_graph`` (``None``: none) of every point set and, for each k of
    ``ks``, the overlap counts ``m_i = |K_a[i] ∩ K_b[i]|`` of every pair a < b of point sets,
    in one pass over blocks of rows (module docstring). All point sets must have the same rows.
    CPU, float32 products (the result is exact regardless).

    ``writers``: per point set an ``(indices, distances)`` pair of ``rra.io.NpyRowWriter``-like
    objects (``write(rows)``) that receive the graph's rows block by block, so the graphs are
    never held whole (``SweepResult.graphs`` is then ``None`` for each); by default the graphs
    are returned in memory. ``low_rank``: products from the rows' coordinates in a basis of
    their span where that pays (``None``, default: ``rra.knn.lowrank.worth_trying``), tried for
    every set (True) or never (False); exact either way."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    points = list(points)
    names, n = _check_point_sets(points, names)
    ks_arr = np.array(sorted({check_k(k, n) for k in ks}), dtype=np.int64)
    if k_graph is not None:
        k_graph = check_k(k_graph, n)
    pairs = hook_pairs(len(points))
    large = ks_arr.size > 0 and len(points) > 1
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)

    t0 = time.perf_counter()
    with threadpool_limits(limits=threads, user_api="blas"):  # numpy's products: the job's
        keys = _prepare_keys(points, names, low_rank)         # threads (README, "Threads")
        b = _block_rows(block_rows, n, keys, ks_arr.size if large else 0)
        graph = (_GraphRows.allocate(n, k_graph, b, len(points), writers)
                 if k_graph is not None else None)
        sets = _LargeKSets.allocate(n, ks_arr, b, len(points)) if large else None
        stats = [{"search": "sweep (per block)", "block_rows": b, "exact_pairs": 0,
                  "rows_rechecked": 0, "band_pairs": 0, "rows_tie_resolved": 0,
                  "sets_tie_resolved": 0, "product_features": key.z.shape[1]} for key in keys]
        _blocks(keys, graph, sets, stats, b, threads, names, progress)
    seconds = time.perf_counter() - t0
    for s in stats:
        s["seconds"] = seconds
    return SweepResult(graphs=graph.graphs if graph is not None else [None] * len(points),
                       overlaps=sets.overlaps if sets is not None else {}, pairs=pairs,
                       stats=stats)


def _blocks(keys: list[_Keys], graph: "_GraphRows | None", sets: "_LargeKSets | None",
            stats: list[dict], b: int, threads: int, names: list[str], progress: bool) -> None:
    """The pass over blocks of ``b`` rows: each block's products through every point set, its
    graph rows and large-k sets, then the block's overlaps."""
    from tqdm.auto import tqdm

    n = keys[0].x.shape[0]
    buf = np.empty((b, n), dtype=np.float32)
    # (shown in the job's log too, every 30 s: the sweep of a published-scale run takes minutes)
    for a in tqdm(range(0, n, b), desc=f"kNN sweep n={n} hooks={len(keys)}", unit="block",
                  disable=not progress, mininterval=30):
        bb = min(b, n - a)
        q = np.arange(a, a + bb, dtype=np.int64)
        for h, key in enumerate(keys):
            o = key.products(slice(a, a + bb), out=buf[:bb])
            if graph is not None:
                graph.add(h, key, o, q, stats[h], threads)
            if sets is not None:
                sets.add(h, key, o, q, stats[h], threads, names[h])
        if sets is not None:
            sets.count_overlaps(a, bb)


def _check_point_sets(points: list[Points], names: Sequence[str] | None
                      ) -> tuple[list[str], int]:
    """``(names, n)``: the point sets' names (default ``embedding i``) and their common row
    count; a ValueError for none or for sets of different rows."""
    if not points:
        raise ValueError("sweep: need at least one embedding")
    names = [f"embedding {i}" for i in range(len(points))] if names is None else list(names)
    n = points[0].n
    for p, name in zip(points, names):
        if p.n != n:
            raise ValueError(f"{name} has {p.n} rows but {names[0]} has {n}: the sweep compares "
                             "neighbour sets of the same probe rows")
    return names, n


def _prepare_keys(points: list[Points], names: list[str], low_rank: bool | None
                  ) -> list[_Keys]:
    """The point sets prepared for the products; a ValueError names the set."""
    keys = []
    for p, name in zip(points, names):
        try:
            keys.append(_Keys(p, low_rank))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
    return keys


def _block_rows(block_rows: int | None, n: int, keys: list[_Keys], n_large: int) -> int:
    """Rows per block: the given number (at most n), or by default products within
    ``rra.knn.exact.BLOCK_BYTES`` and, with ``n_large`` large ks, bitmaps within
    :data:`BITMAP_BYTES`."""
    words = -(-n // 64)
    if block_rows is None:
        b = default_block_rows(n, max(k.d for k in keys))
        if n_large:
            b = min(b, max(1, BITMAP_BYTES // (8 * words * len(keys) * n_large)))
    elif int(block_rows) < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    else:
        b = min(int(block_rows), n)
    return b


@dataclass
class _GraphRows:
    """The stored graphs at ``k_graph``: the per-block exact search of each block's rows (at
    ``k_search`` = k_graph + 1, for near ties), into ``graphs`` or the ``writers``."""

    n: int
    k_graph: int
    k_search: int
    n_cand: int
    group: int
    graphs: list
    writers: Sequence[tuple] | None
    b_idx: np.ndarray
    b_sqd: np.ndarray
    ok: np.ndarray
    n_exact: np.ndarray

    @classmethod
    def allocate(cls, n: int, k_graph: int, b: int, count: int,
                 writers: Sequence[tuple] | None) -> "_GraphRows":
        from rra.knn import kernels

        graphs: list = [None] * count
        if writers is None:
            graphs = [(np.empty((n, k_graph), np.int32), np.empty((n, k_graph), np.float32))
                      for _ in range(count)]
        elif len(writers) != count:
            raise ValueError(f"writers: need one (indices, distances) pair per embedding, got "
                             f"{len(writers)} for {count}")
        k_search = min(k_graph + 1, n - 1)  # one more: near ties at the k-th place (ties.py)
        n_cand = min(n - 1, k_search + candidate_margin(k_search))
        return cls(n=n, k_graph=k_graph, k_search=k_search, n_cand=n_cand,
                   group=kernels.group_size(n, n_cand), graphs=graphs, writers=writers,
                   b_idx=np.empty((b, k_search), np.int64),
                   b_sqd=np.empty((b, k_search), np.float64), ok=np.empty(b, np.bool_),
                   n_exact=np.empty(b, np.int64))

    def add(self, h: int, key: _Keys, o: np.ndarray, q: np.ndarray, stats: dict,
            threads: int) -> None:
        """The graph rows ``q`` (a block's consecutive rows) of point set ``h`` from the block's
        products ``o``."""
        from rra.knn import kernels

        a, bb = int(q[0]), q.size
        idx, sqd, ok, n_exact = self.b_idx[:bb], self.b_sqd[:bb], self.ok[:bb], self.n_exact[:bb]
        kernels.select_refine(o, q, self.n_cand, self.k_search, self.group,
                              self.n_cand == self.n - 1, key.sq, key.nc, key.gamma, key.radius,
                              key.x, key.norms, idx, sqd, ok, n_exact, threads)
        if (n_exact < 0).any():  # impossible: a row has n − 1 finite values
            raise RuntimeError("kNN candidate selection failed; please report this as a bug")
        stats["exact_pairs"] += int(n_exact.sum())
        _recheck(key, q, self.k_search, idx, sqd, ok, stats)
        g_idx, g_sqd, n_tied = resolve_ties(key.points, q, idx, sqd, self.k_graph)
        stats["rows_tie_resolved"] += n_tied
        rows_idx = g_idx.astype(np.int32)
        rows_dist = np.sqrt(g_sqd).astype(np.float32)
        if self.writers is None:
            self.graphs[h][0][a:a + bb] = rows_idx
            self.graphs[h][1][a:a + bb] = rows_dist
        else:
            self.writers[h][0].write(rows_idx)
            self.writers[h][1].write(rows_dist)


@dataclass
class _LargeKSets:
    """The exact sets at every large k as bitmaps (point sets × ks × block rows × words), their
    bands, and the overlap counts of every pair of point sets (``overlaps``: per k, n × pairs)."""

    ks: np.ndarray
    overlaps: dict[int, np.ndarray]
    bits: np.ndarray
    band_j: np.ndarray
    band_e: np.ndarray
    band_n: np.ndarray
    need: np.ndarray
    tied: np.ndarray
    block_overlaps: np.ndarray

    @classmethod
    def allocate(cls, n: int, ks: np.ndarray, b: int, count: int) -> "_LargeKSets":
        n_pairs, n_ks, words = len(hook_pairs(count)), ks.size, -(-n // 64)
        return cls(ks=ks, overlaps={int(k): np.zeros((n, n_pairs), np.int32) for k in ks},
                   bits=np.zeros((count, n_ks, b, words), np.uint64),
                   band_j=np.empty((b, n_ks, BAND_CAP), np.int64),
                   band_e=np.empty((b, n_ks, BAND_CAP), np.float64),
                   band_n=np.empty((b, n_ks), np.int64), need=np.empty((b, n_ks), np.int64),
                   tied=np.zeros((b, n_ks), np.bool_),
                   block_overlaps=np.empty((n_ks, b, n_pairs), np.int64))

    def add(self, h: int, key: _Keys, o: np.ndarray, q: np.ndarray, stats: dict, threads: int,
            name: str) -> None:
        """The sets of the rows ``q`` of point set ``h`` from the block's products ``o``."""
        bb = q.size
        stats["sets_tie_resolved"] += _large_k_sets(
            key, o, q, self.ks, self.bits[h, :, :bb], self.band_j[:bb], self.band_e[:bb],
            self.band_n[:bb], self.need[:bb], self.tied[:bb], threads, name)
        stats["band_pairs"] += int(self.band_n[:bb].sum())

    def count_overlaps(self, a: int, bb: int) -> None:
        """The overlaps of the block's rows ``[a, a + bb)``: popcounts of the bitmaps' AND."""
        from rra.knn import kernels

        kernels.pair_overlaps(self.bits[:, :, :bb], self.block_overlaps[:, :bb])
        for qk, k in enumerate(self.ks):
            self.overlaps[int(k)][a:a + bb] = self.block_overlaps[qk, :bb]


def _large_k_sets(key: _Keys, o: np.ndarray, q: np.ndarray, ks: np.ndarray, bits, band_j,
                  band_e, band_n, need, tied, threads: int, name: str) -> int:
    """The exact sets of the block's rows at every large k as bitmaps (``bits``: ks × rows ×
    words): select, exact distances of the bands column by column, finish; a set whose k-th
    place is a near tie is redone in exact order (``rra.knn.ties.resolve_set``). Returns how
    many sets were redone."""
    from rra.knn import kernels

    kernels.members_select(o, q, ks, key.nc, key.gamma, key.radius, bits, band_j, band_n, need,
                           threads)
    kernels.band_distances(q, band_j, band_n, key.x, key.norms, band_e, threads)
    tie_rel, tie_abs = bound_terms(key.d, key.points.distance)
    tied[:] = False
    kernels.members_finish(o, q, ks, key.nc, key.gamma, key.radius, key.x, key.norms, bits,
                           band_j, band_n, band_e, need, tie_rel, tie_abs, tied, threads)
    if (need < 0).any():  # impossible while the error bound holds
        raise RuntimeError(f"{name}: large-k neighbour sets could not be certified; please "
                           "report this as a bug")
    rows, qs = np.nonzero(tied)
    for r, qk in zip(rows, qs):
        members = resolve_set(key.points, int(q[r]), int(ks[qk]))
        bits[qk, r] = 0
        np.bitwise_or.at(bits[qk, r], members >> 6,
                         np.left_shift(np.uint64(1), (members & 63).astype(np.uint64)))
    return int(rows.size)


def _recheck(key: _Keys, q: np.ndarray, k: int, idx: np.ndarray, sqd: np.ndarray,
             ok: np.ndarray, stats: dict) -> None:
    """Step 5 of ``rra.knn.exact`` for the block's rows whose certificate failed: all their
    products again, every row within the error bound of the k-th gets its exact distance."""
    bad = np.flatnonzero(~ok)
    if not bad.size:
        return
    stats["rows_rechecked"] += int(bad.size)
    idx[bad], sqd[bad], pairs = recheck_rows(key.products(q[bad]), q[bad], k,
                                             sqd[bad, k - 1], key.sq, key.nc, key.gamma, key.x,
                                             key.norms)
    stats["exact_pairs"] += pairs
