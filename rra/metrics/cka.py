"""Linear centred kernel alignment (CKA), a non-kNN peer measure (methods.md §3).

For representations X (n × p) and Y (n × q) of the same n rows, with linear kernels
K = XXᵀ and L = YYᵀ,

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)).

[source: Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"]

Biased (``debiased=False``): HSIC_0(K, L) = tr(K H L H) / (n − 1)², H = I − 11ᵀ/n. With column-
centred X_c = H X and Y_c = H Y this is ‖X_cᵀ Y_c‖_F² / (n − 1)², so
CKA = ‖X_cᵀY_c‖_F² / (‖X_cᵀX_c‖_F · ‖Y_cᵀY_c‖_F).

Debiased (``debiased=True``): the unbiased estimator of Song et al. 2012 (JMLR 13, eq. 5), as used
for debiased CKA by Nguyen et al. 2021 and by platonic-rep's ``unbiased_cka``,

    HSIC_1(K, L) = [ tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n − 1)(n − 2)) − 2/(n − 2) · 1ᵀK̃L̃1 ] / (n(n − 3)),

K̃ = K − diag(K), L̃ = L − diag(L); needs n ≥ 4. HSIC_1 of linear kernels does not change
when the same vector is added to every row of X (it is a U-statistic of differences), so we
evaluate it on centred data for numerical stability (tested against eq. 5 on uncentred data).
With a_i = ‖x_c,i‖², b_i = ‖y_c,i‖² and X_cᵀ1 = 0:
tr(K̃L̃) = ‖X_cᵀY_c‖_F² − a·b, 1ᵀK̃1 = −Σa, 1ᵀL̃1 = −Σb, 1ᵀK̃L̃1 = (K̃1)·(L̃1) = a·b
(the same identities as Kornblith et al.'s ``feature_space_linear_cka``). [source]

Every quantity therefore reduces to three traces tr(KL) = ‖X_cᵀY_c‖_F², tr(KK), tr(LL) plus row
norms. Two exact ways to compute the traces, chosen by cost [ours]:
- ``"feature"``: products X_cᵀY_c (p × q) accumulated over row blocks, cost ~ n(p² + q² + pq);
  the p side is cut into column blocks so that no accumulator exceeds ``max_elements``.
- ``"gram"``: tiles K_IJ = X_I X_Jᵀ, L_IJ = Y_I Y_Jᵀ over pairs of row blocks (J ≥ I, symmetric),
  cost ~ n²(p + q)/2, never an n × n matrix.
For one representation compared with many (metric tables), :func:`cka_gram` keeps the centred
Gram matrix K_c = HKH (n × n, for n ≤ ``GRAM_MAX_ROWS``) and :func:`cka_from_stats` evaluates
tr(KL) = ⟨K_c, L_c⟩_F in O(n²) per pair, both estimators from the same statistics.
All arithmetic is float64; inputs may be memory-mapped float32 ``.npy`` arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from rra.metrics.common import row_blocks

METHODS = ("auto", "feature", "gram")


def _check_input(x: np.ndarray, name: str) -> np.ndarray:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: representation must be 2-D (n × d), got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: representation has no features (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: representation must be real-valued, got {x.dtype}")
    return x


def _column_means(x: np.ndarray, name: str, block_rows: int) -> np.ndarray:
    """Column means in float64; constant columns get their exact value so they centre to 0.

    Raises ValueError for non-finite values and for a representation whose every column is
    constant (zero variance: CKA is undefined).
    """
    n, d = x.shape
    total = np.zeros(d)
    lo = np.full(d, np.inf)
    hi = np.full(d, -np.inf)
    for rows in row_blocks(n, block_rows):
        xb = np.asarray(x[rows], dtype=np.float64)
        if not np.isfinite(xb).all():
            raise ValueError(f"{name}: representation contains NaN or inf "
                             f"(rows {rows.start}–{rows.stop - 1})")
        total += xb.sum(axis=0)
        lo = np.minimum(lo, xb.min(axis=0))
        hi = np.maximum(hi, xb.max(axis=0))
    constant = lo == hi
    if constant.all():
        raise ValueError(f"{name}: representation is constant across rows (zero variance); "
                         "CKA is undefined")
    mean = total / n
    mean[constant] = lo[constant]
    return mean


def _centred(x: np.ndarray, rows: slice, mean: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
    return np.asarray(x[rows, cols], dtype=np.float64) - mean[cols]


def _row_sq_norms(x: np.ndarray, mean: np.ndarray, block_rows: int) -> np.ndarray:
    out = np.empty(x.shape[0])
    for rows in row_blocks(x.shape[0], block_rows):
        xb = _centred(x, rows, mean)
        out[rows] = np.einsum("ij,ij->i", xb, xb)
    return out


def _cross_trace_feature(x: np.ndarray, mx: np.ndarray, y: np.ndarray, my: np.ndarray,
                         block_rows: int, max_elements: int) -> float:
    """‖X_cᵀ Y_c‖_F² from p × q cross products, p cut into column blocks of bounded size."""
    n, p = x.shape
    q = y.shape[1]
    width = max(1, min(p, max_elements // q))
    total = 0.0
    for c0 in tqdm(range(0, p, width), desc="CKA feature blocks", disable=None, leave=False):
        cols = slice(c0, min(c0 + width, p))
        acc = np.zeros((cols.stop - cols.start, q))
        for rows in row_blocks(n, block_rows):
            acc += _centred(x, rows, mx, cols).T @ _centred(y, rows, my)
        total += float(np.einsum("ij,ij->", acc, acc))
    return total


def _traces_feature(x, mx, y, my, block_rows, max_elements) -> tuple[float, float, float]:
    kl = _cross_trace_feature(x, mx, y, my, block_rows, max_elements)
    kk = _cross_trace_feature(x, mx, x, mx, block_rows, max_elements)
    ll = _cross_trace_feature(y, my, y, my, block_rows, max_elements)
    return kl, kk, ll


def _traces_gram(x, mx, y, my, block_rows) -> tuple[float, float, float]:
    """tr(KL), tr(KK), tr(LL) from Gram tiles over pairs of row blocks (J ≥ I)."""
    n = x.shape[0]
    blocks = list(row_blocks(n, block_rows))
    kl = kk = ll = 0.0
    pairs = [(i, j) for i in range(len(blocks)) for j in range(i, len(blocks))]
    current = -1
    for i, j in tqdm(pairs, desc="CKA Gram tiles", disable=None, leave=False):
        if i != current:
            xi, yi = _centred(x, blocks[i], mx), _centred(y, blocks[i], my)
            current = i
        xj, yj = (xi, yi) if i == j else (_centred(x, blocks[j], mx), _centred(y, blocks[j], my))
        k_tile = xi @ xj.T
        l_tile = yi @ yj.T
        w = 1.0 if i == j else 2.0
        kl += w * float(np.einsum("ij,ij->", k_tile, l_tile))
        kk += w * float(np.einsum("ij,ij->", k_tile, k_tile))
        ll += w * float(np.einsum("ij,ij->", l_tile, l_tile))
    return kl, kk, ll


def _choose_method(n: int, p: int, q: int) -> str:
    feature_cost = n * (p * p + q * q + p * q)
    gram_cost = n * n * (p + q) / 2
    return "feature" if feature_cost <= gram_cost else "gram"


def _hsic_unbiased_scaled(tr_kl: float, a: np.ndarray, b: np.ndarray) -> float:
    """n(n − 3) · HSIC_1(K, L) for centred data (see module docstring)."""
    n = a.shape[0]
    ab = float(a @ b)
    return (tr_kl - ab) + float(a.sum()) * float(b.sum()) / ((n - 1) * (n - 2)) - 2.0 * ab / (n - 2)


def _cka_from_traces(kl: float, kk: float, ll: float,
                     sq_norms: tuple[np.ndarray, np.ndarray] | None = None,
                     names: tuple[str, str] = ("x", "y")) -> float:
    """CKA from tr(KL), tr(KK), tr(LL) of the centred kernels; debiased when the centred row
    norms (a, b) are given (see the module docstring)."""
    if sq_norms is None:
        return float(kl / np.sqrt(kk * ll))
    a, b = sq_norms
    n = a.shape[0]
    h_kl = _hsic_unbiased_scaled(kl, a, b)
    h_kk = _hsic_unbiased_scaled(kk, a, a)
    h_ll = _hsic_unbiased_scaled(ll, b, b)
    for h, name in ((h_kk, names[0]), (h_ll, names[1])):
        if not h > 0:
            raise ValueError(f"{name}: unbiased HSIC({name}, {name}) = {h / (n * (n - 3)):.3g} is "
                             "not positive; debiased CKA is undefined for this input")
    return float(h_kl / np.sqrt(h_kk * h_ll))


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False, *, method: str = "auto",
               block_rows: int = 4096, max_elements: int = 2**24) -> float:
    """Linear CKA between two representations of the same n rows (see the module docstring).

    Parameters
    ----------
    x, y : n × p and n × q real arrays (memory-mapped arrays are read in row blocks).
    debiased : use the unbiased HSIC estimator of Song et al. 2012 (needs n ≥ 4); the result
        can then be slightly negative for unrelated representations.
    method : ``"auto"`` (smaller estimated cost), ``"feature"`` or ``"gram"``; all give the
        same value up to rounding.
    block_rows : rows per block (also the Gram tile size); capped at ``max_elements / max(p, q)``.
    max_elements : bound (in float64 values) on one row block and on the feature-form
        accumulator, so peak memory stays at a few times ``8 · max_elements`` bytes.

    Cost: ~ min(n(p² + q² + pq), n²(p + q)/2) multiply-adds per call (e.g. ~10¹⁴ for
    n = 60k, p = q = 20k: hours on a few cores), memory independent of n.

    Raises ValueError for non-2-D input, different row counts, NaN/inf, a constant
    representation (named), n < 4 when debiased, or a non-positive debiased self-HSIC.
    """
    x = _check_input(x, "x")
    y = _check_input(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}: representations must "
                         "describe the same probe rows")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if block_rows < 1 or max_elements < 1:
        raise ValueError("block_rows and max_elements must be positive")
    n, p = x.shape
    q = y.shape[1]
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 rows, got n = {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 rows, got n = {n}")
    block_rows = max(1, min(block_rows, max_elements // max(p, q)))   # bound a block's memory
    mx = _column_means(x, "x", block_rows)
    my = _column_means(y, "y", block_rows)
    if method == "auto":
        method = _choose_method(n, p, q)
    if method == "feature":
        kl, kk, ll = _traces_feature(x, mx, y, my, block_rows, max_elements)
    else:
        kl, kk, ll = _traces_gram(x, mx, y, my, block_rows)
    if not debiased:
        return _cka_from_traces(kl, kk, ll)
    a = _row_sq_norms(x, mx, block_rows)
    b = _row_sq_norms(y, my, block_rows)
    return _cka_from_traces(kl, kk, ll, (a, b), ("x", "y"))


# --------------------------------------------------------------------------------------------
# one representation at a time: the centred Gram matrix, reused across pairs

GRAM_MAX_ROWS = 4096


@dataclass(frozen=True)
class GramStats:
    """What linear CKA needs from one representation X (n × p).  [ours, same formulas]

    gram: the centred Gram matrix K_c = X_c X_cᵀ = H K H (n × n, float64);
    self_trace: tr(K_c K_c) = ‖K_c‖_F² (= ‖X_cᵀX_c‖_F²);
    sq_norms: a_i = ‖x_c,i‖² = (K_c)_ii, for the debiased estimator;
    name: the representation's name, used in error messages.
    With these, tr(KL) = ⟨K_c, L_c⟩_F, and both estimators follow as in :func:`linear_cka`.
    """

    gram: np.ndarray
    self_trace: float
    sq_norms: np.ndarray
    name: str

    @property
    def n(self) -> int:
        return self.gram.shape[0]


def cka_gram(x: np.ndarray, name: str = "x", *, max_rows: int = GRAM_MAX_ROWS,
             block_rows: int = 4096, max_elements: int = 2**24) -> GramStats:
    """:class:`GramStats` of one representation, computed once so that CKA against many others
    costs O(n²) per pair (:func:`cka_from_stats`) instead of a Gram or feature product.  [ours]

    Cost ~ n² p / 2 multiply-adds; memory one n × n float64 matrix (8 n² bytes, 134 MB at
    n = 4096) plus row blocks of at most ``max_elements`` values. Raises ValueError for n above
    ``max_rows`` (use :func:`linear_cka`), n < 2, and the input errors of :func:`linear_cka`.
    """
    x = _check_input(x, name)
    n, p = x.shape
    if n < 2:
        raise ValueError(f"{name}: CKA needs at least 2 rows, got n = {n}")
    if n > max_rows:
        raise ValueError(f"{name}: cka_gram keeps an n × n matrix; n = {n} exceeds max_rows = "
                         f"{max_rows}; use linear_cka for this size")
    block_rows = max(1, min(block_rows, max_elements // p))
    mean = _column_means(x, name, block_rows)
    blocks = list(row_blocks(n, block_rows))
    gram = np.empty((n, n))
    for i, bi in enumerate(blocks):
        xi = _centred(x, bi, mean)
        for bj in blocks[i:]:
            tile = xi @ (xi if bj == bi else _centred(x, bj, mean)).T
            gram[bi, bj] = tile
            gram[bj, bi] = tile.T
    return GramStats(gram, float(np.einsum("ij,ij->", gram, gram)), np.diagonal(gram).copy(), name)


def cka_from_stats(sa: GramStats, sb: GramStats, debiased: bool = False) -> float:
    """Linear CKA from two :func:`cka_gram` results; equal to ``linear_cka(x, y, debiased)`` up to
    rounding.  [source: Kornblith et al. 2019; debiased: Song et al. 2012, see module docstring]

    Raises ValueError for different row counts, n < 4 when debiased, or a non-positive debiased
    self-HSIC (naming the representation).
    """
    if sa.n != sb.n:
        raise ValueError(f"{sa.name} has {sa.n} rows but {sb.name} has {sb.n}: representations "
                         "must describe the same probe rows")
    if debiased and sa.n < 4:
        raise ValueError(f"debiased CKA needs at least 4 rows, got n = {sa.n}")
    kl = float(np.einsum("ij,ij->", sa.gram, sb.gram))
    norms = (sa.sq_norms, sb.sq_norms) if debiased else None
    return _cka_from_traces(kl, sa.self_trace, sb.self_trace, norms, (sa.name, sb.name))


def cka_self_stats(x: np.ndarray, name: str = "x", *, block_rows: int = 4096,
                   max_elements: int = 2**24) -> tuple[float, np.ndarray]:
    """(tr(K_c²), the centred rows' squared norms) of one representation at any n, without an
    n × n matrix: what CKA's exact permutation null needs beside the value
    (:func:`rra.metrics.intervals.cka_chance`). Cost that of one self trace of
    :func:`linear_cka` (the cheaper of the feature and Gram forms).  [ours, same formulas]"""
    x = _check_input(x, name)
    n, p = x.shape
    if n < 2:
        raise ValueError(f"{name}: CKA needs at least 2 rows, got n = {n}")
    block_rows = max(1, min(block_rows, max_elements // p))
    mean = _column_means(x, name, block_rows)
    if _choose_method(n, p, p) == "feature":
        kk = _cross_trace_feature(x, mean, x, mean, block_rows, max_elements)
    else:
        # tr(KK) of the Gram tiles; the second representation (one column) is not used
        kk = _traces_gram(x, mean, x[:, :1], mean[:1], block_rows)[1]
    return kk, _row_sq_norms(x, mean, block_rows)
