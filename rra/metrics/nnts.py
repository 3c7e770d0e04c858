"""NNTS, neighbour topological similarity (methods.md §3) [source].

For two kNN graphs a and b over the same probe rows, with K_a[i], K_b[i] the k neighbours of
row i and m_i = |K_a[i] ∩ K_b[i]|:

    J_i = |K_a[i] ∩ K_b[i]| / |K_a[i] ∪ K_b[i]| = m_i / (2k − m_i)        (Jaccard per row)
    NNTS(a, b) = mean_i J_i

Over all hook pairs this gives a symmetric matrix with ones on the diagonal. NNTS grows with k
and tends to 1 as k → n − 1 (at k = n − 1 both sets are "all other rows"), so compare values
only at equal k.

Every function works on neighbour-index arrays (n × k_max, rows sorted by distance, self
excluded); the graph at k is the first k columns; ``k=None`` uses all columns (for several
graphs: the smallest k_max among them, as ``rra.knn.sets.check_pair`` does). No n × n matrix is
built: one pair costs O(n·k log k) time and O(n·k) memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from rra.knn.sets import check_pair, graph_blocks, overlap_counts
from rra.metrics.common import check_labels


def jaccard_from_overlap(m: np.ndarray, k: int) -> np.ndarray:
    """J_i = m_i / (2k − m_i) from overlap counts m_i of two k-sets [source]."""
    m = np.asarray(m, dtype=np.float64)
    return m / (2.0 * k - m)


def jaccard_per_row(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None) -> np.ndarray:
    """Per-row Jaccard of two kNN graphs: J_i = m_i / (2k − m_i), float64 (n,) [source].

    ``k=None`` uses the smaller k_max of the two graphs. Raises ValueError for graphs with
    different row counts or ``k`` larger than a graph's k_max.
    """
    a, b = check_pair(idx_a, idx_b, k)
    return jaccard_from_overlap(overlap_counts(a, b), a.shape[1])


def nnts(idx_a: np.ndarray, idx_b: np.ndarray, k: int | None = None) -> float:
    """NNTS(a, b) = mean_i m_i / (2k − m_i) [source]."""
    return float(jaccard_per_row(idx_a, idx_b, k).mean())


def nnts_by_class(idx_a: np.ndarray, idx_b: np.ndarray, labels: np.ndarray,
                  k: int | None = None) -> dict[int, float]:
    """Class-conditioned NNTS: for each class c present, mean of J_i over rows i with y_i = c.

    [source: the class-conditioned means of methods.md §3]. Keys are the sorted labels present.
    """
    j = jaccard_per_row(idx_a, idx_b, k)
    labels = check_labels(labels, j.shape[0])
    classes, inverse = np.unique(labels, return_inverse=True)
    means = np.bincount(inverse, weights=j) / np.bincount(inverse)
    return {int(c): float(v) for c, v in zip(classes, means)}


def prepare_graphs(graphs: Sequence[np.ndarray], k: int | None = None,
                   names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Validate graphs over the same rows and cut them all to one k.

    ``k=None`` takes the smallest k_max among the graphs. Returns int32 arrays (n < 2³¹), which
    halves the memory of the per-pair sorts and makes them faster.
    """
    (_, blocks), = graph_blocks(graphs, k, names, max_elements=np.iinfo(np.int64).max)  # one block
    return blocks


def jaccard_rows_all_pairs(graphs: Sequence[np.ndarray], k: int | None = None,
                           names: Sequence[str] | None = None, max_elements: int = 2**25,
                           ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(a, b, J)`` for every pair a < b of graphs, J the per-row Jaccard (n,) [source].

    Rows are processed in blocks (:func:`rra.knn.sets.graph_blocks`), so the graphs may be
    memory-mapped and memory stays bounded by ``max_elements`` indices plus the L(L−1)/2 × n
    float64 results, at any n and k (the published E1 uses n = 60,000, k = 12,000). Each pair
    costs one row-wise sort of the block's n × 2k concatenation (``rra.knn.sets.overlap_counts``);
    merging pre-sorted rows was measured and is not faster with numpy's vectorised sort.
    """
    graphs = list(graphs)
    pairs = [(a, b) for a in range(len(graphs)) for b in range(a + 1, len(graphs))]
    out = {pair: np.empty(graphs[0].shape[0] if graphs else 0) for pair in pairs}
    for rows, blocks in graph_blocks(graphs, k, names, max_elements):
        k_used = blocks[0].shape[1]
        for a, b in pairs:
            out[a, b][rows] = jaccard_from_overlap(overlap_counts(blocks[a], blocks[b]), k_used)
    for a, b in pairs:
        yield a, b, out[a, b]


def nnts_matrix(graphs: Sequence[np.ndarray], k: int | None = None) -> np.ndarray:
    """All-pairs NNTS: M[a, b] = mean_i m_i / (2k − m_i), float64 L × L [source].

    Symmetric with ones on the diagonal. ``k=None`` uses the smallest k_max among the graphs.
    O(L² n k log k) time; memory bounded by row blocks (see :func:`jaccard_rows_all_pairs`).
    """
    graphs = list(graphs)
    out = np.eye(len(graphs), dtype=np.float64)
    for a, b, j in jaccard_rows_all_pairs(graphs, k):
        out[a, b] = out[b, a] = j.mean()
    return out
