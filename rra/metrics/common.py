"""Shared checks and set operations on neighbour-index arrays.

A graph is an ``n × k`` integer array: row ``i`` holds the indices of the ``k`` nearest other
rows of row ``i`` sorted by (distance, index), self excluded, no repeated index in a row.
The graph at a smaller ``k`` is the prefix of the graph at a larger one.
"""

from __future__ import annotations

import numpy as np


def check_graph(idx: np.ndarray, name: str = "graph") -> np.ndarray:
    """Validate one neighbour-index array and return it as a C-contiguous int64 array.

    Checks: 2-D, 1 ≤ k < n, integer, indices in [0, n), no row lists itself, no row lists a
    neighbour twice (every set operation here relies on the last two).
    """
    idx = np.asarray(idx)
    if idx.ndim != 2:
        raise ValueError(f"{name}: neighbour indices must be 2-D (n × k), got shape {idx.shape}")
    n, k = idx.shape
    if k < 1:
        raise ValueError(f"{name}: k must be at least 1, got {k}")
    if k >= n:
        raise ValueError(f"{name}: k = {k} must be smaller than the number of rows n = {n}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name}: neighbour indices must be integers, got {idx.dtype}")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name}: neighbour index out of range [0, {n})")
    self_rows = np.flatnonzero((idx == np.arange(n)[:, None]).any(axis=1))
    if self_rows.size:
        raise ValueError(f"{name}: row {self_rows[0]} lists itself as a neighbour "
                         "(self must be excluded)")
    ordered = np.sort(idx, axis=1)
    dup_rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if dup_rows.size:
        raise ValueError(f"{name}: row {dup_rows[0]} lists a neighbour more than once")
    return idx


def prefix(idx: np.ndarray, k: int | None, name: str = "graph") -> np.ndarray:
    """The graph at ``k`` neighbours (the first ``k`` columns); ``None`` keeps all columns."""
    return cut(check_graph(idx, name), k, name)


def cut(idx: np.ndarray, k: int | None, name: str = "graph") -> np.ndarray:
    """``prefix`` for a graph that ``check_graph`` has already validated (no second check)."""
    if k is None:
        return idx
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name}: k must be an integer or None, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name}: k must be at least 1, got {k}")
    if k > idx.shape[1]:
        raise ValueError(f"{name}: k = {k} exceeds the stored k_max = {idx.shape[1]}")
    return idx[:, :k]


def check_pair(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None,
               names: tuple[str, str] = ("graph a", "graph b")) -> tuple[np.ndarray, np.ndarray]:
    """Validate two graphs over the same rows and cut both to ``k`` (default: the smaller k)."""
    a = check_graph(idx_a, names[0])
    b = check_graph(idx_b, names[1])
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[0]} has {a.shape[0]} rows but {names[1]} has {b.shape[0]}: "
                         "graphs must be built on the same probe rows")
    if k is None:
        k = min(a.shape[1], b.shape[1])
    return cut(a, k, names[0]), cut(b, k, names[1])


def overlap_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """m_i = |K_a[i] ∩ K_b[i]| for every row, in O(n·k log k) time and O(n·k) memory.

    Rows hold no repeated index, so after sorting the concatenation of both rows an index
    present in both appears exactly twice, next to itself.
    """
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return (both[:, 1:] == both[:, :-1]).sum(axis=1).astype(np.int64)


def check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Validate a label vector for ``n`` probe rows; return it as int64 (n,)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels: expected a 1-D array of {n} labels (one per graph row), "
                         f"got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: must be integers, got {labels.dtype}")
    if n and labels.min() < 0:
        raise ValueError(f"labels: must be non-negative, got minimum {labels.min()}")
    return labels.astype(np.int64, copy=False)
