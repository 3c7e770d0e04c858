"""Approximate kNN graphs with Annoy, with recall measured against exact. [source: Annoy backend
with n_trees, search_k and a fixed seed; ours: the search_k tuning and the recall sample]

Index: ``AnnoyIndex(d, "euclidean" | "angular")`` (``angular`` is the Euclidean distance of
L2-normalised rows, our ``cosine``), ``set_seed(seed)``, items added in row order,
``build(n_trees, n_jobs=1)`` (single-threaded, so the same inputs give a byte-identical index).

Query: ``get_nns_by_item(i, k + 1, search_k)``; self is dropped (if Annoy did not return it, the
k + 1 returned rows compete for the k places). The kept neighbours get exact float64 distances
(``rra.knn.common``) and are sorted by (distance, index), as in the exact backend. A row for
which Annoy returns fewer than k other rows gets its exact neighbours instead.

recall@k = mean over rows of |A_i ∩ E_i| / k (A approximate, E exact neighbour sets), measured on
a fixed seeded sample of rows whose exact neighbours cost sample × n distances, not n².

``search_k="auto"``: start at Annoy's own default n_trees · (k + 1), double until the sample
recall reaches ``recall_target`` or ``max_search_k`` (default n · n_trees) is reached; the whole
trajectory is recorded. Annoy's search is deterministic for a given index and search_k, so the
sample rows of the final graph reproduce the last recall of the trajectory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rra.knn.common import Points, check_k, finish, prepare_points, sort_neighbours
from rra.knn.exact import exact_neighbours

ANNOY_METRIC = {"euclidean": "euclidean", "cosine": "angular"}


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """recall@k = mean_i |A_i ∩ E_i| / k over rows of two n × k neighbour arrays. [ours]"""
    from rra.metrics.common import overlap_counts

    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.ndim != 2 or a.shape != e.shape:
        raise ValueError(f"recall_at_k needs two n × k arrays of the same shape, got {a.shape} "
                         f"and {e.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"recall_at_k needs at least one row and one neighbour, got {a.shape}")
    return float(overlap_counts(a.astype(np.int64), e.astype(np.int64)).mean() / a.shape[1])


def _check_options(n: int, n_trees: Any, search_k: Any, recall_target: Any, recall_sample: Any,
                   max_search_k: Any) -> None:
    def positive_int(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    positive_int("n_trees", n_trees)
    positive_int("recall_sample", recall_sample)
    if max_search_k is not None:
        positive_int("max_search_k", max_search_k)
    if search_k != "auto" and search_k != -1:
        if isinstance(search_k, str):
            raise ValueError(f"search_k must be 'auto', -1 or a positive integer, got {search_k!r}")
        positive_int("search_k", search_k)
    if not 0 < float(recall_target) <= 1:
        raise ValueError(f"recall_target must lie in (0, 1], got {recall_target!r}")


def _build_index(points: Points, n_trees: int, seed: int, index_path: str | Path | None,
                 progress: bool = False):
    from annoy import AnnoyIndex
    from tqdm.auto import tqdm

    from rra.io import atomic_path

    index = AnnoyIndex(points.d, ANNOY_METRIC[points.distance])
    index.set_seed(int(seed))
    x = points.x
    step = max(1, (16 << 20) // (4 * points.d))
    for s in tqdm(range(0, points.n, step), desc="annoy add", unit="chunk",
                  disable=None if progress else True):
        part = np.asarray(x[s:s + step], dtype=np.float32)
        for r, row in enumerate(part):
            index.add_item(s + r, row.tolist())
    index.build(int(n_trees), n_jobs=1)
    if index_path is not None:
        # Annoy's save needs a path string; it maps the saved file, which survives the rename.
        with atomic_path(index_path, suffix=".annoy") as tmp:
            if not index.save(str(tmp)):
                raise OSError(f"annoy could not save its index to {tmp}")
    return index


def _query(index, points: Points, rows: np.ndarray, k: int, search_k: int,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Neighbours of ``rows`` from Annoy, with exact distances; exact fallback for short rows."""
    from tqdm.auto import tqdm

    m = rows.size
    cand = np.full((m, k + 1), -1, dtype=np.int64)
    short = []
    for r, i in enumerate(tqdm(rows.tolist(), desc=f"annoy query search_k={search_k}",
                               unit="row", disable=None if progress else True)):
        got = [j for j in index.get_nns_by_item(i, k + 1, search_k) if j != i]
        if len(got) < k:
            short.append(r)
        got = got[:k + 1]
        cand[r, :len(got)] = got
    valid = cand >= 0
    sqd = np.full(cand.shape, np.inf)
    sqd[valid] = points.sqdist_pairs(np.broadcast_to(rows[:, None], cand.shape)[valid],
                                     cand[valid])
    idx, sqd = sort_neighbours(np.where(valid, cand, np.iinfo(np.int64).max), sqd, k)
    short = np.asarray(short, dtype=np.int64)
    if short.size:
        idx[short], sqd[short], _ = exact_neighbours(points, k, queries=rows[short],
                                                     progress=False)
    return idx, sqd, int(short.size)


def knn_annoy(x: Any, k: int, distance: str = "euclidean", n_trees: int = 50,
              search_k: int | str = "auto", seed: int = 0, index_path: str | Path | None = None,
              recall_target: float = 0.95, recall_sample: int = 500,
              max_search_k: int | None = None,
              progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Approximate kNN graph of the rows of ``x`` with Annoy: ``(idx int32, dist float32, info)``.

    ``search_k``: ``"auto"`` (tuned on the recall sample, see the module docstring), ``-1``
    (Annoy's default n_trees · (k + 1)) or a positive integer. ``index_path``: where to save the
    index (written under a temporary name, then renamed); ``None`` keeps it in memory.
    ``info``: search_k (the value used), search_k_requested, recall (on the sample of the final
    graph), recall_sample (rows), n_trees, seed, tuning [(search_k, recall), ...],
    build_seconds, tuning_seconds, query_seconds, rows_exact_fallback, metric.
    """
    points = prepare_points(x, distance)
    n = points.n
    k = check_k(k, n)
    _check_options(n, n_trees, search_k, recall_target, recall_sample, max_search_k)
    max_sk = int(max_search_k) if max_search_k is not None else n * int(n_trees)
    default_sk = int(n_trees) * (k + 1)

    t0 = time.perf_counter()
    index = _build_index(points, n_trees, seed, index_path, progress)
    build_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(int(recall_sample), n),
                                                        replace=False)).astype(np.int64)
    exact_sample, _, _ = exact_neighbours(points, k, queries=sample, progress=False)
    tuning: list[tuple[int, float]] = []
    if search_k == "auto":
        sk = min(default_sk, max_sk)
        while True:
            approx, _, _ = _query(index, points, sample, k, sk)
            tuning.append((sk, recall_at_k(approx, exact_sample)))
            if tuning[-1][1] >= recall_target or sk >= max_sk:
                break
            sk = min(2 * sk, max_sk)
    else:
        sk = default_sk if search_k == -1 else int(search_k)
    tuning_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    idx, sqd, n_short = _query(index, points, np.arange(n, dtype=np.int64), k, sk, progress)
    query_seconds = time.perf_counter() - t0
    info = {
        "search_k": int(sk), "search_k_requested": search_k,
        "recall": recall_at_k(idx[sample], exact_sample), "recall_sample": int(sample.size),
        "recall_target": float(recall_target), "n_trees": int(n_trees), "seed": int(seed),
        "tuning": [[int(s), float(r)] for s, r in tuning], "max_search_k": max_sk,
        "build_seconds": build_seconds, "tuning_seconds": tuning_seconds,
        "query_seconds": query_seconds, "rows_exact_fallback": n_short,
        "metric": ANNOY_METRIC[distance],
        "index_path": str(index_path) if index_path is not None else None,
    }
    index.unload()
    idx, dist = finish(idx, sqd)
    return idx, dist, info
