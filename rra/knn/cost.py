"""Predicted seconds of the two kNN backends, behind ``backend: auto``. [ours, measured]

:func:`rra.knn.choose_backend` picks Annoy only where it is predicted faster than the exact
search AND its recall target is predicted reachable; otherwise exact (the certified ground
truth: when unsure, exact). The constants are in :class:`CostModel`; ``knn.cost`` in the config
(``cost=`` of :func:`rra.knn.knn`) overrides any of them, e.g. ``product_speed`` on a machine
with a faster matrix library.

Exact (``rra/knn/exact.py``, CPU, symmetric search: every product of the Gram matrix once)::

    exact_s = [ n² (d + 2) / 2 / product_speed          the float32 products
              + n² · (pair_seconds + k · pair_k_seconds)  group maxima / heaps, thresholds
              + n · p · (d + 2) · refine_seconds ]        float64 distances of ≈ p candidates a row
              · threads / torch threads                   (measured with 2 threads)

with p = k + ``candidate_margin(k)``. On a GPU the exact search is faster than this.

Annoy (``rra/knn/annoy_backend.py``, single-threaded build and query)::

    build   = n · d · add_seconds                          rows added as Python lists
            + n_trees · n · L · (node_seconds + d · split_seconds),  L = max(1, log2(n / (d + 2)))
    query   = n · row(search_k),  row(s) = query_row_seconds
                                         + g · (gather_seconds + leaf_seconds / (d + 2))
                                         + min(g, n) · d · distance_seconds,  g = max(s, d + 2)
    tuning  = r · n · (d + 2) / product_speed' (exact neighbours of the recall samples:
              r = 2m rows with ``search_k: auto``, tuning and held-out rows, else r = m held-out
              rows; m = min(recall_sample, ⌊n / 2⌋))
            + 2 · m · row(search_k) with ``search_k: auto`` (the doubling trajectory)
            + m · row(search_k) (the held-out rows, queried before the whole graph)

(a query gathers at least one leaf, up to d + 2 rows, and computes distances to at most n rows).

Recall rule (worst case: Gaussian rows, whose intrinsic dimension is d): the search_k that
reaches recall 0.95 is Annoy's default n_trees · (k + 1) up to d = ``free_d``, and above it
``2 ** ((d − free_d) / doubling_d) · sqrt(max(1, n / 10⁴))`` times that; a recall target t above
0.95 multiplies it by (1 − 0.95) / (1 − t) (t = 1: unreachable). Annoy's recall counts as
reachable when that search_k is at most ``max_search_k`` (``search_k: auto``) or the fixed
search_k, and below n: from search_k ≈ n on, each query visits about every row, a brute force
slower than the exact search.

Measurements (short scripts timing ``rra.knn.knn_exact`` and the Annoy backend's own index build
and query on seeded data, this project's 2-core AMD EPYC machine while other jobs shared it,
fastest of 2–3 runs, 2026-12-03; exact at n ≤ 20k ran up to 2× slower than the README's quieter
table, so its absolute times come from the README and issue #10, the k-dependence from ratios
measured in one session; ``benchmarks/bench_knn.py --auto-rows`` checks the choice at 60k):

- exact (README's table, k = 10: 60k × 64 3.48 s, 60k × 512 15.7 s, 60k × 4096 94.3 s, 20k × 4096
  11.7 s, 5k × 4096 0.80 s; issue #10: 60k × 4704 at k = 100 171 s; ours: 60k × 64 Gaussian
  4.5 s at k = 10, 9.6 s at k = 100; 10k × 64 at k = 10 / 100 / 300 / 1000 0.15 / 0.25 / 0.48 /
  1.41 s; 10k × 784 at k = 100 / 1000 1.7 / 16.2 s; 40k × 8 1.7 s, 100k × 8 16.5 s): a
  least-squares fit of the four terms, rounded → product_speed 80·10⁹ multiply-adds/s,
  pair_seconds 0.6 ns, pair_k_seconds 0.01 ns, refine_seconds 1.2 ns; predicted 4.1 / 14.8 /
  100 / 12.3 / 1.1 s, 154 s, 4.1 / 7.8 s, 0.13 / 0.30 / 0.70 / 2.1 s, 1.8 / 13.3 s, 1.2 / 7.7 s:
  within 0.7–1.5× of every measurement except 100k × 8 (0.46×: beyond 60k rows the per-pair
  work leaves the caches; exact is then slower than predicted, which errs towards exact).
- Annoy build (Gaussian rows, n_trees 10 and 50): add 41–82 ns per value; tree build 60k × 784
  × 50 trees 7.6 s, 30k × 4704 × 50 trees 10.2 s, 40k × 8 × 50 trees 2.1 s → split_seconds
  0.55 ns, node_seconds 100 ns, add_seconds 70 ns (predicted tree builds 10.0 / 10.8 / 2.5 s).
- Annoy query (10k Gaussian rows, 50 trees, per row): d = 64 0.04 ms at search_k 1, 0.43 ms at
  5,050; d = 784 0.25 / 1.36 ms; d = 4704 6.9 / 9.5 ms (one leaf holds up to d + 2 rows);
  d = 8 at 40k 1.05 ms at 5,050; d = 4 0.23 ms at 550 → query_row_seconds 40 µs,
  gather_seconds 60 ns, leaf_seconds 1.5 µs, distance_seconds 0.3 ns (predicted 0.05 / 0.56,
  0.27 / 1.54, 7.0 / 7.5, 1.1, 0.21 ms).
- Annoy recall (Gaussian rows, 50 trees, search_k needed for recall ≥ 0.95 over the default):
  d ≤ 8: 1 (recall 0.997–1.0 at n = 10k and 40k); d = 16: 2 (10k), 4 (40k); d = 32: 8, 16;
  d = 64 (10k): 11 at k = 10; d = 784 (10k): 32 (3.5 n); 50k × 512: recall 0.15 at the default
  → free_d 8, doubling_d 8. Clustered data can need less; the rule assumes the worst case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

# knn_annoy's defaults (rra/knn/annoy_backend.py; tests/test_knn_cost.py checks they agree)
ANNOY_DEFAULTS = {"n_trees": 50, "search_k": "auto", "recall_target": 0.95, "recall_sample": 500,
                  "max_search_k": None}
CALIBRATION_RECALL = 0.95  # the recall the rule's constants were measured at
CALIBRATION_N = 1e4        # the n at which the rule's growth was measured first


@dataclass(frozen=True)
class CostModel:
    """Constants of the cost model (module docstring: formulas and measurements). [ours,
    measured on this project's 2-core CPU machine]"""

    # exact search, CPU, at `threads` threads
    product_speed: float = 80e9      # multiply-adds per second of the symmetric float32 products
    pair_seconds: float = 0.6e-9     # per pair (i, j): candidate selection, thresholds ...
    pair_k_seconds: float = 0.01e-9  # ... plus this per pair and neighbour (k)
    refine_seconds: float = 1.2e-9   # per float64 multiply-add of a row's ≈ p candidates
    threads: float = 2.0            # threads of the measurements; exact scales as threads/used
    # Annoy, single-threaded
    add_seconds: float = 70e-9          # per value added to the index (n · d)
    node_seconds: float = 100e-9        # per tree · row · level of the build
    split_seconds: float = 0.55e-9      # per tree · row · level · dimension of the build
    query_row_seconds: float = 40e-6    # per query row
    gather_seconds: float = 60e-9       # per candidate gathered by a query (≥ d + 2) ...
    leaf_seconds: float = 1.5e-6        # ... plus this / (d + 2): a leaf holds ≤ d + 2 rows
    distance_seconds: float = 0.3e-9    # per distinct candidate · dimension
    # recall rule
    free_d: float = 8.0      # up to this d Annoy's default search_k reaches recall 0.95
    doubling_d: float = 8.0  # above, the search_k needed doubles per this many dimensions


def cost_model(cost: CostModel | dict | None = None) -> CostModel:
    """The default :class:`CostModel` with the given overrides (a dict of its field names)."""
    if cost is None:
        return CostModel()
    if isinstance(cost, CostModel):
        return cost
    known = [f.name for f in fields(CostModel)]
    unknown = sorted(set(cost) - set(known))
    if unknown:
        raise ValueError(f"unknown kNN cost constant(s) {unknown}; known: {known}")
    for name, value in cost.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"kNN cost constant {name} must be a positive number, got {value!r}")
    return replace(CostModel(), **{name: float(value) for name, value in cost.items()})


def exact_seconds(n: int, d: int, k: int, threads: int, cost: CostModel) -> float:
    """Predicted seconds of the exact search on the CPU."""
    from rra.knn.exact import candidate_margin

    p = k + candidate_margin(k)
    pairs = float(n) * float(n)
    seconds = (pairs * (d + 2) / 2 / cost.product_speed
               + pairs * (cost.pair_seconds + k * cost.pair_k_seconds)
               + float(n) * p * (d + 2) * cost.refine_seconds)
    return seconds * cost.threads / max(1, threads)


def annoy_search_k_needed(n: int, d: int, k: int, n_trees: int, recall_target: float,
                          cost: CostModel) -> float:
    """Predicted search_k at which Annoy reaches ``recall_target`` (recall rule, module
    docstring); ``inf`` for a target of 1."""
    if recall_target >= 1:
        return math.inf
    growth = 1.0
    if d > cost.free_d:  # the exponent is capped: 2⁶⁴ exceeds any n
        doublings = min(64.0, (d - cost.free_d) / cost.doubling_d)
        growth = 2.0 ** doublings * math.sqrt(max(1.0, n / CALIBRATION_N))
    growth *= max(1.0, (1 - CALIBRATION_RECALL) / (1 - recall_target))
    return n_trees * (k + 1) * growth


def annoy_seconds(n: int, d: int, search_k: int, tuned: bool, recall_sample: int,
                  n_trees: int, threads: int, cost: CostModel) -> dict[str, float]:
    """Predicted seconds of the Annoy backend at ``search_k``: build, tuning, query, total."""
    def row(s: float) -> float:
        gathered = max(s, d + 2)
        return (cost.query_row_seconds
                + gathered * (cost.gather_seconds + cost.leaf_seconds / (d + 2))
                + min(gathered, n) * d * cost.distance_seconds)

    levels = max(1.0, math.log2(n / (d + 2)))
    build = (float(n) * d * cost.add_seconds
             + n_trees * float(n) * levels * (cost.node_seconds + d * cost.split_seconds))
    m = min(recall_sample, n // 2)  # rows of each recall sample (annoy_backend.recall_rows)
    exact_rows = 2 * m if tuned else m
    tuning = (exact_rows * float(n) * (d + 2) / cost.product_speed * cost.threads / max(1, threads)
              + (2 * m * row(search_k) if tuned else 0.0) + m * row(search_k))
    query = n * row(search_k)
    return {"build": build, "tuning": tuning, "query": query, "total": build + tuning + query}


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e3:
        return f"{seconds:.3g} s"
    return f"{seconds:,.0f} s" if seconds < 1e4 else f"{seconds / 3600:.3g} h"
