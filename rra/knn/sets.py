"""Checks and set operations on neighbour-index arrays (kNN graphs), shared by the kNN backends
and the metrics.

A graph is an ``n × k`` integer array: row ``i`` holds the indices of the ``k`` nearest other
rows of row ``i`` sorted by (distance, index), self excluded, no repeated index in a row.
The graph at a smaller ``k`` is the prefix of the graph at a larger one.
"""

from __future__ import annotations

import numpy as np


def check_graph(idx: np.ndarray, name: str = "graph", *, n: int | None = None,
                row_offset: int = 0, dtype: type = np.int64) -> np.ndarray:
    """Validate one neighbour-index array and return it as a C-contiguous ``dtype`` array.

    Checks: 2-D, 1 ≤ k < n, integer, indices in [0, n), no row lists itself, no row lists a
    neighbour twice (every set operation here relies on the last two). A block of rows of a
    larger graph is checked with ``n`` = the graph's row count and ``row_offset`` = the block's
    first row (see :func:`graph_blocks`).
    """
    idx = np.asarray(idx)
    if idx.ndim != 2:
        raise ValueError(f"{name}: neighbour indices must be 2-D (n × k), got shape {idx.shape}")
    rows, k = idx.shape
    n = rows if n is None else int(n)
    if k < 1:
        raise ValueError(f"{name}: k must be at least 1, got {k}")
    if k >= n:
        raise ValueError(f"{name}: k = {k} must be smaller than the number of rows n = {n}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name}: neighbour indices must be integers, got {idx.dtype}")
    idx = np.ascontiguousarray(idx, dtype=dtype)
    if rows == 0:
        return idx
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name}: neighbour index out of range [0, {n})")
    self_rows = np.flatnonzero((idx == np.arange(row_offset, row_offset + rows)[:, None]).any(axis=1))
    if self_rows.size:
        raise ValueError(f"{name}: row {row_offset + self_rows[0]} lists itself as a neighbour "
                         "(self must be excluded)")
    ordered = np.sort(idx, axis=1)
    dup_rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if dup_rows.size:
        raise ValueError(f"{name}: row {row_offset + dup_rows[0]} lists a neighbour more than once")
    return idx


def graph_blocks(graphs: list, k: int | None = None, names: list[str] | None = None,
                 max_elements: int = 2**25):
    """Yield ``(rows, blocks)``: consecutive row slices and, for each graph, its rows cut to ``k``
    as checked int32 (int64 for n ≥ 2³¹) arrays.

    Graphs may be memory-mapped: memory is bounded by ``max_elements`` indices per block over
    all graphs, whatever n and k are (large-n path: n = 60k, k = 12000). ``k=None`` takes the
    smallest k_max. Shapes are checked up front; values block by block.
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("graphs: need at least one graph")
    names = [f"graph {i}" for i in range(len(graphs))] if names is None else list(names)
    if len(names) != len(graphs):
        raise ValueError(f"names: got {len(names)} names for {len(graphs)} graphs")
    for g, name in zip(graphs, names):
        if np.ndim(g) != 2:
            raise ValueError(f"{name}: neighbour indices must be 2-D (n × k), got shape {np.shape(g)}")
    n = graphs[0].shape[0]
    for g, name in zip(graphs, names):
        if g.shape[0] != n:
            raise ValueError(f"{name} has {g.shape[0]} rows but {names[0]} has {n}: "
                             "graphs must be built on the same probe rows")
    k_max = min(g.shape[1] for g in graphs)
    if k is None:
        k = k_max
    for g, name in zip(graphs, names):
        cut(g, k, name)  # k: integer, ≥ 1, ≤ this graph's k_max
    k = int(k)
    if k >= n:
        raise ValueError(f"{names[0]}: k = {k} must be smaller than the number of rows n = {n}")
    dtype = np.int32 if n < 2**31 else np.int64
    step = max(1, max_elements // (len(graphs) * k))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        yield rows, [check_graph(g[rows, :k], name, n=n, row_offset=start, dtype=dtype)
                     for g, name in zip(graphs, names)]


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
