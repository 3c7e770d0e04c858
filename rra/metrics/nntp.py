"""NNTP, neighbour topological persistence (methods.md §3) [source].

Hooks form a chain v_0 … v_{L−1} (forward order). An undirected pair {i, j} is present at hook v
if j ∈ K_v[i] or i ∈ K_v[j]. Along the chain each pair has one presence bit per hook. A maximal
run of consecutive presence from v_f to v_l counts once in T[f, l] (f ≤ l); a pair that
reappears later contributes another run.

α-persistence [source; the bridging rule below is our reading]: inside a pair's presence
sequence, gaps of at most α consecutive absent hooks between two present hooks are bridged
before counting, and a bridged run is counted from its first to its last present hook. Leading
and trailing absences are not gaps. α = 0 is plain persistence.

Memory is O(total edges), never n × n: an undirected pair i < j is encoded as the int64 code
i·n + j; the (code, hook) records of all hooks are packed into one int64 key per record,
sorted once and made unique, and runs are found with vectorised differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from rra.metrics.nnts import prepare_graphs


@dataclass(frozen=True)
class NNTPResult:
    """Persistence table of one hook chain.

    table: L × L int64, upper-triangular; T[f, l] = number of maximal (α-bridged) runs of
        presence of an undirected pair that start at hook f and end at hook l.
    edge_totals: (L,) int64, number of undirected pairs present at each hook.
    persistent_all: number of pairs whose (α-bridged) run spans the first to the last hook,
        = T[0, L−1]. For α = 0 these are the pairs present at every hook; for α > 0 they are
        the pairs present at the first and last hook with no more than α consecutive absent
        hooks in between.
    n, k, alpha: probe rows, neighbours per row, gap tolerance.
    row_table, row_edges: with ``rows=True``, each row's share of T (n × L·L, T[f, l] at column
        f·L + l) and of the edge totals (n × L): every run and edge counts ½ for each of its two
        rows, so the columns sum to T and edge_totals [ours: what the bootstrap resamples].
    """

    table: np.ndarray
    edge_totals: np.ndarray
    persistent_all: int
    n: int
    k: int
    alpha: int
    row_table: np.ndarray | None = None
    row_edges: np.ndarray | None = None


def undirected_edge_codes(idx: np.ndarray, unique: bool = True) -> np.ndarray:
    """Codes i·n + j (i < j) of the undirected pairs of a kNN graph, sorted and unique [source].

    {i, j} is an edge if j ∈ K[i] or i ∈ K[j]. ``idx`` must be a validated graph (no self).
    ``unique=False`` returns one code per directed edge, unsorted (a mutual pair twice).
    Sorting is used instead of ``np.unique``, whose hash-based path in numpy 2.x is two orders
    of magnitude slower on many distinct int64 values.
    """
    n, k = idx.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = idx.ravel().astype(np.int64)
    codes = np.minimum(rows, cols) * n + np.maximum(rows, cols)
    if not unique:
        return codes
    codes.sort()
    return codes[_first_of_equal(codes)]


def _first_of_equal(sorted_values: np.ndarray) -> np.ndarray:
    """Mask of the first element of each group of equal values in a sorted 1-D array."""
    first = np.empty(sorted_values.size, dtype=bool)
    first[:1] = True
    first[1:] = sorted_values[1:] != sorted_values[:-1]
    return first


def nntp(graphs: Sequence[np.ndarray], k: int | None = None, alpha: int = 0,
         rows: bool = False) -> NNTPResult:
    """NNTP table of a chain of kNN graphs (one per hook, in forward order) [source].

    T[f, l] counts the maximal runs of presence, after bridging gaps of at most ``alpha``
    absent hooks, that start at hook f and end at hook l (see the module docstring).
    ``k=None`` uses the smallest k_max among the graphs. Time O(E log E), memory O(E) for
    E = total undirected edges over all hooks (at most L·n·k). ``rows=True`` adds each row's
    share of the table and of the edge totals (:class:`NNTPResult`).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, np.integer)) or alpha < 0:
        raise ValueError(f"alpha must be a non-negative integer, got {alpha!r}")
    alpha = int(alpha)
    graphs = list(graphs)
    prepared = prepare_graphs(graphs, k, names=[f"hook {v}" for v in range(len(graphs))])
    n_hooks = len(prepared)
    n, k_used = prepared[0].shape

    # One int64 key per (pair, hook): code << bits | hook; codes are < n², hooks < 2**bits.
    bits = max(1, (n_hooks - 1).bit_length())
    if n * n >= 2 ** (63 - bits):
        raise ValueError(f"nntp: n = {n} rows and {n_hooks} hooks overflow the int64 pair keys")
    parts = [(undirected_edge_codes(g, unique=False) << bits) | v
             for v, g in enumerate(tqdm(prepared, desc="nntp edges", disable=None, leave=False))]
    keys = np.concatenate(parts)
    del parts
    keys.sort()
    keys = keys[_first_of_equal(keys)]  # a mutual pair appears twice per hook: keep one

    code = keys >> bits
    hook = keys & ((1 << bits) - 1)
    del keys
    edge_totals = np.bincount(hook, minlength=n_hooks).astype(np.int64)
    # A run starts where the pair changes or where more than alpha hooks are absent.
    starts = _first_of_equal(code)
    starts[1:] |= hook[1:] - hook[:-1] > alpha + 1
    first = np.flatnonzero(starts)
    last = np.append(first[1:] - 1, starts.size - 1)
    cell = hook[first] * n_hooks + hook[last]
    table = np.bincount(cell, minlength=n_hooks * n_hooks)
    table = table.reshape(n_hooks, n_hooks).astype(np.int64)
    shares = (_row_shares(code[first], cell, n, n_hooks * n_hooks),
              _row_shares(code, hook, n, n_hooks)) if rows else (None, None)
    return NNTPResult(table=table, edge_totals=edge_totals,
                      persistent_all=int(table[0, n_hooks - 1]),
                      n=int(n), k=int(k_used), alpha=alpha,
                      row_table=shares[0], row_edges=shares[1])


def _row_shares(codes: np.ndarray, column: np.ndarray, n: int, width: int) -> np.ndarray:
    """n × width: ½ per (pair i·n + j, column) record to row i and ½ to row j."""
    i, j = np.divmod(codes, n)
    i *= width
    i += column
    j *= width
    j += column
    counts = np.bincount(i, minlength=n * width) + np.bincount(j, minlength=n * width)
    return 0.5 * counts.reshape(n, width)
