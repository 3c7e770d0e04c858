"""Uncertainty and chance levels of the metric tables (methods.md §4, "Uncertainty and chance
levels") [ours].

Every value of a computed table gets four columns (:data:`COLUMNS`):

- ``lo``, ``hi``: a percentile bootstrap interval (level ``level``, default 95 %) over probe rows.
  One resampling of the rows serves every value of a run: B resamples, **stratified by label**
  (each class keeps its n_c rows, drawn with replacement among its own rows, as the probe is
  drawn per class), held as a B × n matrix W of counts (W[b, i] = times row i is drawn in
  resample b). A value that is a mean of per-row quantities v_i is resampled as
  (W v / n)[b] (one matrix product per value, never a recomputed graph); class means as
  Σ_{i ∈ c} W[b, i] v_i / n_c. Values built from such means (purity, agreement, spread,
  NNTP's totals) are recomputed from the resampled means.
- ``null``: the value expected by chance under the **row-shuffle null**: the rows of the second
  representation are put in a uniformly random correspondence π with the first. For kNN graphs
  the second graph is *relabelled*, K_b'(i) = π⁻¹(K_b(π(i))) (:func:`relabel_graph`): the graph
  b with its vertices renamed, still a valid kNN graph without self-loops, whose neighbour set
  of row i is that of the row π(i). For one graph with labels (class response) the labels are
  shuffled instead. Exact where a closed form exists (:func:`jaccard_null`,
  :func:`overlap_null`, class composition, CKA's permutation mean), else Monte-Carlo.
- ``p``: one-sided p-value of "more similar than chance", 1 − Φ(z) with
  z = (value − null) / sd_null; sd_null is the standard deviation of the value under the null,
  from the per-row null variance with rows treated as independent (sd_row / √n_rows) or from
  the Monte-Carlo relabellings.

B = 0 switches it off (the four columns are null). Sanity checks (:func:`check_self`,
:func:`check_shuffled`, :func:`check_rows`) raise :class:`SanityError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

#: the columns this module fills in every computed table
COLUMNS = ("lo", "hi", "null", "p")
#: z beyond which the shuffled-row control fails: P(|Z| > 6) ≈ 2·10⁻⁹ for a normal null, so a
#: study with 10⁴ such checks raises a false alarm with probability < 10⁻⁴ [ours]
SHUFFLE_Z = 6.0
#: relabellings whose spread is the control's sd where the per-row sd calls it off [ours]
SHUFFLE_EXTRA = 20
#: label draws per class for the Monte-Carlo chance of the kNN vote [ours]
VOTE_DRAWS = 20_000
#: p below which a value is called distinguishable from chance in the figures
ALPHA = 0.05


class SanityError(ValueError):
    """A sanity check of the metric tables failed (a bug or mismatched inputs, never noise)."""


@dataclass(frozen=True)
class Settings:
    """``metrics.bootstrap``: B resamples (0: off), Monte-Carlo relabellings, seed, level."""

    B: int = 200
    permutations: int = 20
    seed: int = 0
    level: float = 0.95

    @classmethod
    def of(cls, value: Mapping[str, Any] | Settings | None) -> Settings:
        if isinstance(value, Settings):
            return value
        value = dict(value or {})
        unknown = sorted(set(value) - {"B", "permutations", "seed", "level"})
        if unknown:
            raise ValueError(f"metrics.bootstrap: unknown key(s) {unknown}; known: B, "
                             "permutations, seed, level")
        s = cls(**value)
        for name in ("B", "permutations", "seed"):
            v = getattr(s, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"metrics.bootstrap.{name} must be a non-negative integer, "
                                 f"got {v!r}")
        if not 0.0 < float(s.level) < 1.0:
            raise ValueError(f"metrics.bootstrap.level must lie in (0, 1), got {s.level!r}")
        if s.B and s.permutations < 2:
            raise ValueError("metrics.bootstrap.permutations must be at least 2 when B > 0 "
                             f"(a Monte-Carlo null needs a spread), got {s.permutations}")
        return s

    @property
    def enabled(self) -> bool:
        return self.B > 0


# ---------------------------------------------------------------------------------------------
# exact chance levels

def _hypergeom_pmf(population: int, successes: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, P(M = m)) of M ~ Hypergeometric(population, successes, draws), exact in float64."""
    from scipy.special import gammaln

    def log_binom(a, b):
        return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

    lo, hi = max(0, draws - (population - successes)), min(draws, successes)
    m = np.arange(lo, hi + 1, dtype=np.float64)
    logp = (log_binom(successes, m) + log_binom(population - successes, draws - m)
            - log_binom(population, draws))
    p = np.exp(logp)
    return m, p / p.sum()


def jaccard_null(n: int, k: int) -> tuple[float, float]:
    """(E[J], Var[J]) of one row's Jaccard J = m / (2k − m) under the row-shuffle null [ours].

    Under a uniformly random relabelling π of graph b, K_b'(i) is a uniformly random k-subset of
    the n − 1 rows other than i, independent of K_a(i), so m = |K_a(i) ∩ K_b'(i)| is
    hypergeometric: P(m) = C(k, m) C(n − 1 − k, k − m) / C(n − 1, k) (E[m] = k² / (n − 1)).
    Exact for every row and every pair of graphs; (1, 0) at k = n − 1.
    """
    _check_nk(n, k)
    m, p = _hypergeom_pmf(n - 1, k, k)
    j = m / (2.0 * k - m)
    mean = float(p @ j)
    return mean, float(max(p @ (j - mean) ** 2, 0.0))


def overlap_null(n: int, k: int) -> tuple[float, float]:
    """(E[m/k], Var[m/k]) under the row-shuffle null (mutual kNN): E = k / (n − 1),
    Var = (1/k)·(k/N)(1 − k/N)(N − k)/(N − 1), N = n − 1 [ours]."""
    _check_nk(n, k)
    big = n - 1
    var = 0.0 if big <= 1 else (k / big) * (1 - k / big) * (big - k) / (big - 1) / k
    return k / big, float(max(var, 0.0))


def _check_nk(n: int, k: int) -> None:
    if not 1 <= k <= n - 1:
        raise ValueError(f"need 1 ≤ k ≤ n − 1, got n = {n}, k = {k}")


def composition_null(sizes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Chance class composition under shuffled labels: (P0, V0), C × C, P0[c, c'] =
    (n_c' − δ_cc') / (n − 1) the expected share of class c' among the k neighbours of a row of
    class c, V0 the variance of one row's share (hypergeometric, k draws from n − 1) [ours]."""
    sizes = np.asarray(sizes, dtype=np.float64)
    big = sizes.sum() - 1
    succ = sizes[None, :] - np.eye(sizes.size)
    p0 = succ / big
    fpc = (big - k) / (big - 1) if big > 1 else 0.0
    return p0, np.maximum(p0 * (1 - p0) * fpc / k, 0.0)


def vote_null(sizes: np.ndarray, k: int, seed: int, draws: int = VOTE_DRAWS) -> np.ndarray:
    """Per class c, the chance that the majority label (ties to the smaller label) of k labels
    drawn without replacement from the other n − 1 rows' labels is c [ours; Monte-Carlo with
    ``draws`` multivariate hypergeometric draws per class, seeded]."""
    rng = np.random.default_rng([seed, 1])
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.empty(sizes.size)
    for c in range(sizes.size):
        colours = sizes.copy()
        colours[c] -= 1
        counts = rng.multivariate_hypergeometric(colours, k, size=draws)
        out[c] = float((counts.argmax(axis=1) == c).mean())
    return out


def cka_null(kk: float, ll: float, tr_k: float, tr_l: float, n: int) -> float:
    """E_π[CKA] (biased) under a uniformly random row permutation of one representation:
    tr(K) tr(L) / ((n − 1) √(tr(K²) tr(L²))) for column-centred K, L [ours: E_π[K_ij L_π(i)π(j)]
    is tr(L)/n on the diagonal and −tr(L)/(n(n − 1)) off it, as L's rows sum to 0]."""
    return float(tr_k * tr_l / ((n - 1) * np.sqrt(kk * ll)))


def cka_null_sd(kk: float, ll: float, tr_k: float, tr_l: float, d2_k: float, d2_l: float,
                n: int) -> float | None:
    """sd_π[CKA] (biased) under a uniformly random row permutation of one representation, exact.

    Biased linear CKA of column-centred data is the RV coefficient, whose permutation mean and
    variance have closed forms [source: Kazi-Aoual, Hitier, Sabatier & Lebreton 1995, Biometrika
    82; as written in Josse, Pagès & Husson 2008, CSDA 53]. With β_K = tr(K)² / tr(K²) and
    t_K = (n − 1)/(n − 3) · (n(n + 1) Σ_i K_ii² / tr(K²) − (n − 1)(β_K + 2)) (= (n − 1 − β_K) τ_K
    of the source, written so that β_K = n − 1 does not divide by zero):

        Var_π = 2 / ((n + 1)(n − 1)²(n − 2)) ·
                [(n − 1 − β_K)(n − 1 − β_L) + (n − 3) / (2n(n − 1)) · t_K t_L].

    ``kk``, ``ll``: tr(K²), tr(L²); ``tr_*``: tr(K), tr(L); ``d2_*``: Σ_i K_ii², Σ_i L_ii². Checked
    against all n! permutations in the tests. None for n < 4 (the formula needs n > 3)."""
    if n < 4 or not (kk > 0 and ll > 0):
        return None
    b_k, b_l = tr_k * tr_k / kk, tr_l * tr_l / ll
    t_k = (n - 1) / (n - 3) * (n * (n + 1) * d2_k / kk - (n - 1) * (b_k + 2))
    t_l = (n - 1) / (n - 3) * (n * (n + 1) * d2_l / ll - (n - 1) * (b_l + 2))
    var = 2.0 / ((n + 1) * (n - 1) ** 2 * (n - 2)) * (
        (n - 1 - b_k) * (n - 1 - b_l) + (n - 3) / (2.0 * n * (n - 1)) * t_k * t_l)
    return float(np.sqrt(max(var, 0.0)))


def cka_debiased_null_sd(n: int) -> float | None:
    """sd_π[debiased CKA] under a uniformly random row permutation: √(2 / (n(n − 3))), for any
    data, exact [ours].

    Derivation: the unbiased HSIC of Song et al. is the U-centred inner product
    (Ǩ · Ľ) = Σ_{i≠j} Ǩ_ij Ľ_ij / (n(n − 3)) (Székely & Rizzo 2014), Ǩ symmetric with zero
    diagonal and zero row sums, and U-centring commutes with permuting rows. For such matrices
    the quadratic-assignment moments (Mantel; Hubert 1987) give, with A₂ = Σ_{i≠j} Ǩ_ij², the
    one-shared-index sum A₃ = −A₂ and the disjoint-pairs sum A₄ = 2A₂:
    E_π Σ Ǩ_ij Ľ_π(i)π(j) = 0 and Var_π = A₂B₂ [2/(n)₂ + 4/(n)₃ + 4/(n)₄] = 2A₂B₂ / (n(n − 3)),
    (n)_r the falling factorial; dividing by √(A₂B₂), the (permutation-invariant) self terms,
    gives the variance 2/(n(n − 3)). Checked against all n! permutations in the tests."""
    if n < 4:
        return None
    return float(np.sqrt(2.0 / (n * (n - 3))))


# ---------------------------------------------------------------------------------------------
# p-values and intervals

def p_value(value: float, null: float | None, sd: float | None) -> float | None:
    """One-sided p of value > null: 1 − Φ((value − null) / sd); with sd = 0, 0 if the value
    exceeds the null (beyond 1e-12) else 1; None without a null."""
    from scipy.special import ndtr

    if null is None or sd is None or not np.isfinite(value) or not np.isfinite(null):
        return None
    if not sd > 0:
        return 0.0 if value > null + 1e-12 * max(1.0, abs(null)) else 1.0
    return float(ndtr(-(value - null) / sd))


def relabel_graph(idx: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The graph b relabelled by the row correspondence π (``perm``):
    K_b'(i) = π⁻¹(K_b(π(i))); a valid kNN graph (no self-loops, same order) [ours]."""
    perm = np.asarray(perm)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inverse[np.asarray(idx)[perm]]


class RowBootstrap:
    """B stratified resamples of the rows of a labelled probe, shared by a run's tables.

    ``indices()`` (B × n): resample b replaces each row of class c by a uniformly drawn row of
    class c; ``W`` (B × n float64) counts each row's draws. Seeded: equal (labels, B, seed)
    give equal resamples.
    """

    def __init__(self, labels: np.ndarray, B: int, seed: int, level: float = 0.95):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.B, self.seed, self.level = int(B), int(seed), float(level)
        self.classes, pos = np.unique(self.labels, return_inverse=True)
        self.order = np.argsort(pos, kind="stable")
        self.sizes = np.bincount(pos, minlength=self.classes.size)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.n = self.labels.size

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0])
        out = np.empty((self.B, self.n), dtype=np.int64)
        for s, size in zip(self.starts, self.sizes):
            rows = self.order[s:s + size]
            out[:, rows] = rows[rng.integers(0, size, size=(self.B, size))]
        return out

    @cached_property
    def W_sorted(self) -> np.ndarray:
        """W with columns in class order (class c = columns starts[c] … + sizes[c])."""
        idx = self.indices()
        flat = (np.arange(self.B, dtype=np.int64)[:, None] * self.n + idx).ravel()
        W = np.bincount(flat, minlength=self.B * self.n).reshape(self.B, self.n)
        return np.ascontiguousarray(W[:, self.order], dtype=np.float64)

    def class_means(self, v: np.ndarray) -> np.ndarray:
        """B × C resampled class means of per-row values v (n,), or B × C × m of the columns of
        v (n × m); one matrix product per class."""
        v = np.asarray(v, dtype=np.float64)[self.order]
        out = np.stack([self.W_sorted[:, s:s + size] @ v[s:s + size]
                        for s, size in zip(self.starts, self.sizes)], axis=1)
        return out / self.sizes.reshape((1, -1) + (1,) * (v.ndim - 1))

    def mean(self, v: np.ndarray) -> np.ndarray:
        """(B,) resampled means of v over all rows (class sizes are kept, so the overall mean
        is the size-weighted mean of the class means)."""
        return self.W_sorted @ np.asarray(v, dtype=np.float64)[self.order] / self.n

    def interval(self, boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval over axis 0 (NaN resamples ignored)."""
        import warnings

        q = [(1 - self.level) / 2, (1 + self.level) / 2]
        boot = np.asarray(boot, dtype=np.float64)
        if not np.isnan(boot).any():
            lo, hi = np.quantile(boot, q, axis=0)
            return lo, hi
        with warnings.catch_warnings():  # an all-NaN column (a class without rows) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(boot, q, axis=0)
        return lo, hi


def stats(boot: RowBootstrap, samples: np.ndarray, value: float, null: float | None = None,
          sd: float | None = None) -> dict[str, Any]:
    """The four columns of one value from its B resampled values, chance level and null sd."""
    lo, hi = boot.interval(samples)
    return dict(lo=_num(lo), hi=_num(hi), null=_num(null), p=p_value(value, null, sd))


def stats_many(boot: RowBootstrap, samples: np.ndarray, values, nulls=None,
               sds=None) -> list[dict[str, Any]]:
    """:func:`stats` of m values at once from their B × m resampled values (one quantile call);
    ``nulls``, ``sds``: sequences of m (or None for no chance level)."""
    lo, hi = boot.interval(samples)
    m = len(values)
    nulls = [None] * m if nulls is None else nulls
    sds = [None] * m if sds is None else sds
    return [dict(lo=_num(lo[i]), hi=_num(hi[i]), null=_num(nulls[i]),
                 p=p_value(float(values[i]), nulls[i], sds[i])) for i in range(m)]


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def mc_null(samples: np.ndarray, rows: int) -> tuple[float, float]:
    """(null, sd) of a mean over ``rows`` rows from Monte-Carlo per-row null scores
    ``samples`` (R values from relabelled rows): null = their mean; sd combines the value's
    null spread σ/√rows and the estimate's own σ/√R [ours]."""
    samples = np.asarray(samples, dtype=np.float64)
    sigma = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    return float(samples.mean()), sigma * float(np.sqrt(1.0 / rows + 1.0 / samples.size))


def permutations(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` seeded uniformly random permutations of n rows (count × n)."""
    rng = np.random.default_rng([seed, 2])
    return np.stack([rng.permutation(n) for _ in range(count)]) if count else np.empty((0, n), int)


def row_splits(n: int, count: int, seed: int) -> list[np.ndarray]:
    """The rows split at random into ``count`` disjoint blocks (one per relabelling), so that
    a Monte-Carlo null costs one evaluation of the measure over n rows."""
    rng = np.random.default_rng([seed, 3])
    return [np.sort(part) for part in np.array_split(rng.permutation(n), max(1, min(count, n)))]


# ---------------------------------------------------------------------------------------------
# sanity checks

def check_self(graph: np.ndarray, k: int, where: str) -> None:
    """NNTS of a graph with itself must be 1 (every row's Jaccard)."""
    from rra.knn.sets import overlap_counts
    from rra.metrics.nnts import jaccard_from_overlap

    g = np.asarray(graph[:, :k])
    j = jaccard_from_overlap(overlap_counts(g, g), k)
    if not np.all(j == 1.0):
        bad = int(np.flatnonzero(j != 1.0)[0])
        raise SanityError(f"{where}: sanity check failed: NNTS of a graph with itself is "
                          f"{float(j.mean())!r}, not 1 (row {bad}: Jaccard {float(j[bad])!r}); "
                          "the graph or the NNTS code is broken")


def check_shuffled(a: np.ndarray, b: np.ndarray, k: int, perm: np.ndarray, where: str) -> float:
    """NNTS of graph a with graph b relabelled by ``perm`` must lie within SHUFFLE_Z standard
    deviations of the exact chance level. Returns its z. The sd is the per-row null sd / √n,
    which treats rows as independent; real graphs have hubs (rows in many neighbourhoods), so
    for one relabelling the rows' overlaps are correlated and the mean varies more, most at
    large k / n (the default study's k = 250 of n = 500: z = −6.4 by the per-row sd). Where
    that sd calls the control off, the check asks again with the spread of
    :data:`SHUFFLE_EXTRA` more relabellings (seeded) as the sd, if larger. [ours]"""
    from rra.metrics.nnts import nnts

    n = a.shape[0]
    mean, var = jaccard_null(n, k)
    value = nnts(a, relabel_graph(b, perm), k)
    sd = np.sqrt(var / n)
    z = _z(value, mean, sd)
    if not abs(z) <= SHUFFLE_Z:
        rng = np.random.default_rng(0)
        spread = np.std([nnts(a, relabel_graph(b, rng.permutation(n)), k)
                         for _ in range(SHUFFLE_EXTRA)], ddof=1)
        sd = max(sd, float(spread))
        z = _z(value, mean, sd)
    if not abs(z) <= SHUFFLE_Z:
        raise SanityError(f"{where}: sanity check failed: the shuffled-row control's NNTS "
                          f"{value:.6g} is not near its chance level {mean:.6g} (z = {z:.3g}, "
                          f"tolerance ±{SHUFFLE_Z} sd of the row-shuffle null, sd = {sd:.3g}); "
                          "the measure sees a row correspondence it should not")
    return float(z)


def _z(value: float, mean: float, sd: float) -> float:
    return (value - mean) / sd if sd > 0 else (0.0 if abs(value - mean) < 1e-12 else np.inf)


def check_rows(n: int, arrays: Mapping[str, Any], where: str) -> None:
    """Every named array (graph, embedding, labels) must describe the same n probe rows."""
    for name, x in arrays.items():
        rows = int(np.shape(x)[0]) if not isinstance(x, (int, np.integer)) else int(x)
        if rows != n:
            raise SanityError(f"{where}: sanity check failed: {name} has {rows} rows but the "
                              f"probe has {n}: the compared representations do not describe "
                              "the same probe rows")


# ---------------------------------------------------------------------------------------------
# chance levels of rows placed in a reference set (held-out placement, E11) [ours]
#
# A held-out row is not one of the n_R reference rows, so under the chance model its k
# neighbours are a uniformly random k-subset of *all* n_R reference rows (no self to exclude),
# whereas the row-shuffle null of the functions above draws from the n − 1 rows other than i.

def vote_null_reference(sizes: np.ndarray, k: int, seed: int,
                        draws: int = VOTE_DRAWS) -> np.ndarray:
    """Per class c, q_c = the chance that the majority label (ties to the smaller label) of k
    labels drawn without replacement from the n_R reference rows' labels (class sizes
    ``sizes``, every row, no self excluded) is c [ours; Monte-Carlo: ``draws`` multivariate
    hypergeometric draws, one set shared by every class since the draw does not depend on the
    held-out row's class; seeded ``default_rng([seed, 4])``]. A class without reference rows
    (size 0) has q_c = 0."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not 1 <= k <= int(sizes.sum()):
        raise ValueError(f"need 1 ≤ k ≤ n_R, got n_R = {int(sizes.sum())}, k = {k}")
    rng = np.random.default_rng([seed, 4])
    counts = rng.multivariate_hypergeometric(sizes, k, size=draws)
    return np.bincount(counts.argmax(axis=1), minlength=sizes.size)[:sizes.size] / float(draws)


def share_null_reference(sizes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class c, (E, Var) of the share of class c among k rows drawn without replacement
    from the n_R reference rows (hypergeometric): E = n_c / n_R,
    Var = E (1 − E) (n_R − k) / ((n_R − 1) k) [ours]."""
    sizes = np.asarray(sizes, dtype=np.float64)
    big = float(sizes.sum())
    if not 1 <= k <= big:
        raise ValueError(f"need 1 ≤ k ≤ n_R, got n_R = {int(big)}, k = {k}")
    p = sizes / big
    fpc = (big - k) / (big - 1) if big > 1 else 0.0
    return p, np.maximum(p * (1 - p) * fpc / k, 0.0)


def subset_jaccard_null(population: int, k: int) -> tuple[float, float]:
    """(E[J], Var[J]) of the Jaccard index of two independent uniformly random k-subsets of
    ``population`` rows: :func:`jaccard_null` draws from the n − 1 rows other than i, so this
    is ``jaccard_null(population + 1, k)`` [ours]."""
    return jaccard_null(int(population) + 1, k)


def p_two_sided(value: float, null: float | None, sd: float | None) -> float | None:
    """Two-sided p of value ≠ null: 2 (1 − Φ(|value − null| / sd)); with sd = 0, 0 if the
    value differs from the null (beyond 1e-12) else 1; None without a null [ours]."""
    from scipy.special import ndtr

    if null is None or sd is None or not np.isfinite(value) or not np.isfinite(null):
        return None
    if not sd > 0:
        return 0.0 if abs(value - null) > 1e-12 * max(1.0, abs(null)) else 1.0
    return float(min(1.0, 2.0 * ndtr(-abs(value - null) / sd)))
