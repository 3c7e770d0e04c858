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
(``rra.knn.kernels.pair_overlaps``). Every product is computed once per ordered pair of rows
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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rra.knn.common import Points, check_k
from rra.knn.ties import bound_terms, resolve_set, resolve_ties
from rra.knn.exact import (_unit_roundoff, candidate_margin, default_block_rows, error_gamma,
                           recheck_rows)

#: the bitmaps of one block (hooks × large ks × rows × n bits) stay within this many bytes
BITMAP_BYTES = 128 << 20
#: products are summed over chunks of at most this many features (each one matrix product, then
#: added in order): the worst-case rounding bound is that of a dot product of length
#: K + m − 1 (K the longest of m chunks) instead of d, which narrows the band of rows whose
#: exact distance must be computed by about d / K at the cost of m − 1 passes over a block.
#: [ours, measured on the published E1: at d = 4,704 the band shrinks 5× (417 → 86 rows per row
#: and k) and the whole sweep gets about 40 s faster than with one product over all d]
CHUNK_FEATURES = 1024
#: columns per panel when the chunks are summed (the panel's partial sums stay in cache)
PANEL_COLUMNS = 4096
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
    itself), ``h = fl(‖z‖²/2)``, ``sq = ‖z‖²`` and ``nc = ‖z‖`` (float64), R, the feature
    chunks of the products and γ (that of ``rra.knn.exact`` for a dot product of length
    K + m − 1, see :data:`CHUNK_FEATURES`)."""

    def __init__(self, points: Points):
        import torch

        from rra.knn import kernels

        x = np.asarray(points.x)
        n, d = x.shape
        self.points = points
        self.x, self.norms = x, points.kernel_norms
        self.sq = np.empty(n, dtype=np.float64)
        if points.distance == "euclidean" and x.dtype == np.float32 and x.flags.c_contiguous:
            z = x  # no copy: z_j = x_j exactly
            kernels.row_sqnorms(x, self.sq)
        else:  # fl32(x / ‖x‖) (cosine) or fl32(x) (float64 input), with ‖·‖² of the rounded rows
            keys = np.empty((n, d + 1), dtype=np.float32)
            kernels.centred_keys(x, self.norms, np.zeros(d), keys, self.sq)
            z = keys[:, :d]
        if 4 * self.sq.max() >= np.finfo(np.float32).max:
            raise ValueError(f"values too large for float32 products (max squared norm "
                             f"{self.sq.max():.3g}); use the exact backend's float64 products")
        self.nc = np.sqrt(self.sq)
        self.radius = float(self.nc.max())
        # products in m chunks of at most CHUNK_FEATURES features, summed in order: the error
        # bound of a dot product of length K + m − 1 (K the longest chunk) instead of d
        m = -(-d // CHUNK_FEATURES)
        bounds = np.linspace(0, d, m + 1).round().astype(int)
        self.chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        length = max(b - a for a, b in self.chunks) + m - 1
        u = _unit_roundoff(torch.float32, torch.device("cpu"))
        if (length + 2) * u >= 0.5:
            raise ValueError(f"float32 matmul precision {torch.get_float32_matmul_precision()!r}"
                             f" is too coarse for d = {d}; set it to 'highest'")
        self.gamma = error_gamma(length, u)
        self._tmp = None
        with warnings.catch_warnings():  # read-only memory maps: torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            self.z = torch.from_numpy(z)
        self.h = torch.from_numpy((self.sq / 2).astype(np.float32))
        self.d = d

    def products(self, rows, out=None):
        """``o_ij = fl(z_i·z_j − h_j)`` for the rows ``rows`` (a slice or an index array)."""
        import torch

        zi = self.z[rows] if isinstance(rows, slice) else self.z[torch.from_numpy(rows)]
        (a, b), rest = self.chunks[0], self.chunks[1:]
        o = torch.mm(zi[:, a:b], self.z[:, a:b].T, out=out)
        if rest:  # the other chunks panel by panel of columns: the sums stay in cache
            m, n = o.shape
            if self._tmp is None or self._tmp.shape[0] < m:
                self._tmp = torch.empty((m, PANEL_COLUMNS), dtype=o.dtype)
            for c0 in range(0, n, PANEL_COLUMNS):
                c1 = min(n, c0 + PANEL_COLUMNS)
                tmp = self._tmp[:m, :c1 - c0]
                for a, b in rest:
                    o[:, c0:c1].add_(torch.mm(zi[:, a:b], self.z[c0:c1, a:b].T, out=tmp))
        return o.sub_(self.h)


def sweep(points: Sequence[Points], k_graph: int | None, ks: Sequence[int], *,
          block_rows: int | None = None, progress: bool = True,
          names: Sequence[str] | None = None, writers: Sequence[tuple] | None = None
          ) -> SweepResult:
    """Exact kNN graphs at ``k_graph`` (``None``: none) of every point set and, for each k of
    ``ks``, the overlap counts ``m_i = |K_a[i] ∩ K_b[i]|`` of every pair a < b of point sets,
    in one pass over blocks of rows (module docstring). All point sets must have the same rows.
    CPU, float32 products (the result is exact regardless).

    ``writers``: per point set an ``(indices, distances)`` pair of ``rra.io.NpyRowWriter``-like
    objects (``write(rows)``) that receive the graph's rows block by block, so the graphs are
    never held whole (``SweepResult.graphs`` is then ``None`` for each); by default the graphs
    are returned in memory."""
    import numba
    import torch
    from tqdm.auto import tqdm

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
    keys = _prepare_keys(points, names)
    b = _block_rows(block_rows, n, keys, ks_arr.size if large else 0)
    graph = (_GraphRows.allocate(n, k_graph, b, len(points), writers) if k_graph is not None
             else None)
    sets = _LargeKSets.allocate(n, ks_arr, b, len(points)) if large else None
    stats = [{"search": "sweep (per block)", "block_rows": b, "exact_pairs": 0,
              "rows_rechecked": 0, "band_pairs": 0, "rows_tie_resolved": 0,
              "sets_tie_resolved": 0} for _ in points]
    buf = torch.empty((b, n), dtype=torch.float32)

    # (shown in the job's log too, every 30 s: the sweep of a published-scale run takes minutes)
    for a in tqdm(range(0, n, b), desc=f"kNN sweep n={n} hooks={len(points)}", unit="block",
                  disable=not progress, mininterval=30):
        bb = min(b, n - a)
        q = np.arange(a, a + bb, dtype=np.int64)
        for h, key in enumerate(keys):
            o = key.products(slice(a, a + bb), out=buf[:bb]).numpy()
            if graph is not None:
                graph.add(h, key, o, q, stats[h], threads)
            if sets is not None:
                sets.add(h, key, o, q, stats[h], threads, names[h])
        if sets is not None:
            sets.count_overlaps(a, bb)
    seconds = time.perf_counter() - t0
    for s in stats:
        s["seconds"] = seconds
    return SweepResult(graphs=graph.graphs if graph is not None else [None] * len(points),
                       overlaps=sets.overlaps if sets is not None else {}, pairs=pairs,
                       stats=stats)


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


def _prepare_keys(points: list[Points], names: list[str]) -> list[_Keys]:
    """The point sets prepared for the products; a ValueError names the set."""
    keys = []
    for p, name in zip(points, names):
        try:
            keys.append(_Keys(p))
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
    idx[bad], sqd[bad], pairs = recheck_rows(key.products(q[bad]).numpy(), q[bad], k,
                                             sqd[bad, k - 1], key.sq, key.nc, key.gamma, key.x,
                                             key.norms)
    stats["exact_pairs"] += pairs
