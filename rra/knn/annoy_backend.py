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
seeded samples of rows whose exact neighbours cost sample × n distances, not n².

Two disjoint samples [ours] (:func:`recall_rows`): one seeded draw of 2m distinct rows,
m = min(recall_sample, ⌊n / 2⌋); the first m are the *tuning* rows (they choose search_k), the
other m the *held-out* rows (they measure the recall that is reported and checked). The reported
recall is thus not biased upwards by the choice of search_k.

Recall is measured at every analysed k (``recall_k``, default k; each at most k): the graph at
k' is the first k' columns of the graph at k, for the exact and the Annoy graph alike (both are
sorted by (distance, index)), so recall@k' comes from the same two arrays
(:func:`recall_by_k`).

``search_k="auto"``: start at Annoy's own default n_trees · (k + 1), double until the tuning
rows' recall (the smallest over ``recall_k``) reaches the tuning aim or ``max_search_k``
(default n · n_trees) is reached; the whole trajectory is recorded. The aim is
``recall_target`` plus a margin for the held-out sample's chance error [ours]:
min(target + 3 σ, (1 + target) / 2), σ = sqrt(target (1 − target) / (m k_min)) (a binomial
proportion over the m rows' k_min neighbour slots, k_min the smallest analysed k). Without it a
search_k that just reaches the target on the tuning rows misses it on the held-out rows about
half the time (measured on the default study: 0.948 at a tuned 0.95). A fixed search_k is not
tuned (the tuning rows go unused).

Recall miss [ours]: when the held-out recall at some k of ``recall_k`` is below
``recall_target`` (a capped ``max_search_k``, a fixed search_k too small for the data, or bad
luck of the held-out sample right at the target), ``on_recall_miss="error"`` (the default)
raises :class:`RecallMissError` before the whole graph is queried, with the recall reached, the
target and the fixes; ``"warn"`` issues a :class:`RecallMissWarning` and returns the graph with
``info["recall_target_met"] = False``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rra.knn.common import Points, check_k, finish, prepare_points, sort_neighbours
from rra.knn.exact import exact_neighbours
from rra.knn.sets import overlap_counts

ANNOY_METRIC = {"euclidean": "euclidean", "cosine": "angular"}
ON_RECALL_MISS = ("error", "warn")


class RecallMissError(ValueError):
    """An Annoy graph whose held-out recall is below its recall target (on_recall_miss error)."""


class RecallMissWarning(UserWarning):
    """An Annoy graph kept although its held-out recall is below target (on_recall_miss warn)."""


def recall_rows(n: int, recall_sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tuning rows, held-out rows)``: two disjoint sorted int64 samples of m rows each,
    m = min(recall_sample, ⌊n / 2⌋), from one seeded draw of 2m distinct rows (the first m
    tune search_k, the other m measure the recall). [ours]"""
    m = min(int(recall_sample), n // 2)
    draw = np.random.default_rng(int(seed)).choice(n, size=2 * m, replace=False)
    return np.sort(draw[:m]).astype(np.int64), np.sort(draw[m:]).astype(np.int64)


def recall_by_k(approx_idx: np.ndarray, exact_idx: np.ndarray,
                ks: Sequence[int]) -> dict[int, float]:
    """recall@k' for each k' in ``ks`` from two m × k neighbour arrays sorted by (distance,
    index), whose first k' columns are the graphs at k'. [ours]

    A neighbour at position p of A_i and q of E_i counts at every k' > max(p, q); rows hold no
    repeated index, so after sorting the concatenation of both rows a shared index appears
    exactly twice, next to itself (as in ``rra.knn.sets.overlap_counts``).
    """
    a = np.asarray(approx_idx, dtype=np.int64)
    e = np.asarray(exact_idx, dtype=np.int64)
    if a.ndim != 2 or a.shape != e.shape or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"recall_by_k needs two non-empty n × k arrays of the same shape, got "
                         f"{a.shape} and {e.shape}")
    m, k = a.shape
    bad = [kk for kk in ks if not 1 <= int(kk) <= k]
    if bad:
        raise ValueError(f"recall_by_k: k values {bad} outside [1, {k}]")
    both = np.concatenate([a, e], axis=1)
    order = np.argsort(both, axis=1, kind="stable")
    values = np.take_along_axis(both, order, axis=1)
    pos = order % k
    shared = values[:, 1:] == values[:, :-1]
    first = np.maximum(pos[:, 1:], pos[:, :-1])[shared]  # counts from k' = first + 1 on
    counts = np.cumsum(np.bincount(first, minlength=k))
    return {int(kk): float(counts[int(kk) - 1] / (m * int(kk))) for kk in ks}


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """recall@k = mean_i |A_i ∩ E_i| / k over rows of two n × k neighbour arrays. [ours]"""
    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.ndim != 2 or a.shape != e.shape:
        raise ValueError(f"recall_at_k needs two n × k arrays of the same shape, got {a.shape} "
                         f"and {e.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"recall_at_k needs at least one row and one neighbour, got {a.shape}")
    return float(overlap_counts(a.astype(np.int64), e.astype(np.int64)).mean() / a.shape[1])


def _check_options(n: int, n_trees: Any, search_k: Any, recall_target: Any, recall_sample: Any,
                   max_search_k: Any, on_recall_miss: Any = "error") -> None:
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
    if on_recall_miss not in ON_RECALL_MISS:
        raise ValueError(f"on_recall_miss must be one of {ON_RECALL_MISS}, got {on_recall_miss!r}")


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


def _check_recall_k(recall_k: Any, k: int) -> list[int]:
    """The k values at which recall is measured and checked: the analysed ones (each in
    [1, k]) and k itself, sorted and distinct."""
    if recall_k is None:
        return [k]
    values = list(recall_k) if isinstance(recall_k, (list, tuple, np.ndarray)) else [recall_k]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                         or not 1 <= v <= k for v in values):
        raise ValueError(f"recall_k must be a non-empty list of integers in [1, k = {k}] (the "
                         f"analysed k values of the stored graph), got {recall_k!r}")
    return sorted({int(v) for v in values} | {k})


def recall_miss_message(info: dict, name: str | None = None) -> str:
    """The message of a graph whose held-out recall misses its target: the recall reached, the
    target, the settings and the fixes (config keys of the workflow)."""
    at_k = info["recall_at_k"]
    missed = [f"recall@{kk} = {r:.3f}" for kk, r in at_k.items() if r < info["recall_target"]]
    if info["search_k_requested"] == "auto":
        capped = info["search_k"] >= info["max_search_k"]
        how = f"search_k = {info['search_k']} (auto{', capped at max_search_k' * capped})"
    else:
        how = f"fixed search_k = {info['search_k']}"
    raise_sk = (f"raise knn.annoy.max_search_k (now {info['max_search_k']})"
                if info["search_k_requested"] == "auto"
                else "raise knn.annoy.search_k or set it to auto")
    where = f"{name}: " if name else ""
    keep = ("Kept (knn.on_recall_miss: warn), flagged recall_target_met = false. To meet it"
            if info["on_recall_miss"] == "warn" else "Fix")
    warn = ("" if info["on_recall_miss"] == "warn" else ", or set knn.on_recall_miss: warn to "
            "keep the graph, flagged recall_target_met = false")
    return (f"{where}Annoy kNN graph below its recall target: {', '.join(missed)} on "
            f"{info['recall_sample']} held-out rows < recall_target = {info['recall_target']:g} "
            f"(n_trees = {info['n_trees']}, {how}). {keep}: {raise_sk}, or use knn.backend: "
            f"exact{warn}")


def knn_annoy(x: Any, k: int, distance: str = "euclidean", n_trees: int = 50,
              search_k: int | str = "auto", seed: int = 0, index_path: str | Path | None = None,
              recall_target: float = 0.95, recall_sample: int = 500,
              max_search_k: int | None = None, recall_k: Sequence[int] | None = None,
              on_recall_miss: str = "error", name: str | None = None,
              progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Approximate kNN graph of the rows of ``x`` with Annoy: ``(idx int32, dist float32, info)``.

    ``search_k``: ``"auto"`` (tuned on the tuning rows, see the module docstring), ``-1``
    (Annoy's default n_trees · (k + 1)) or a positive integer. ``index_path``: where to save the
    index (written under a temporary name, then renamed); ``None`` keeps it in memory.
    ``recall_k``: the analysed k values (≤ k) at which recall is measured and checked, besides
    k itself.
    ``on_recall_miss``: ``"error"`` raises :class:`RecallMissError`, ``"warn"`` warns
    (:class:`RecallMissWarning`) and keeps the graph when a held-out recall is below
    ``recall_target``. ``name``: what the graph is (e.g. its file, hook and scale), for messages.
    ``info``: search_k (the value used), search_k_requested, recall (recall@k on the held-out
    rows of the final graph), recall_at_k ({k': recall@k'} on the held-out rows, keys str),
    recall_target_met (every recall_at_k ≥ recall_target), recall_sample (held-out rows),
    tuning_sample (tuning rows; 0 for a fixed search_k), n_trees, seed, tuning
    [(search_k, smallest recall over recall_k on the tuning rows), ...], build_seconds,
    tuning_seconds (both samples' exact neighbours and the tuning queries), query_seconds,
    rows_exact_fallback, metric, on_recall_miss.
    """
    points = prepare_points(x, distance)
    n = points.n
    k = check_k(k, n)
    _check_options(n, n_trees, search_k, recall_target, recall_sample, max_search_k,
                   on_recall_miss)
    ks = _check_recall_k(recall_k, k)
    max_sk = int(max_search_k) if max_search_k is not None else n * int(n_trees)

    t0 = time.perf_counter()
    index = _build_index(points, n_trees, seed, index_path, progress)
    build_seconds = time.perf_counter() - t0
    tune = _choose_search_k(index, points, k, ks, search_k, int(n_trees), recall_target,
                            recall_sample, seed, max_sk)
    info = {
        "search_k": int(tune.search_k), "search_k_requested": search_k,
        "recall_sample": int(tune.held.size), "tuning_sample": tune.tuning_sample,
        "recall_target": float(recall_target), "n_trees": int(n_trees), "seed": int(seed),
        "tuning": [[int(s), float(r)] for s, r in tune.trajectory], "max_search_k": max_sk,
        "tuning_aim": tune.aim, "build_seconds": build_seconds, "tuning_seconds": tune.seconds,
        "metric": ANNOY_METRIC[distance], "on_recall_miss": on_recall_miss,
        "index_path": str(index_path) if index_path is not None else None,
    }
    # The held-out check comes before the query of all n rows (Annoy's search is deterministic
    # for a given index and search_k, so the final graph's held-out rows are these).
    _check_held_out(index, points, k, ks, tune, info, name)
    idx, sqd = _query_all(index, points, k, ks, tune, info, progress)
    if not info["recall_target_met"]:
        warnings.warn(recall_miss_message(info, name), RecallMissWarning, stacklevel=2)
    index.unload()
    idx, dist = finish(idx, sqd)
    return idx, dist, info


def _check_held_out(index, points: Points, k: int, ks: list[int], tune: "_Tuning", info: dict,
                    name: str | None) -> None:
    """The held-out rows' recall into ``info``; below target under ``on_recall_miss="error"``
    the index is unloaded and :class:`RecallMissError` raised."""
    approx_held, _, _ = _query(index, points, tune.held, k, tune.search_k)
    _set_recall(info, recall_by_k(approx_held, tune.exact_held, ks), k)
    if not info["recall_target_met"] and info["on_recall_miss"] == "error":
        index.unload()
        raise RecallMissError(recall_miss_message(info, name))


def _query_all(index, points: Points, k: int, ks: list[int], tune: "_Tuning", info: dict,
               progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every row's neighbours (int64 indices, float64 squared distances) at the chosen
    search_k; the query's seconds, exact fallbacks and the final graph's held-out recall go
    into ``info``."""
    t0 = time.perf_counter()
    idx, sqd, n_short = _query(index, points, np.arange(points.n, dtype=np.int64), k,
                               tune.search_k, progress)
    info["query_seconds"] = time.perf_counter() - t0
    info["rows_exact_fallback"] = n_short
    _set_recall(info, recall_by_k(idx[tune.held], tune.exact_held, ks), k)
    return idx, sqd


@dataclass
class _Tuning:
    """The search_k chosen and what chose it: the held-out rows and their exact neighbours, the
    tuning trajectory [(search_k, smallest recall over the analysed k), ...], the tuning rows'
    count (0 for a fixed search_k), the aim (``None`` for a fixed search_k) and the seconds."""

    search_k: int
    held: np.ndarray
    exact_held: np.ndarray
    trajectory: list[tuple[int, float]]
    tuning_sample: int
    aim: float | None
    seconds: float


def _choose_search_k(index, points: Points, k: int, ks: list[int], search_k: int | str,
                     n_trees: int, recall_target: float, recall_sample: int, seed: int,
                     max_sk: int) -> _Tuning:
    """The exact neighbours of the recall samples and the search_k: fixed (``-1``: Annoy's
    default n_trees · (k + 1)), or under ``"auto"`` doubled from that default until the tuning
    rows reach the aim (:func:`tuning_aim`) or ``max_sk``."""
    t0 = time.perf_counter()
    tune_rows, held = recall_rows(points.n, recall_sample, seed)
    tuned = search_k == "auto"
    sample = np.concatenate([tune_rows, held]) if tuned else held
    exact_sample, _, _ = exact_neighbours(points, k, queries=sample, progress=False)
    exact_held = exact_sample[-held.size:]
    default_sk = n_trees * (k + 1)
    trajectory: list[tuple[int, float]] = []
    aim = None
    if tuned:
        exact_tune = exact_sample[:tune_rows.size]
        aim = tuning_aim(recall_target, held.size, min(ks))
        sk = min(default_sk, max_sk)
        while True:
            approx, _, _ = _query(index, points, tune_rows, k, sk)
            trajectory.append((sk, min(recall_by_k(approx, exact_tune, ks).values())))
            if trajectory[-1][1] >= aim or sk >= max_sk:
                break
            sk = min(2 * sk, max_sk)
    else:
        sk = default_sk if search_k == -1 else int(search_k)
    return _Tuning(search_k=sk, held=held, exact_held=exact_held, trajectory=trajectory,
                   tuning_sample=int(tune_rows.size) if tuned else 0, aim=aim,
                   seconds=time.perf_counter() - t0)


def tuning_aim(target: float, m: int, k_min: int) -> float:
    """The recall the tuning rows must reach under ``search_k="auto"``: the target plus three
    standard errors of the held-out estimate (m rows × k_min slots), at most halfway to 1."""
    sigma = (target * (1 - target) / max(1, m * k_min)) ** 0.5
    return min(target + 3 * sigma, (1 + target) / 2)


def _set_recall(info: dict, at_k: dict[int, float], k: int) -> None:
    """The recall entries of ``info`` from the held-out recall at each analysed k."""
    info["recall"] = at_k[k]
    info["recall_at_k"] = {str(kk): r for kk, r in at_k.items()}
    info["recall_target_met"] = bool(min(at_k.values()) >= info["recall_target"])
