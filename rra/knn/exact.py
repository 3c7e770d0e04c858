"""Exact kNN graphs by blocked matrix products, certified against float64. [source: directed
kNN graph, Euclidean distance; ours: blocking, centring, both searches and the certification]

For each row ``i``: ``K[i]`` = the ``k`` rows ``j ≠ i`` with the smallest distance
``‖z_i − z_j‖``, sorted by (distance, index), so ties — at the k-th place too — go to the smaller
row index, by the exact distance. The result equals a float64 brute force wherever float64
separates the distances.

In short: float32 products of the centred rows give each row a few candidates and a threshold
``τ_i`` that no other row's value exceeds (steps 1–3); the candidates get exact float64
distances, and a worst-case rounding bound ``γ (‖c_i‖ + ‖c_j‖)²`` (any summation order, so the
answer does not depend on BLAS, threads, block size, search or device) proves that no other row
is nearer (steps 4–5). A row that cannot be proved gets a lower threshold, then a re-check
against every row. Three searches: *symmetric* (every product of the Gram matrix once, CPU
float32) with group maxima (d < ``HEAP_MIN_D``) or with heaps, and *per block* (query rows, a
GPU or float64 products). The search runs at k + 1; near ties are put in exact order before the
graph is cut to k (``rra.knn.ties``). Reported distances are ``sqrt(e_ij)`` rounded to float32.

The method step by step, with the error bound and its proof: docs/methods.md, "The exact search
and its error bound"; the step numbers in the code are those there.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rra.knn.common import Points, check_k, finish, prepare_points
from rra.knn.ties import resolve_ties

BLOCK_BYTES = 256 << 20  # one block's distance matrix
REFINE_ROWS = 8192  # rows per call of the refining kernel in the symmetric search
GROUP_MAXIMA_BYTES = 256 << 20  # pass 1 of the symmetric search keeps n × n / group floats
GROUP_BALANCE = 16.0  # see gram_group
MIN_GRAM_GROUP = 4  # below, pass 1 of the symmetric search costs more than pass 2 saves
# From this d on the symmetric search selects with per-row heaps fed from each block and its
# transpose instead of group maxima: recomputing the groups (step 3) reads whole rows of length
# d, while the heaps' cost per product does not grow with d. [ours, measured:
# benchmarks/bench_knn.py, about equal at d = 1024, heaps 20–40 % faster at d = 4096]
HEAP_MIN_D = 2048


def candidate_margin(k: int) -> int:
    """Extra candidates beyond k taken from the float32 pass: max(8, k // 4). [ours]"""
    return max(8, k // 4)


def symmetric_margin(k: int) -> int:
    """Extra group maxima beyond k that set the symmetric search's threshold: max(2, k // 8).
    Smaller than :func:`candidate_margin`, because every group above the threshold is
    recomputed; a row whose k-th distance is too close to the threshold for the certificate
    lowers it (4×, 16×, … as many groups) before a full re-check. [ours, measured]"""
    return max(2, k // 8)


def default_block_rows(n: int, d: int | None = None, itemsize: int = 4,
                       budget: int = BLOCK_BYTES) -> int:
    """Query rows per block: at most ``budget`` bytes of block × n products, and on the CPU
    (``d`` given) about √(0.16 n d) rows, within [256, 4096]. [ours, measured with
    benchmarks/bench_knn.py]

    The two costs that depend on the block size: the first touch of the block's buffer (≈ 0.3 ms
    per MB here, ∝ rows · n) and the matrix library's re-packing of the n × d right-hand side
    for every block (∝ n · d / rows); the square root balances them.
    """
    rows = budget // (itemsize * n)
    if d is not None:
        rows = min(rows, min(4096, max(256, round((0.16 * n * d) ** 0.5))))
    return int(min(n, max(1, rows)))


def gram_group(n: int, d: int, p: int, budget: int = GROUP_MAXIMA_BYTES) -> int:
    """Columns per group of the symmetric search: about √(GROUP_BALANCE · n / (p (d + 2))),
    balancing a row's bisection over its ≈ n / G group maxima against the recomputation of its
    ≈ p G products of length d + 2; at least ``MIN_GRAM_GROUP`` and 4 n² / budget (the group
    maxima, n × n / G float32, stay within ``budget``); at most (n − 1) / (2 p), so that a row
    has at least 2p groups. [ours, measured with benchmarks/bench_knn.py]"""
    g = round((GROUP_BALANCE * n / (p * (d + 2))) ** 0.5)
    g = max(g, MIN_GRAM_GROUP, -(-4 * n * n // budget))
    return int(max(1, min(g, (n - 1) // (2 * p))))


def _torch_dtype(dtype: Any):
    import torch

    name = getattr(dtype, "__name__", None) or str(dtype)
    name = name.replace("torch.", "")
    if name in ("float32", "single"):
        return torch.float32
    if name in ("float64", "double"):
        return torch.float64
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")


def _unit_roundoff(dtype, device) -> float:
    """Unit round-off of a matrix product in ``dtype`` under torch's current precision settings."""
    import torch

    if dtype == torch.float64:
        return 2.0 ** -53
    coarse = {"tf32": 2.0 ** -11, "bf16": 2.0 ** -8}
    u = {"highest": 2.0 ** -24, "high": 2.0 ** -11}.get(torch.get_float32_matmul_precision(),
                                                      2.0 ** -8)
    backend = torch.backends.cuda if device.type == "cuda" else torch.backends.mkldnn
    setting = getattr(getattr(backend, "matmul", None), "fp32_precision", "none")
    u = max(u, coarse.get(str(setting), 2.0 ** -24))
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        u = max(u, 2.0 ** -11)
    return u


def error_gamma(length: int, u: float) -> float:
    """γ of step 4 for products that are dot products of ``length`` terms (plus h and the
    centring) at unit round-off ``u``: 1.01 (γ_{length+2} + 6u). A void bound
    ((length + 2) u ≥ ½) is a ValueError: callers that can fall back to a finer precision
    check first (:func:`_product_precision`)."""
    if (length + 2) * u >= 0.5:
        raise ValueError(f"the products' error bound is void for dot products of {length} "
                         f"terms at unit round-off {u:.3g}")
    gamma_m = (length + 2) * u / (1 - (length + 2) * u)
    return 1.01 * (gamma_m + 6 * u)


def recheck_rows(o_rows: np.ndarray, queries: np.ndarray, k: int, bound: np.ndarray,
                 sq: np.ndarray, nc: np.ndarray, gamma: float, x: np.ndarray,
                 norms: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Step 5's re-check of rows whose certificate failed, from all their products ``o_rows``
    (float32, one row per query, against every row): every row within the error bound of
    ``bound`` (the k-th exact distance among the candidates) gets its exact distance
    (``rra.knn.kernels.recheck``). Returns ``(idx, squared distances, exact pairs)``."""
    from rra.knn import kernels

    r_idx = np.empty((queries.size, k), dtype=np.int64)
    r_sqd = np.empty((queries.size, k), dtype=np.float64)
    r_exact = np.empty(queries.size, dtype=np.int64)
    kernels.recheck(o_rows, queries, k, bound, sq, nc, gamma, x, norms, r_idx, r_sqd, r_exact)
    if (r_exact < 0).any():  # impossible while the error bound holds
        raise RuntimeError("kNN certification failed: fewer than k rows within the error "
                           "bound; please report this as a bug")
    return r_idx, r_sqd, int(r_exact.sum())


def knn_exact(x: Any, k: int, distance: str = "euclidean", block_rows: int | None = None,
              device: str = "cpu", dtype: Any = "float32",
              progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact directed kNN graph of the rows of ``x``: ``(idx int32 n × k, dist float32 n × k)``.

    ``x``: n × d array (numpy, memory-mapped or not). ``distance``: ``euclidean`` or ``cosine``.
    ``block_rows``: query rows per block (default: :func:`default_block_rows`).
    ``device``: ``cpu``, ``cuda[:N]`` or ``auto`` (``rra.device.pick_device``). ``dtype``: of the
    candidate products (float32, or float64; the result is exact either way).
    The method and its guarantee: the module docstring and docs/methods.md.
    """
    idx, sqd, _ = exact_neighbours(prepare_points(x, distance), k, block_rows=block_rows,
                                   device=device, dtype=dtype, progress=progress)
    return finish(idx, sqd)


def exact_neighbours(points: Points, k: int, queries: np.ndarray | None = None,
                     block_rows: int | None = None, device: str = "cpu", dtype: Any = "float32",
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact neighbours of the rows ``queries`` (default: all) among all rows of ``points``.

    Returns ``(idx int64 m × k, squared distances float64 m × k, stats)``. ``stats``: the
    ``search`` (and whether it is ``symmetric``), ``block_rows``, ``candidates`` (p), ``group``
    (columns per group), the rows whose threshold was lowered (``rows_widened``) or that were
    re-checked against every row (``rows_rechecked``), the exact distances computed
    (``exact_pairs``), device, dtype and seconds. Query rows cost m × n × d for the
    products, so a sample of m rows is cheap to check against.
    """
    import numba
    import torch

    from rra.device import pick_device

    n, d = points.n, points.d
    k_out = check_k(k, n)
    k = min(k_out + 1, n - 1)  # one more: near ties at the k-th place are seen (rra.knn.ties)
    dev = pick_device(device)
    tdtype, u = _product_precision(_torch_dtype(dtype), dev, d)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    queries_arr = _query_rows(queries, n)
    if block_rows is not None and int(block_rows) < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    t0 = time.perf_counter()
    search = _Search.prepare(points, k, queries_arr.size, dev, tdtype, error_gamma(d, u))
    symmetric = queries is None and dev.type == "cpu" and tdtype == torch.float32
    if symmetric and block_rows is None:  # ≥ 8 blocks: the triangle is not much over half
        block_rows = min(default_block_rows(n, d), max(256, -(-n // 8)))
    if symmetric and d >= HEAP_MIN_D:  # 2–3 with every product once, selection by heaps
        name, group, b = "symmetric, heaps", None, _heaps_search(search, queries_arr,
                                                                block_rows, progress)
    elif symmetric:  # 2–5 with every product once, selection by group maxima
        name = "symmetric, group maxima"
        group, b = _group_maxima_search(search, queries_arr, block_rows, progress)
    else:  # 2–3 per block of query rows
        name = "per block"
        group, b = _per_block_search(search, queries_arr, block_rows, progress)
    out_idx, out_sqd, tied = resolve_ties(points, queries_arr, search.out_idx, search.out_sqd,
                                          k_out)
    stats = {"search": name, "symmetric": symmetric, "block_rows": b,
             "candidates": search.n_cand, "group": group, **search.counts,
             "rows_tie_resolved": tied, "device": str(dev), "dtype": str(tdtype),
             "seconds": time.perf_counter() - t0}
    return out_idx, out_sqd, stats


def _product_precision(tdtype, dev, d: int) -> tuple[Any, float]:
    """``(torch dtype, unit round-off)`` of the products: float64 when float32's error bound
    is void for d features under torch's matmul precision setting (with a warning)."""
    import torch

    u = _unit_roundoff(tdtype, dev)
    if (d + 2) * u >= 0.5:  # the error bound is void: fall back to float64 products
        warnings.warn(f"float32 matmul precision {torch.get_float32_matmul_precision()!r} is too "
                      f"coarse for d = {d}; computing the kNN products in float64")
        tdtype, u = torch.float64, 2.0 ** -53
    return tdtype, u


def _query_rows(queries: np.ndarray | None, n: int) -> np.ndarray:
    """The query rows as int64 (default: all n rows), checked to lie in [0, n)."""
    if queries is None:
        return np.arange(n, dtype=np.int64)
    rows = np.asarray(queries, dtype=np.int64).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"query rows must lie in [0, {n})")
    return rows


@dataclass
class _Search:
    """One exact search: step 1's keys, the terms of the error bound, the output rows and the
    counts of ``stats``.

    ``ka`` = [c, −h, 1] (n × (d + 2), the product dtype; the symmetric search's left factor);
    ``keys`` = its first d + 1 columns [c_j, −‖c_j‖²/2] as a torch tensor on the device (a query
    row is [c_i, 1], so one product gives c_i·c_j − ‖c_j‖²/2); ``sq``, ``nc``: the exact squared
    norms of c and their roots, ``radius`` = R = max ‖c‖; ``n_cand``: candidates per row (p).
    """

    points: Points
    k: int
    dev: Any
    gamma: float
    ka: np.ndarray
    keys: Any
    sq: np.ndarray
    nc: np.ndarray
    radius: float
    n_cand: int
    x: np.ndarray
    norms: Any
    out_idx: np.ndarray
    out_sqd: np.ndarray
    counts: dict = field(default_factory=lambda: {"rows_widened": 0, "rows_rechecked": 0,
                                                  "exact_pairs": 0})

    @property
    def n(self) -> int:
        return self.points.n

    @property
    def d(self) -> int:
        return self.points.d

    @classmethod
    def prepare(cls, points: Points, k: int, m: int, dev, tdtype, gamma: float) -> "_Search":
        """Step 1 for ``m`` query rows: centre the rows into the keys (product dtype ``tdtype``)
        and allocate the output."""
        import torch

        from rra.knn import kernels

        n, d = points.n, points.d
        np_dtype = np.float32 if tdtype == torch.float32 else np.float64
        ka = np.empty((n, d + 2), dtype=np_dtype)
        ka[:, d + 1] = 1
        keys_np = ka[:, :d + 1]
        sq = np.empty(n, dtype=np.float64)
        kernels.centred_keys(np.asarray(points.x), points.kernel_norms, points.mean, keys_np, sq)
        if 4 * sq.max() >= np.finfo(np_dtype).max:
            raise ValueError(f"values too large for {np_dtype.__name__} products (max squared "
                             f"norm {sq.max():.3g} after centring); use dtype='float64'")
        keys = torch.from_numpy(keys_np).to(dev)
        nc = np.sqrt(sq)
        return cls(points=points, k=k, dev=dev, gamma=gamma, ka=ka, keys=keys, sq=sq, nc=nc,
                   radius=float(nc.max()), n_cand=min(n - 1, k + candidate_margin(k)),
                   x=np.asarray(points.x), norms=points.kernel_norms,
                   out_idx=np.empty((m, k), dtype=np.int64),
                   out_sqd=np.empty((m, k), dtype=np.float64))

    def products(self, q: np.ndarray, out=None, exclude_self: bool = True):
        """Step 2 for the query rows ``q``: ``o_ij = c_i·c_j − ‖c_j‖²/2`` (= (‖c_i‖² −
        ‖c_i − c_j‖²) / 2) against every row; self excluded (−∞) unless the caller does it."""
        import torch

        q_dev = torch.from_numpy(q).to(self.dev)
        rows_q = self.keys.index_select(0, q_dev)
        rows_q[:, self.d] = 1
        o = torch.mm(rows_q, self.keys.T, out=out)
        if exclude_self:
            o[torch.arange(q.size, device=self.dev), q_dev] = -float("inf")
        return o

    def recheck(self, rows: slice, q: np.ndarray, ok: np.ndarray) -> None:
        """Step 5's re-check of the rows whose certificate failed."""
        bad = np.flatnonzero(~ok)
        if not bad.size:
            return
        self.counts["rows_rechecked"] += bad.size
        r_idx, r_sqd, pairs = recheck_rows(self.products(q[bad]).cpu().numpy(), q[bad], self.k,
                                           self.out_sqd[rows][bad, self.k - 1], self.sq, self.nc,
                                           self.gamma, self.x, self.norms)
        self.out_idx[rows][bad] = r_idx
        self.out_sqd[rows][bad] = r_sqd
        self.counts["exact_pairs"] += pairs

    def refine(self, rows: slice, q: np.ndarray, cand_val, cand_idx, thr) -> None:
        """Steps 4–5 for the query rows ``q`` (output rows ``rows``) and their candidates."""
        from rra.knn import kernels

        ok = np.empty(q.size, dtype=np.bool_)
        n_exact = np.empty(q.size, dtype=np.int64)
        kernels.refine(cand_val, cand_idx, thr, q, self.k, self.n_cand == self.n - 1, self.sq,
                       self.nc, self.gamma, self.radius, self.x, self.norms, self.out_idx[rows],
                       self.out_sqd[rows], ok, n_exact)
        self.counts["exact_pairs"] += int(n_exact.sum())
        self.recheck(rows, q, ok)


def _heaps_search(search: _Search, queries: np.ndarray, block_rows: int,
                  progress: bool) -> int:
    """Steps 2–5 of the symmetric search with heaps (d ≥ ``HEAP_MIN_D``); returns the block
    rows."""
    n = search.n
    b = min(int(block_rows), n)
    cand_val, cand_idx = _heap_candidates(search.keys, n, search.d, search.n_cand, b, progress)
    for s in range(0, n, REFINE_ROWS):
        rows = slice(s, min(n, s + REFINE_ROWS))
        search.refine(rows, queries[rows], cand_val[rows], cand_idx[rows],
                      cand_val[rows, 0].copy())
    return b


def _group_maxima_search(search: _Search, queries: np.ndarray, block_rows: int,
                         progress: bool) -> tuple[int, int]:
    """Steps 2–5 of the symmetric search with group maxima (d < ``HEAP_MIN_D``): pass 1 keeps
    the maxima of column groups, pass 2 recomputes the groups above each row's threshold.
    Returns ``(group, block rows)``."""
    import numba

    from rra.knn import kernels

    n, d, k = search.n, search.d, search.k
    search.n_cand = n_cand = min(n - 1, k + symmetric_margin(k))
    group = gram_group(n, d, n_cand)
    b = min(n, max(group, int(block_rows) // group * group))
    ka = search.ka
    kb = np.empty((n, d + 2), np.float32)  # [c, 1, −h]
    kb[:, :d] = ka[:, :d]
    kb[:, d] = 1
    kb[:, d + 1] = ka[:, d]
    gm = _gram_pass1(ka, kb, group, n_cand, b, progress)
    ok = np.empty(min(n, REFINE_ROWS), dtype=np.bool_)
    widened = np.empty(min(n, REFINE_ROWS), dtype=np.bool_)
    n_exact = np.empty(min(n, REFINE_ROWS), dtype=np.int64)
    for s in range(0, n, REFINE_ROWS):  # pass 2
        rows = slice(s, min(n, s + REFINE_ROWS))
        mr = rows.stop - s
        kernels.gram_select_refine(gm, ka, kb, s, mr, b, group, n_cand, k, n_cand == n - 1,
                                   search.nc, search.gamma, search.radius, search.x,
                                   search.norms, search.out_idx[rows], search.out_sqd[rows],
                                   ok[:mr], n_exact[:mr], widened[:mr], numba.get_num_threads())
        search.counts["exact_pairs"] += int(n_exact[:mr].sum())
        search.counts["rows_widened"] += int(widened[:mr].sum())
        search.recheck(rows, queries[rows], ok[:mr])
    return group, b


def _gram_pass1(ka: np.ndarray, kb: np.ndarray, group: int, p: int, b: int,
                progress: bool) -> np.ndarray:
    """Pass 1 of the symmetric search: ``S = ka kbᵀ`` block by block (each product once), its
    group maxima into an n × :func:`_gram_width` float32 matrix (:func:`_gram_maxima`)."""
    import torch
    from tqdm.auto import tqdm

    n, d = ka.shape[0], ka.shape[1] - 2
    gm = np.empty((n, _gram_width(n, p, group, b)), np.float32)
    ta, tb, t_gm = torch.from_numpy(ka), torch.from_numpy(kb), torch.from_numpy(gm)
    buf = torch.empty((b, n), dtype=torch.float32)
    for a in tqdm(range(0, n, b), desc=f"exact kNN n={n} d={d}", unit="block",
                  disable=None if progress else True):
        bb = min(b, n - a)
        # (an output with the buffer's row stride: much faster than a contiguous one here)
        s_blk = torch.mm(ta[a:a + bb], tb[a:].T, out=buf[:bb, :n - a])
        _gram_maxima(s_blk, a, group, p, t_gm)
    return gm


def _per_block_search(search: _Search, queries: np.ndarray, block_rows: int | None,
                      progress: bool) -> tuple[int, int]:
    """Steps 2–5 per block of query rows: on the CPU in float32 fused per row
    (``rra.knn.kernels.select_refine``), else ``torch.topk`` candidates refined on the CPU.
    Returns ``(group, block rows)``."""
    import torch
    from tqdm.auto import tqdm

    from rra.knn import kernels

    n, d, m, dev = search.n, search.d, queries.size, search.dev
    group = kernels.group_size(n, search.n_cand)
    tdtype, np_dtype = search.keys.dtype, search.ka.dtype
    if block_rows is None:
        block_rows = default_block_rows(n, d if dev.type == "cpu" else None, np_dtype.itemsize)
    b = min(int(block_rows), max(1, m))
    buf = torch.empty((b, n), dtype=tdtype, device=dev)
    fused = dev.type == "cpu" and tdtype == torch.float32
    if not fused:
        cand_val = np.empty((b, search.n_cand), dtype=np_dtype)
        cand_idx = np.empty((b, search.n_cand), dtype=np.int64)
        thr = np.empty(b, dtype=np_dtype)
    ok = np.empty(b, dtype=np.bool_)
    n_exact = np.empty(b, dtype=np.int64)
    for s in tqdm(range(0, m, b), desc=f"exact kNN n={n} d={d}", unit="block",
                  disable=None if progress else True):
        q = queries[s:s + b]
        bb = q.size
        rows = slice(s, s + bb)
        o = search.products(q, out=buf[:bb], exclude_self=not fused)
        if fused:  # 3–5 per row while it is in cache
            _select_refine_block(search, o, q, rows, group, ok[:bb], n_exact[:bb])
            continue
        # 3. candidates: the n_cand largest o_ij per row, and a value no other column exceeds
        vals, cand = torch.topk(o, search.n_cand, dim=1, largest=True, sorted=False)
        cand_val[:bb] = vals.cpu().numpy()
        cand_idx[:bb] = cand.cpu().numpy()
        thr[:bb] = vals.min(dim=1).values.cpu().numpy()
        search.refine(rows, q, cand_val[:bb], cand_idx[:bb], thr[:bb])
    return group, b


def _select_refine_block(search: _Search, o, q: np.ndarray, rows: slice, group: int,
                         ok: np.ndarray, n_exact: np.ndarray) -> None:
    """Steps 3–5 of the per-block search for one block of float32 CPU products ``o``."""
    import numba

    from rra.knn import kernels

    n = search.n
    kernels.select_refine(o.numpy(), q, search.n_cand, search.k, group, search.n_cand == n - 1,
                          search.sq, search.nc, search.gamma, search.radius, search.x,
                          search.norms, search.out_idx[rows], search.out_sqd[rows], ok, n_exact,
                          numba.get_num_threads())
    if (n_exact < 0).any():  # impossible: a row has n − 1 finite values
        raise RuntimeError("kNN candidate selection failed; please report this as a bug")
    search.counts["exact_pairs"] += int(n_exact.sum())
    search.recheck(rows, q, ok)


def _gram_width(n: int, p: int, group: int, block: int) -> int:
    """Columns of the symmetric search's group-maxima matrix: row ``j`` of the block starting
    at ``a`` holds ``a // group`` groups of the columns before ``a`` (``[q G, (q + 1) G)``),
    then the strided groups of its columns from ``a`` on."""
    from rra.knn.kernels import _strided_groups

    return max(a // group + _strided_groups(n - a, p, group)[0] for a in range(0, n, block))


def _gram_maxima(s, a: int, group: int, p: int, gm) -> None:
    """Pass 1 of the symmetric search for the block of rows ``[a, a + B)`` (torch tensors):
    ``s = S[a:a + B, a:]`` (B × w float32, rows contiguous; B a multiple of ``group`` unless it
    is the last block), ``gm`` the group-maxima matrix (n × :func:`_gram_width`).

    - Row ``a + r``: self → −∞, then the maxima of the strided groups of ``s[r]``
      (``rra.knn.kernels._strided_groups(w, p, group)``) into ``gm[a + r, a // group:]``;
    - row ``a + t`` after the block (t ≥ B): ``gm[a + t, a // group + q]`` = the maximum of
      ``s[q G:(q + 1) G, t]``.

    Both are maxima over a middle axis (``torch.amax``, vectorised); a maximum is exact.
    """
    import torch

    from rra.knn.kernels import _strided_groups

    b, w = s.shape
    col0 = a // group
    ng, full = _strided_groups(w, p, group)
    s[:, :b].fill_diagonal_(-float("inf"))
    rows = gm[a:a + b, col0:col0 + ng]
    torch.amax(s[:, :full * ng].view(b, full, ng), dim=1, out=rows)
    rest = w - full * ng
    if rest:
        torch.maximum(rows[:, :rest], s[:, full * ng:], out=rows[:, :rest])
    nq = b // group
    if w > b and nq:
        after = torch.amax(s[:nq * group, b:].reshape(nq, group, w - b), dim=1)
        gm[a + b:a + w, col0:col0 + nq] = after.T


def _heap_candidates(keys, n: int, d: int, p: int, block: int,
                     progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2–3 of the symmetric search for large d (heaps). For each block I of rows,
    ``G = C_I C_{J}ᵀ`` over the columns ``J = I and after``: rows I take ``G_ij − h_j`` and the
    rows after I take ``G_ij − h_i`` (the Gram matrix is symmetric), ``h`` the keys' last column
    negated, ``fl(‖c‖²/2)``. Each row streams its values through a heap of the ``p`` largest
    (``rra.knn.kernels.absorb_rows``, on the block and on its transpose).

    Returns ``(values float32 n × p, columns int64 n × p)``, each row a min-heap: column 0 holds
    the smallest kept value, which bounds every value the row left out.
    """
    import torch
    from tqdm.auto import tqdm

    from rra.knn import kernels

    c = keys[:, :d]
    h = np.ascontiguousarray(-keys[:, d].numpy())
    hv = np.full((n, p), -np.inf, dtype=np.float32)
    hi = np.full((n, p), -1, dtype=np.int64)
    hc = np.zeros(n, dtype=np.int64)
    buf = torch.empty((block, n), dtype=keys.dtype)
    buf_t = torch.empty((n - block, block), dtype=keys.dtype)  # the rows after the first block
    for a in tqdm(range(0, n, block), desc=f"exact kNN n={n} d={d}", unit="block",
                  disable=None if progress else True):
        ni = min(n, a + block) - a
        g = torch.mm(c[a:a + ni], c[a:].T, out=buf[:ni, :n - a])
        g[:, :ni].fill_diagonal_(-float("inf"))  # self
        kernels.absorb_rows(g.numpy(), a, a, h, p, kernels.group_size(n - a, p), hv, hi, hc)
        rest = n - a - ni
        if rest:  # the rows after I, through the transposed block
            g_t = buf_t[:rest, :ni].copy_(g[:, ni:].T)
            kernels.absorb_rows(g_t.numpy(), a + ni, a, h, p, kernels.group_size(ni, p),
                                hv, hi, hc)
    if (hc < p).any() or (hi < 0).any():  # impossible: every row sees n − 1 finite values
        raise RuntimeError("kNN candidate selection failed; please report this as a bug")
    return hv, hi
