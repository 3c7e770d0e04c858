"""One entry for both backends: ``knn(x, k, distance, backend)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rra.knn.annoy_backend import _check_options as check_annoy_options
from rra.knn.annoy_backend import _check_recall_k as check_recall_k
from rra.knn.annoy_backend import ON_RECALL_MISS, knn_annoy
from rra.knn.common import as_matrix, check_distance, check_k, finish, prepare_points
from rra.knn.cost import (ANNOY_DEFAULTS, CostModel, annoy_search_k_needed, annoy_seconds,
                          cost_model, exact_seconds, fmt_seconds)
from rra.knn.exact import exact_neighbours

BACKENDS = ("auto", "exact", "annoy")
EXACT_OPTIONS = frozenset({"block_rows", "device", "dtype", "progress"})
ANNOY_OPTIONS = frozenset({"n_trees", "search_k", "seed", "index_path", "recall_target",
                           "recall_sample", "max_search_k", "on_recall_miss", "name",
                           "progress"})


def choose_backend(n: int, d: int, k: int, backend: str = "auto", *,
                   cost: CostModel | dict | None = None, threads: int | None = None,
                   **annoy: Any) -> dict[str, Any]:
    """Which backend builds the kNN graph of an n × d embedding at ``k``, and why. [ours,
    measured: the cost model of :mod:`rra.knn.cost`]

    An explicit ``exact`` or ``annoy`` is kept. ``auto`` picks ``annoy`` only where Annoy's
    recall target is predicted reachable (below search_k = n and within ``max_search_k``, or
    the fixed search_k) AND Annoy (build + tuning + query) is predicted faster than the exact
    search; otherwise ``exact``. ``annoy``: the Annoy options that enter the prediction
    (n_trees, search_k, recall_target, recall_sample, max_search_k; knn_annoy's defaults);
    ``cost``: overrides of :class:`rra.knn.cost.CostModel`; ``threads``: of the exact search
    (default torch's).

    Returns ``{"backend", "requested", "reason", "predicted_s"}``; ``auto`` adds
    ``annoy_search_k`` (planned), ``annoy_recall_reachable`` and ``threads``. ``predicted_s``
    (``None`` for an explicit backend): seconds of ``exact`` and ``annoy`` (and Annoy's
    ``annoy_build``, ``annoy_tuning``, ``annoy_query``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}: use one of {BACKENDS}")
    if backend != "auto":
        return {"backend": backend, "requested": backend, "reason": f"requested {backend}",
                "predicted_s": None}
    model = cost_model(cost)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    opts, target = _annoy_options(n, annoy)
    n_trees, search_k = opts["n_trees"], opts["search_k"]
    max_sk = int(opts["max_search_k"]) if opts["max_search_k"] is not None else n * int(n_trees)
    needed = annoy_search_k_needed(n, d, k, n_trees, target, model)
    planned, limit = _planned_search_k(needed, search_k, int(n_trees) * (k + 1), max_sk)
    reachable = needed <= limit and needed < n
    exact_s = exact_seconds(n, d, k, threads, model)
    annoy_s = annoy_seconds(n, d, planned, search_k == "auto", int(opts["recall_sample"]),
                            int(n_trees), threads, model)
    predicted = {"exact": exact_s, "annoy": annoy_s["total"], "annoy_build": annoy_s["build"],
                 "annoy_tuning": annoy_s["tuning"], "annoy_query": annoy_s["query"]}
    used, reason = _auto_decision(exact_s, annoy_s["total"], reachable, needed, n, d, target,
                                  search_k == "auto", planned, limit)
    return {"backend": used, "requested": "auto", "reason": reason, "predicted_s": predicted,
            "annoy_search_k": planned, "annoy_recall_reachable": bool(reachable),
            "threads": int(threads)}


def _annoy_options(n: int, annoy: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Annoy's options with knn_annoy's defaults filled in, checked, and the recall target."""
    unknown = set(annoy) - set(ANNOY_DEFAULTS)
    if unknown:
        raise ValueError(f"choose_backend: unknown Annoy option(s) {sorted(unknown)}; "
                         f"known: {sorted(ANNOY_DEFAULTS)}")
    opts = {**ANNOY_DEFAULTS, **annoy}
    target = float(opts["recall_target"])
    check_annoy_options(n, opts["n_trees"], opts["search_k"], target, opts["recall_sample"],
                        opts["max_search_k"])
    return opts, target


def _planned_search_k(needed: float, search_k: Any, default_sk: int,
                      max_sk: int) -> tuple[int, int]:
    """``(planned, limit)``: the search_k Annoy would run at and the largest it may reach.
    ``auto``'s doubling from Annoy's default ``default_sk`` stops at the needed search_k, at
    most ``max_sk``; a fixed search_k (``-1``: the default) is both."""
    if search_k == "auto":
        return int(min(max(needed, min(default_sk, max_sk)), max_sk)), max_sk
    planned = default_sk if search_k == -1 else int(search_k)
    return planned, planned


def _auto_decision(exact_s: float, annoy_s: float, reachable: bool, needed: float, n: int,
                   d: int, target: float, auto_sk: bool, planned: int,
                   limit: int) -> tuple[str, str]:
    """``(backend, reason)`` of ``auto``: Annoy where its recall is reachable and it is
    predicted faster, else exact."""
    e, a = fmt_seconds(exact_s), fmt_seconds(annoy_s)
    if not reachable:
        if needed >= n:
            why = "search_k ≥ n (a brute force)"
        else:
            why = (f"search_k ≈ {needed:.0f} > "
                   + ("max_search_k" if auto_sk else "the fixed search_k")
                   + f" = {limit}")
        return "exact", (f"auto: exact predicted {e}; Annoy's recall {target:g} at d = {d} "
                         f"predicted to need {why} (Annoy predicted {a})")
    if annoy_s < exact_s:
        return "annoy", (f"auto: Annoy predicted {a} vs exact {e} (search_k ≈ {planned}, "
                         f"recall {target:g})")
    return "exact", (f"auto: exact predicted {e} vs Annoy {a} (search_k ≈ {planned}, "
                     f"recall {target:g})")


def knn(x: Any, k: int, distance: str = "euclidean", backend: str = "auto",
        cost: CostModel | dict | None = None, recall_k: Sequence[int] | None = None,
        **opts: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """kNN graph of the rows of ``x`` with the chosen backend: ``(idx int32, dist float32, info)``.

    ``opts`` may hold options of either backend (``knn_exact``: block_rows, device, dtype;
    ``knn_annoy``: n_trees, search_k, seed, index_path, recall_target, recall_sample,
    max_search_k, on_recall_miss, name; both: progress); those of the backend not used are
    ignored, unknown names are an error. ``cost``: overrides of the cost model behind ``auto``
    (:func:`choose_backend`). ``recall_k``: the analysed k values (≤ k) at which Annoy's recall
    is measured and checked, besides k.
    ``info["backend"]`` is the backend used, ``info["backend_reason"]`` why and
    ``info["predicted_seconds"]`` the cost model's times (``None`` for an explicit backend); for
    ``exact`` ``info["recall"]`` is 1.0 (so is every ``info["recall_at_k"]``: exact by
    construction), ``info["recall_target_met"]`` is True and ``info["search_k"]`` is ``None``.
    """
    unknown = set(opts) - EXACT_OPTIONS - ANNOY_OPTIONS
    if unknown:
        raise ValueError(f"unknown kNN option(s) {sorted(unknown)}; exact takes "
                         f"{sorted(EXACT_OPTIONS)}, annoy takes {sorted(ANNOY_OPTIONS)}, "
                         "both take cost")
    check_distance(distance)
    x = as_matrix(x)
    k = check_k(k, x.shape[0])
    ks = check_recall_k(recall_k, k)
    if opts.get("on_recall_miss", "error") not in ON_RECALL_MISS:  # checked whatever runs
        raise ValueError(f"on_recall_miss must be one of {ON_RECALL_MISS}, got "
                         f"{opts['on_recall_miss']!r}")
    decision = choose_backend(x.shape[0], x.shape[1], k, backend, cost=cost,
                              **{o: v for o, v in opts.items() if o in ANNOY_DEFAULTS})
    used = decision["backend"]
    if used == "exact":
        idx, sqd, stats = exact_neighbours(prepare_points(x, distance), k,
                                           **{o: v for o, v in opts.items() if o in EXACT_OPTIONS})
        idx, dist = finish(idx, sqd)
        info = {"recall": 1.0, "recall_at_k": {str(kk): 1.0 for kk in ks},
                "recall_target_met": True, "search_k": None, **stats}
    else:
        idx, dist, info = knn_annoy(x, k, distance, recall_k=ks,
                                    **{o: v for o, v in opts.items() if o in ANNOY_OPTIONS})
    info.update(backend=used, backend_requested=backend, backend_reason=decision["reason"],
                predicted_seconds=decision["predicted_s"])
    return idx, dist, info
