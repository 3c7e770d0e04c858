"""Exact kNN graphs by blocked matrix products, certified against float64. [source: directed
kNN graph, Euclidean distance; ours: blocking, centring and the certification below]

For each row ``i``: ``K[i]`` = the ``k`` rows ``j ≠ i`` with the smallest distance
``‖z_i − z_j‖``, sorted by (distance, index), so ties — at the k-th place too — go to the smaller
row index. The result equals a brute-force float64 computation (full distance matrix, lexsort by
(distance, index)); float32 is used only to find candidates quickly:

1. Centre the rows, ``c_i = fl32(z_i − μ)`` (distances do not change; cancellation shrinks).
2. Per block of query rows, ``a_ij = ‖c_j‖² − 2 c_i·c_j`` by one matrix product (``+‖c_i‖²``
   is constant along a row and added only where needed), self excluded. (The code holds −a and
   takes the largest values: torch's CPU top-k is faster that way.)
3. Candidates: the ``k + margin`` smallest ``a_ij`` per row (``torch.topk``). Their exact squared
   distances ``e_ij = ‖z_i − z_j‖²`` are computed directly in float64 and sorted by
   (e, index); ``E_i`` is the k-th of them.
4. Certificate: with ``|a_ij + ‖c_i‖² − e_ij| ≤ γ (‖c_i‖ + ‖c_j‖)²`` (worst-case rounding-error
   bound of the float32 product and of the centring, γ = 1.01 (γ_{d+2} + 6u), u the unit
   round-off of the product under torch's matmul precision setting, γ_m = m u / (1 − m u)),
   every non-candidate ``j`` has ``e_ij ≥ max_cand(a) + ‖c_i‖² − γ (‖c_i‖ + R)²`` (R = max‖c‖).
   If that exceeds ``E_i`` the candidates hold the answer. Otherwise (close calls and ties at the
   boundary) the row is re-checked: every ``j`` with ``a_ij + ‖c_i‖² − γ (‖c_i‖ + ‖c_j‖)² ≤ E_i``
   gets its exact distance, and the first k by (e, index) are kept. The bound is the worst case
   of any summation order, so the answer does not depend on BLAS, threads or device. If the
   bound is void ((d + 2) u ≥ ½, e.g. with bf16 matmuls allowed) the products run in float64.

Reported distances are ``sqrt(e_ij)`` rounded to float32; the order is by the float64 value.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from rra.knn.common import Points, check_k, finish, prepare_points, sort_neighbours

BLOCK_BYTES = 256 << 20  # one block's distance matrix


def candidate_margin(k: int) -> int:
    """Extra candidates beyond k taken from the float32 pass: max(8, k // 4). [ours]"""
    return max(8, k // 4)


def default_block_rows(n: int, itemsize: int = 4, budget: int = BLOCK_BYTES) -> int:
    """Query rows per block so that one block × n distance matrix fits in ``budget`` bytes."""
    return int(min(n, max(1, budget // (itemsize * n))))


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


def knn_exact(x: Any, k: int, distance: str = "euclidean", block_rows: int | None = None,
              device: str = "cpu", dtype: Any = "float32",
              progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact directed kNN graph of the rows of ``x``: ``(idx int32 n × k, dist float32 n × k)``.

    ``x``: n × d array (numpy, memory-mapped or not). ``distance``: ``euclidean`` or ``cosine``.
    ``block_rows``: query rows per block (default: the block's n-wide matrix takes ≤ 256 MB).
    ``device``: ``cpu``, ``cuda[:N]`` or ``auto`` (``rra.device.pick_device``). ``dtype``: of the
    candidate products (float32, or float64; the result is exact either way).
    See the module docstring for the method and its guarantee.
    """
    idx, sqd, _ = exact_neighbours(prepare_points(x, distance), k, block_rows=block_rows,
                                   device=device, dtype=dtype, progress=progress)
    return finish(idx, sqd)


def exact_neighbours(points: Points, k: int, queries: np.ndarray | None = None,
                     block_rows: int | None = None, device: str = "cpu", dtype: Any = "float32",
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact neighbours of the rows ``queries`` (default: all) among all rows of ``points``.

    Returns ``(idx int64 m × k, squared distances float64 m × k, stats)``; ``stats`` counts the
    rows that needed the re-check and the exact distances computed. Costs m × n × d for the
    products, so a sample of m rows is cheap to check against.
    """
    import torch
    from tqdm.auto import tqdm

    from rra.device import pick_device

    n, d = points.n, points.d
    k = check_k(k, n)
    dev = pick_device(device)
    tdtype = _torch_dtype(dtype)
    u = _unit_roundoff(tdtype, dev)
    if (d + 2) * u >= 0.5:  # the error bound is void: fall back to float64 products
        warnings.warn(f"float32 matmul precision {torch.get_float32_matmul_precision()!r} is too "
                      f"coarse for d = {d}; computing the kNN products in float64")
        tdtype, u = torch.float64, 2.0 ** -53
    gamma_d = (d + 2) * u / (1 - (d + 2) * u)
    gamma = 1.01 * (gamma_d + 6 * u)
    np_dtype = np.float32 if tdtype == torch.float32 else np.float64

    if queries is None:
        queries_arr = np.arange(n, dtype=np.int64)
    else:
        queries_arr = np.asarray(queries, dtype=np.int64).ravel()
        if queries_arr.size and (queries_arr.min() < 0 or queries_arr.max() >= n):
            raise ValueError(f"query rows must lie in [0, {n})")
    m = queries_arr.size
    t0 = time.perf_counter()

    # 1. centred copy of the rows in the product dtype, and the exact norms of that copy
    c = torch.empty((n, d), dtype=tdtype, device=dev)
    sq = np.empty(n, dtype=np.float64)
    step = max(1, (32 << 20) // (8 * d))
    for s in range(0, n, step):
        part = (points.rows(slice(s, s + step)) - points.mean).astype(np_dtype)
        sq[s:s + step] = (part.astype(np.float64) ** 2).sum(axis=1)
        c[s:s + step] = torch.from_numpy(part).to(dev)
    if 4 * sq.max() >= np.finfo(np_dtype).max:
        raise ValueError(f"values too large for {np_dtype.__name__} products (max squared norm "
                         f"{sq.max():.3g} after centring); use dtype='float64'")
    nc = np.sqrt(sq)
    radius = float(nc.max())
    neg_sq_row = torch.from_numpy(-sq.astype(np_dtype)).to(dev)[None, :]
    sq_dev = torch.from_numpy(sq).to(dev)
    nc_dev = torch.from_numpy(nc).to(dev)

    n_cand = min(n - 1, k + candidate_margin(k))
    itemsize = np.dtype(np_dtype).itemsize
    b = int(block_rows) if block_rows is not None else default_block_rows(n, itemsize)
    if b < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    b = min(b, max(1, m))
    buf = torch.empty((b, n), dtype=tdtype, device=dev)
    inf = float("inf")

    out_idx = np.empty((m, k), dtype=np.int64)
    out_sqd = np.empty((m, k), dtype=np.float64)
    rechecked = 0
    exact_pairs = 0
    starts = range(0, m, b)
    for s in tqdm(starts, desc=f"exact kNN n={n} d={d}", unit="block",
                  disable=None if progress else True):
        q = queries_arr[s:s + b]
        bb = q.size
        q_dev = torch.from_numpy(q).to(dev)
        rows_q = c[s:s + bb] if queries is None else c.index_select(0, q_dev)
        # 2. neg_a_ij = −(‖c_j‖² − 2 c_i·c_j), self excluded
        neg_a = torch.addmm(neg_sq_row, rows_q, c.T, alpha=2, out=buf[:bb])
        neg_a[torch.arange(bb, device=dev), q_dev] = -inf
        # 3. candidates (the largest −a) and their exact distances
        vals, cand = torch.topk(neg_a, n_cand, dim=1, largest=True, sorted=False)
        cand = cand.cpu().numpy()
        cols, e = sort_neighbours(cand, points.sqdist(q, cand), n_cand)
        exact_pairs += cand.size
        kth = e[:, k - 1]
        # 4. certificate
        if n_cand == n - 1:
            ok = np.ones(bb, dtype=bool)
        else:
            floor = sq[q] - vals.min(dim=1).values.double().cpu().numpy()
            ok = kth < floor - gamma * (nc[q] + radius) ** 2
        out_idx[s:s + bb] = cols[:, :k]
        out_sqd[s:s + bb] = e[:, :k]
        bad = np.flatnonzero(~ok)
        if bad.size:
            rechecked += bad.size
            sub = max(1, (BLOCK_BYTES // 3) // (8 * n))
            for r0 in range(0, bad.size, sub):
                rr = bad[r0:r0 + sub]
                qi = q[rr]
                qi_dev = torch.from_numpy(qi).to(dev)
                # lower bound of e_ij: a_ij + ‖c_i‖² − γ (‖c_i‖ + ‖c_j‖)²
                lower = (sq_dev[qi_dev][:, None]
                         - neg_a.index_select(0, torch.from_numpy(rr).to(dev)).double()
                         - gamma * (nc_dev[qi_dev][:, None] + nc_dev[None, :]) ** 2)
                mask = lower <= torch.from_numpy(kth[rr]).to(dev)[:, None]
                loc, jj = (t.cpu().numpy() for t in torch.nonzero(mask, as_tuple=True))
                del lower, mask
                e_pairs = points.sqdist_pairs(qi[loc], jj)
                exact_pairs += e_pairs.size
                order = np.lexsort((jj, e_pairs, loc))
                counts = np.bincount(loc, minlength=rr.size)
                if counts.min() < k:  # impossible while the error bound holds
                    raise RuntimeError("kNN certification failed: fewer than k rows within the "
                                       "error bound; please report this as a bug")
                first = (np.cumsum(counts) - counts)[:, None] + np.arange(k)[None, :]
                sel = order[first]
                out_idx[s + rr] = jj[sel]
                out_sqd[s + rr] = e_pairs[sel]
    stats = {"block_rows": b, "candidates": n_cand, "rows_rechecked": int(rechecked),
             "exact_pairs": int(exact_pairs), "device": str(dev), "dtype": str(tdtype),
             "seconds": time.perf_counter() - t0}
    return out_idx, out_sqd, stats
