"""Input checks and exact float64 distances shared by the kNN backends.

The points a graph is built on are the rows ``z_i`` of the embedding ``x``: ``z_i = x_i`` for
``euclidean`` and ``z_i = x_i / ‖x_i‖₂`` for ``cosine`` (so the cosine distance is the Euclidean
distance between L2-normalised rows, ``‖z_i − z_j‖ = sqrt(2 − 2 cos(x_i, x_j))``, Annoy's
``angular``; same order as ``1 − cos``). [source: Euclidean; ours: cosine as peers do]

Every reported distance is computed here, directly as ``sqrt(Σ_t (z_jt − z_it)²)`` in float64
from the stored values, whatever backend selected the pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DISTANCES = ("euclidean", "cosine")

# Working-set size of chunked passes over the rows (float64 copies of a chunk).
CHUNK_BYTES = 32 << 20


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    return distance


def check_k(k: Any, n: int) -> int:
    """``k`` as an int with ``1 ≤ k < n`` (self is excluded, so at most n − 1 neighbours)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k >= n:
        raise ValueError(f"k = {k} must be smaller than the number of rows n = {n} "
                         "(self is excluded, so a row has at most n − 1 neighbours)")
    return k


def as_matrix(x: Any, name: str = "x") -> np.ndarray:
    """``x`` as a 2-D real numeric numpy array without copying (memory maps stay mapped)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n rows × d features), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got shape {x.shape}")
    return x


def chunk_rows(d: int, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that a float64 chunk of ``rows × d`` stays within ``budget``."""
    return max(1, budget // (8 * max(1, d)))


@dataclass(frozen=True)
class Points:
    """The rows ``z_i`` a graph is built on, read lazily from ``x`` (which may be memory-mapped).

    ``norms`` holds ``‖x_i‖₂`` (float64) under ``cosine`` and is ``None`` otherwise; ``mean`` is
    the float64 mean of the ``z_i`` (used to centre the rows before the blocked products).
    """

    x: np.ndarray
    distance: str
    norms: np.ndarray | None
    mean: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    def sqdist(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact squared distances ``‖z_cols[r, c] − z_rows[r]‖²`` (float64), shape of ``cols``.

        ``rows`` has shape (m,), ``cols`` (m, c). Direct differences summed in order in float64
        (``rra.knn.kernels.sqdist_pairs``), never the expansion ‖a‖² + ‖b‖² − 2ab, so there is
        no cancellation; the same pair always gets the same value, whatever asked for it.
        """
        from rra.knn.kernels import sqdist_pairs

        rows = np.ascontiguousarray(rows, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        out = np.empty(cols.shape, dtype=np.float64)
        if out.size:
            sqdist_pairs(np.asarray(self.x), self.kernel_norms, rows, cols, out)
        return out

    @property
    def kernel_norms(self) -> np.ndarray:
        """``norms`` as the compiled kernels take them: empty under euclidean."""
        return self.norms if self.norms is not None else np.empty(0, dtype=np.float64)

    def sqdist_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact squared distances for pairs ``(rows[p], cols[p])``, shape (P,)."""
        return self.sqdist(rows, np.asarray(cols)[:, None])[:, 0]


def prepare_points(x: Any, distance: str, name: str = "x") -> Points:
    """Validate an embedding and scan it once (chunked, memory-map friendly).

    Raises ``ValueError`` for a non-2-D or non-numeric array, the first row holding NaN or inf,
    and (under ``cosine``) rows of zero norm, whose direction is undefined.
    """
    distance = check_distance(distance)
    x = as_matrix(x, name)
    if x.dtype not in (np.float32, np.float64):  # exact widening for the compiled kernels
        x = x.astype(np.float32 if x.dtype == np.float16 else np.float64)
    if x.flags.writeable:  # one array type for the compiled kernels (memory maps are read-only)
        x = x.view()
        x.flags.writeable = False
    n, d = x.shape
    step = chunk_rows(d)
    total = np.zeros(d, dtype=np.float64)
    norms = np.empty(n, dtype=np.float64) if distance == "cosine" else None
    zero_rows: list[np.ndarray] = []
    for s in range(0, n, step):
        z = np.asarray(x[s:s + step], dtype=np.float64)
        finite = np.isfinite(z).all(axis=1)
        if not finite.all():
            bad = s + int(np.argmin(finite))
            raise ValueError(f"{name} row {bad} contains NaN or inf; embeddings must be finite")
        if norms is not None:
            nr = np.linalg.norm(z, axis=1)
            norms[s:s + step] = nr
            zero = nr == 0
            if zero.any():
                zero_rows.append(s + np.flatnonzero(zero))
                nr = np.where(zero, 1.0, nr)
            z = z / nr[:, None]
        total += z.sum(axis=0)
    if zero_rows:
        bad = np.concatenate(zero_rows)
        shown = ", ".join(str(int(i)) for i in bad[:10])
        more = f" (and {bad.size - 10} more)" if bad.size > 10 else ""
        raise ValueError(f"{name}: {bad.size} row(s) have zero norm, so their cosine distance is "
                         f"undefined: rows {shown}{more}")
    return Points(x=x, distance=distance, norms=norms, mean=total / n)


def sort_neighbours(cols: np.ndarray, sqd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``k`` of ``cols`` ordered by (squared distance, index)."""
    order = np.lexsort((cols, sqd), axis=-1)[:, :k]
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(sqd, order, axis=1)


def finish(idx: np.ndarray, sqd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stored form of a graph: int32 indices and float32 distances ``sqrt(squared)``."""
    return (np.ascontiguousarray(idx, dtype=np.int32),
            np.ascontiguousarray(np.sqrt(sqd), dtype=np.float32))
