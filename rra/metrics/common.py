"""Shared helpers of the metrics: the check of their labels and the row blocks they compute in.
The checks and set operations on neighbour-index arrays (graphs) live in :mod:`rra.knn.sets`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


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


def row_blocks(n: int, block_rows: int) -> Iterator[slice]:
    """Consecutive row slices [start, start + block_rows) covering 0 … n − 1."""
    for start in range(0, n, block_rows):
        yield slice(start, min(start + block_rows, n))
