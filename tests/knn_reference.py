"""Brute-force kNN references shared by the kNN test modules (exact search, sweep, low-rank
products): float64 graphs, their overlap counts, and the check that a sweep's graphs and
large-k overlaps are exactly those of brute force."""

from __future__ import annotations

import numpy as np

from rra.knn.sets import overlap_counts
from rra.knn.sweep import SweepResult, hook_pairs


def brute_force(x: np.ndarray, k: int, distance: str = "euclidean"):
    """Reference: full float64 distance matrix, each row lexsorted by (distance, index)."""
    z = np.asarray(x, dtype=np.float64)
    if distance == "cosine":
        z = z / np.linalg.norm(z, axis=1)[:, None]
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1)
    n = z.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        order = np.lexsort((np.arange(n), d2[i]))
        idx[i] = order[order != i][:k]
    return idx, np.sqrt(np.take_along_axis(d2, idx, axis=1))


def brute_overlaps(xs, k, distance="euclidean"):
    """Overlap counts (n × P) of the brute-force k-sets of every pair of ``xs``, in
    :func:`rra.knn.sweep.hook_pairs` order."""
    graphs = [brute_force(x, k, distance)[0] for x in xs]
    return np.stack([overlap_counts(graphs[a], graphs[b])
                     for a, b in hook_pairs(len(xs))], axis=1)


def assert_sweep_matches_brute_force(xs, res: SweepResult, k_graph: int, ks, *,
                                     atol: float = 1e-7) -> None:
    """The euclidean sweep ``res`` of ``xs``: every stored graph (k_graph columns) has brute
    force's indices and distances (rtol 1e-6, ``atol``), every large-k overlap its counts."""
    for x, (idx, dist) in zip(xs, res.graphs):
        ref_idx, ref_dist = brute_force(x, k_graph)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-6, atol=atol)
    for k in ks:
        np.testing.assert_array_equal(res.overlaps[k], brute_overlaps(xs, k), err_msg=f"k = {k}")
