"""One entry for both backends: ``knn(x, k, distance, backend)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from rra.knn.annoy_backend import knn_annoy
from rra.knn.common import as_matrix, check_distance, finish, prepare_points
from rra.knn.exact import exact_neighbours

BACKENDS = ("auto", "exact", "annoy")
EXACT_OPTIONS = frozenset({"block_rows", "device", "dtype", "progress"})
ANNOY_OPTIONS = frozenset({"n_trees", "search_k", "seed", "index_path", "recall_target",
                           "recall_sample", "max_search_k", "progress"})
DEFAULT_EXACT_BUDGET = 5e11


def choose_backend(n: int, d: int, backend: str = "auto",
                   exact_budget: float = DEFAULT_EXACT_BUDGET) -> str:
    """``auto`` → ``exact`` if n · n · d ≤ exact_budget (the product's multiply-adds), else
    ``annoy``. [ours]"""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}: use one of {BACKENDS}")
    if backend != "auto":
        return backend
    return "exact" if float(n) * float(n) * float(d) <= float(exact_budget) else "annoy"


def knn(x: Any, k: int, distance: str = "euclidean", backend: str = "auto",
        exact_budget: float = DEFAULT_EXACT_BUDGET,
        **opts: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """kNN graph of the rows of ``x`` with the chosen backend: ``(idx int32, dist float32, info)``.

    ``opts`` may hold options of either backend (``knn_exact``: block_rows, device, dtype;
    ``knn_annoy``: n_trees, search_k, seed, index_path, recall_target, recall_sample,
    max_search_k; both: progress); those of the backend not used are ignored, unknown names are
    an error. ``info["backend"]`` is the backend used; for ``exact`` ``info["recall"]`` is 1.0
    and ``info["search_k"]`` is ``None``.
    """
    unknown = set(opts) - EXACT_OPTIONS - ANNOY_OPTIONS
    if unknown:
        raise ValueError(f"unknown kNN option(s) {sorted(unknown)}; exact takes "
                         f"{sorted(EXACT_OPTIONS)}, annoy takes {sorted(ANNOY_OPTIONS)}")
    check_distance(distance)
    x = as_matrix(x)
    used = choose_backend(x.shape[0], x.shape[1], backend, exact_budget)
    if used == "exact":
        idx, sqd, stats = exact_neighbours(prepare_points(x, distance), k,
                                           **{o: v for o, v in opts.items() if o in EXACT_OPTIONS})
        idx, dist = finish(idx, sqd)
        info = {"recall": 1.0, "search_k": None, **stats}
    else:
        idx, dist, info = knn_annoy(x, k, distance,
                                    **{o: v for o, v in opts.items() if o in ANNOY_OPTIONS})
    info.update(backend=used, backend_requested=backend, exact_budget=float(exact_budget))
    return idx, dist, info
