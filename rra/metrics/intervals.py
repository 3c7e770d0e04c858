"""The ``lo``, ``hi``, ``null``, ``p`` columns of each metric table, per measure (methods.md §4,
"Uncertainty and chance levels") [ours]. The building blocks (bootstrap, exact nulls, p-values,
relabelling, sanity checks) are in :mod:`rra.metrics.uncertainty`; this module applies them to
the per-row quantities of each measure. :class:`RunUncertainty` holds what a run's tables share:
one stratified row bootstrap, the Monte-Carlo relabellings and the row blocks they score.

Per measure (value → interval; chance level; sd of the value under the null):

- NNTS, ClassRepSim S and its class mean: mean of per-row Jaccard → resampled means; exact
  E[J] (:func:`~rra.metrics.uncertainty.jaccard_null`); per-row null sd / √rows.
- mutual kNN: mean of m_i / k; exact k / (n − 1); hypergeometric sd / √n.
- cycle kNN, rank similarity, second-order cosine: mean of per-row scores; Monte-Carlo: P
  relabellings of graph b (and of the rows of embedding b), each scoring a disjoint random block
  of the rows, so the null costs one evaluation of the measure
  (:func:`~rra.metrics.uncertainty.mc_null`); second-order cosine from the dense distance
  matrices (n ≤ ``DENSE_MAX_ROWS``) or, above, from distances gathered from the embeddings.
- class composition, purity, row-weighted purity: class means of each row's neighbour shares;
  exact chance under shuffled labels (:func:`~rra.metrics.uncertainty.composition_null`);
  kNN-vote accuracy: class means of 0/1 votes, chance per class by Monte-Carlo draws
  (:func:`~rra.metrics.uncertainty.vote_null`).
- ClassRepSim spread and class-response agreement: recomputed from the resampled class means;
  no chance level (null, p empty).
- NNTP runs, edges, persistent_all: totals of each row's ½-share of every run / edge →
  resampled totals Σ_i W[b, i] c_i; no chance level (null, p empty).
- linear CKA (biased, debiased): interval for n ≤ ``CKA_MAX_ROWS`` (2048) from the
  weighted-resample identities of the traces (rows drawn w_i times, see :class:`CkaBoot`), none
  above; chance level and p at every n from the exact permutation mean and sd (biased: the RV
  coefficient's moments; debiased: 0 and √(2/(n(n − 3))), :func:`cka_chance`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from rra.metrics import uncertainty as U


class RunUncertainty:
    """What the tables of one run share: its labels, settings, the row bootstrap (built on
    first use) and the Monte-Carlo relabellings."""

    def __init__(self, labels: np.ndarray, settings: U.Settings):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.settings = settings
        self.n = self.labels.size
        self._votes: dict[int, np.ndarray] = {}

    def vote_chance(self, k: int) -> np.ndarray:
        """Per class, the chance of a correct kNN vote at k (one Monte-Carlo run per k)."""
        if k not in self._votes:
            self._votes[k] = U.vote_null(self.boot.sizes, k, self.settings.seed)
        return self._votes[k]

    @cached_property
    def boot(self) -> U.RowBootstrap:
        s = self.settings
        return U.RowBootstrap(self.labels, s.B, s.seed, s.level)

    @cached_property
    def perms(self) -> np.ndarray:
        return U.permutations(self.n, self.settings.permutations, self.settings.seed)

    @cached_property
    def blocks(self) -> list[np.ndarray]:
        return U.row_splits(self.n, self.settings.permutations, self.settings.seed)

    @cached_property
    def W(self) -> np.ndarray:
        """The bootstrap counts in row order (B × n)."""
        out = np.empty_like(self.boot.W_sorted)
        out[:, self.boot.order] = self.boot.W_sorted
        return out

    # -- means of per-row values ---------------------------------------------------------------

    def mean_stats(self, v: np.ndarray, null: float | None, sd_row: float | None,
                   value: float | None = None) -> dict[str, Any]:
        """Stats of mean(v) with a per-row null (mean, sd): sd of the value = sd_row / √n."""
        value = float(np.mean(v)) if value is None else value
        sd = None if sd_row is None else sd_row / np.sqrt(self.n)
        return U.stats(self.boot, self.boot.mean(v), value, null, sd)

    def class_stats(self, v: np.ndarray, null: float | np.ndarray | None,
                    sd_row: float | np.ndarray | None) -> list[dict[str, Any]]:
        """Stats of each class mean of v (classes in sorted order)."""
        boot = self.boot.class_means(v)
        sizes = self.boot.sizes
        nulls = np.broadcast_to(np.nan if null is None else null, sizes.shape)
        sds = np.broadcast_to(np.nan if sd_row is None else sd_row, sizes.shape)
        values = np.bincount(np.searchsorted(self.boot.classes, self.labels), weights=v,
                             minlength=sizes.size) / sizes
        return U.stats_many(self.boot, boot, values,
                            None if null is None else [float(x) for x in nulls],
                            None if sd_row is None else [float(x) for x in sds / np.sqrt(sizes)])

    # -- NNTS --------------------------------------------------------------------------------

    def nnts(self, j: np.ndarray, k: int) -> tuple[dict, list[dict]]:
        """Stats of NNTS (mean of the per-row Jaccard j) and of its class means."""
        mean, var = U.jaccard_null(self.n, k)
        sd = float(np.sqrt(var))
        return self.mean_stats(j, mean, sd), self.class_stats(j, mean, sd)

    def nnts_diagonal(self, k: int) -> dict:
        """A graph with itself: every resample is 1."""
        mean, var = U.jaccard_null(self.n, k)
        return dict(lo=1.0, hi=1.0, null=mean, p=U.p_value(1.0, mean, np.sqrt(var / self.n)))


def empty_stats() -> dict[str, Any]:
    return dict.fromkeys(U.COLUMNS)


# ---------------------------------------------------------------------------------------------
# class response

def class_response_stats(u: RunUncertainty, cr) -> dict[tuple, dict]:
    """{(measure, class, class_b): stats} of one graph's class response ``cr`` (with its
    per-row shares)."""
    boot = u.boot
    C, k = cr.classes.size, cr.k
    p0, v0 = U.composition_null(boot.sizes, k)
    nc = boot.sizes.astype(np.float64)
    bootP = boot.class_means(cr.row_fractions)                        # B × C × C
    comp = U.stats_many(boot, bootP.reshape(boot.B, C * C), cr.P.ravel(), p0.ravel().tolist(),
                        np.sqrt(v0 / nc[:, None]).ravel().tolist())
    out: dict[tuple, dict] = {("class_composition", c, c2): comp[c * C + c2]
                              for c in range(C) for c2 in range(C)}
    diag = np.einsum("bcc->bc", bootP)
    out["knn_purity", None, None] = U.stats(
        boot, diag.mean(axis=1), cr.purity, float(np.diag(p0).mean()),
        float(np.sqrt((np.diag(v0) / nc).sum()) / C))
    own = cr.row_fractions[np.arange(u.n), np.searchsorted(cr.classes, u.labels)]
    out["knn_purity_rows", None, None] = U.stats(
        boot, boot.mean(own), cr.row_weighted_purity, float(nc @ np.diag(p0) / u.n),
        float(np.sqrt(nc @ np.diag(v0)) / u.n))
    q = u.vote_chance(k)
    correct = cr.row_correct.astype(np.float64)
    votes = u.class_stats(correct, q, np.sqrt(q * (1 - q)))
    for c in range(C):
        out["knn_vote_accuracy_class", c, None] = votes[c]
    out["knn_vote_accuracy", None, None] = vote_stats(boot, correct, nc, q, cr.vote_accuracy)[0]
    return out


def vote_stats(boot: U.RowBootstrap, correct: np.ndarray, sizes: np.ndarray, q: np.ndarray,
               value: float) -> tuple[dict, np.ndarray]:
    """(stats, resampled values) of a kNN-vote accuracy: the mean of the 0/1 votes ``correct``
    of m rows, n_c of them in class c (``sizes``), chance of a correct vote q_c per class:
    null Σ_c n_c q_c / m, sd under the null √(Σ_c n_c q_c (1 − q_c)) / m."""
    m = correct.size
    samples = boot.mean(correct)
    return U.stats(boot, samples, value, float(sizes @ q / m),
                   float(np.sqrt(sizes @ (q * (1 - q)))) / m), samples


# ---------------------------------------------------------------------------------------------
# ClassRepSim

def classrepsim_stats(u: RunUncertainty, res) -> dict[tuple, dict]:
    """{(measure, a, b, class index or None): stats} of one hook's ClassRepSim ``res``."""
    boot = u.boot
    n_scales, C = len(res.scales), res.classes.size
    mean, var = U.jaccard_null(u.n, res.k)
    sizes = boot.sizes.astype(np.float64)
    bootS = np.ones((boot.B, C, n_scales, n_scales))
    for (a, b), j in res.row_jaccard.items():
        bootS[:, :, a, b] = bootS[:, :, b, a] = boot.class_means(j)
    bootP = [boot.class_means(r.row_fractions) for r in res.responses]   # each B × C × C
    out: dict[tuple, dict] = {}
    sd_mean = float(np.sqrt((var / sizes).sum()) / C)
    for a in range(n_scales):
        for b in range(n_scales):
            out["classrepsim_mean", a, b, None] = U.stats(
                boot, bootS[:, :, a, b].mean(axis=1), float(res.class_mean[a, b]), mean, sd_mean)
            out["classrepsim_spread", a, b, None] = U.stats(
                boot, bootS[:, :, a, b].std(axis=1), float(res.class_spread[a, b]))
            agree = 1.0 - 0.5 * np.abs(bootP[a] - bootP[b]).sum(axis=2)      # B × C
            for c in range(C):
                out["classrepsim", a, b, c] = U.stats(
                    boot, bootS[:, c, a, b], float(res.S[c, a, b]), mean,
                    float(np.sqrt(var / sizes[c])))
                out["class_response_agreement", a, b, c] = U.stats(
                    boot, agree[:, c], float(res.agreement[c, a, b]))
    return out


# ---------------------------------------------------------------------------------------------
# NNTP

def nntp_stats(u: RunUncertainty, res) -> tuple[list, list, dict]:
    """(table stats L × L as nested lists, edge stats per hook, persistent_all stats)."""
    L = res.table.shape[0]
    boot_t = u.W @ res.row_table                   # B × L²: resampled totals
    boot_e = u.W @ res.row_edges                   # B × L
    lo, hi = u.boot.interval(boot_t)
    table = [[dict(lo=float(lo[f * L + l]), hi=float(hi[f * L + l]), null=None, p=None)
              for l in range(L)] for f in range(L)]
    elo, ehi = u.boot.interval(boot_e)
    edges = [dict(lo=float(elo[f]), hi=float(ehi[f]), null=None, p=None) for f in range(L)]
    return table, edges, table[0][L - 1]


# ---------------------------------------------------------------------------------------------
# peers (kNN) and CKA

def peer_scores(name: str, a: np.ndarray, b: np.ndarray, dist=None) -> np.ndarray:
    """Per-row scores of a kNN peer measure on graphs a, b (cut to one k); ``dist``: the pair of
    dense n × n distance matrices (second-order cosine)."""
    from rra.metrics import peers

    if name == "mutual_knn":
        return peers._mutual_knn_rows(a, b)
    if name == "cycle_knn":
        return peers._cycle_knn_rows(a, b)
    if name == "rank_similarity":
        return peers._rank_similarity_rows(a, b)
    if name == "second_order_cosine" and dist is not None:
        return _soc_rows(a, b, dist[0], dist[1], np.arange(a.shape[0]), None)  # b' = b
    raise ValueError(f"peer_scores: no per-row scores for {name!r}")


def _soc_rows(a, b_rows, da, db, rows: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """Second-order cosine of ``rows`` (graph a; ``b_rows``: the rows ``rows`` of b' = b
    relabelled by perm) from dense distances, d_b'(i, j) = d_b(π(i), π(j))."""
    from rra.metrics.peers import _second_order_rows_from

    pi = np.arange(a.shape[0]) if perm is None else perm

    def take_a(sl, cols):
        return np.take_along_axis(np.asarray(da[rows[sl]], dtype=np.float64), cols, axis=1)

    def take_b(sl, cols):
        return np.take_along_axis(np.asarray(db[pi[rows[sl]]], dtype=np.float64), pi[cols],
                                  axis=1)

    return _second_order_rows_from(a[rows], b_rows, take_a, take_b, 8192)


def _soc_rows_embedded(a, b_rows, emb, rows: np.ndarray, perm: np.ndarray,
                       max_elements: int = 2**23) -> np.ndarray:
    """:func:`_soc_rows` without dense matrices: the distances gathered from the embeddings
    ``emb`` = (x_a, x_b, distance), d_b'(i, j) = d_b(π(i), π(j)) (above ``DENSE_MAX_ROWS``)."""
    from rra.metrics.peers import _distances_at, _second_order_rows_from

    xa, xb, distance = emb

    def take_a(sl, cols):
        return _distances_at(xa, rows[sl], cols, distance, "x_a")

    def take_b(sl, cols):
        return _distances_at(xb, perm[rows[sl]], perm[cols], distance, "x_b")

    width = 2 * a.shape[1] * max(xa.shape[1], xb.shape[1])
    return _second_order_rows_from(a[rows], b_rows, take_a, take_b, max(1, max_elements // width))


def _null_rows(name: str, a: np.ndarray, b: np.ndarray, perm: np.ndarray, rows: np.ndarray,
               dist, emb=None) -> np.ndarray:
    """Scores of ``rows`` with graph b relabelled by ``perm`` (only those rows relabelled:
    K_b'(i) = π⁻¹(K_b(π(i))))."""
    from rra.metrics import peers

    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size, dtype=perm.dtype)
    bp = inverse[b[perm[rows]]]
    if name == "second_order_cosine" and dist is None:
        return _soc_rows_embedded(a, bp, emb, rows, perm)
    if name == "second_order_cosine":
        return _soc_rows(a, bp, dist[0], dist[1], rows, perm)
    if name == "rank_similarity":
        return peers._rank_similarity_rows(a[rows], bp)
    two_hops = a[bp]                                   # cycle kNN: K_a[j] for j in K_b'[i]
    return (two_hops == rows[:, None, None]).any(axis=(1, 2)).astype(np.float64)


def peer_stats(u: RunUncertainty, name: str, a: np.ndarray, b: np.ndarray, rows: np.ndarray,
               value: float, dist=None, emb=None) -> dict[str, Any]:
    """Stats of one kNN peer value (graphs a, b cut to k; per-row scores ``rows``); second-order
    cosine needs the dense distance matrices ``dist`` or the embeddings ``emb`` =
    (x_a, x_b, distance)."""
    n, k = a.shape
    if name == "mutual_knn":
        mean, var = U.overlap_null(n, k)
        return u.mean_stats(rows, mean, float(np.sqrt(var)), value)
    if name == "second_order_cosine" and dist is None and emb is None:
        return u.mean_stats(rows, None, None, value)
    samples = np.concatenate([_null_rows(name, a, b, perm, block, dist, emb)
                              for perm, block in zip(u.perms, u.blocks)])
    null, sd = U.mc_null(samples, n)
    return U.stats(u.boot, u.boot.mean(rows), value, null, sd)


#: the largest probe for CKA's uncertainty columns: their cost grows as n² B per pair, which
#: above this size exceeds the measure's own by far (benchmark in README) [ours]
CKA_MAX_ROWS = 2048


class CkaBoot:
    """Bootstrap and permutation null of linear CKA from centred Gram matrices (dense path).

    A resample draws row i w_i times. With K the centred Gram matrix of the original rows (HSIC
    is translation-invariant, so re-centring on the resample is done in the formulas):
    tr(K*HL*H) = wᵀ(K∘L)w − (2/n) Σ_i w_i (Kw)_i (Lw)_i + (wᵀKw)(wᵀLw)/n² (biased), and for the
    unbiased HSIC tr(K̃*L̃*) = wᵀ(K∘L)w − Σ_i w_i K_ii L_ii, 1ᵀK̃*1 = wᵀKw − Σ_i w_i K_ii,
    1ᵀK̃*L̃*1 = Σ_i w_i (Kw − diag K)_i (Lw − diag L)_i. All B resamples at once: (M Wᵀ) products.
    """

    def __init__(self, u: RunUncertainty):
        self.u = u
        self._hook: dict[str, tuple] = {}
        self._pair: tuple[tuple[str, str], dict] | None = None   # the last pair's traces

    def _of(self, g) -> tuple:
        if g.name not in self._hook:
            W = self.u.W
            KW = g.gram @ W.T                                         # n × B
            self._hook[g.name] = (KW, np.einsum("bi,ib->b", W, (g.gram * g.gram) @ W.T))
        return self._hook[g.name]

    def traces(self, ga, gb) -> dict[str, np.ndarray]:
        """The resampled traces of a pair and its permuted cross traces ⟨K, L[π, π]⟩, kept for
        the pair's second estimator (biased and debiased share them)."""
        if self._pair is not None and self._pair[0] == (ga.name, gb.name):
            return self._pair[1]
        W, n = self.u.W, ga.n
        (KW, kk), (LW, ll) = self._of(ga), self._of(gb)
        kl = np.einsum("bi,ib->b", W, (ga.gram * gb.gram) @ W.T)
        t = dict(kl=kl, kk=kk, ll=ll, KW=KW, LW=LW, W=W, n=n)
        self._pair = ((ga.name, gb.name), t)
        return t

    def resampled(self, ga, gb, debiased: bool) -> np.ndarray:
        t = self.traces(ga, gb)
        if not debiased:
            return self._biased(t, ga, gb)
        return self._debiased(t, ga, gb)

    @staticmethod
    def _biased(t, ga, gb) -> np.ndarray:
        W, n, KW, LW = t["W"], t["n"], t["KW"], t["LW"]

        def centred(quad, A, B):
            sa, sb = np.einsum("bi,ib->b", W, A), np.einsum("bi,ib->b", W, B)
            return quad - 2.0 / n * np.einsum("bi,ib,ib->b", W, A, B) + sa * sb / n**2

        kl, kk, ll = centred(t["kl"], KW, LW), centred(t["kk"], KW, KW), centred(t["ll"], LW, LW)
        with np.errstate(invalid="ignore", divide="ignore"):
            return kl / np.sqrt(kk * ll)

    @staticmethod
    def _debiased(t, ga, gb) -> np.ndarray:
        W, n = t["W"], t["n"]
        dk, dl = ga.sq_norms, gb.sq_norms

        def hsic(quad, A, da, B, db):
            tr = quad - W @ (da * db)
            one_a = np.einsum("bi,ib->b", W, A) - W @ da
            one_b = np.einsum("bi,ib->b", W, B) - W @ db
            cross = np.einsum("bi,ib,ib->b", W, A - da[:, None], B - db[:, None])
            return tr + one_a * one_b / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)

        KW, LW = t["KW"], t["LW"]
        h_kl = hsic(t["kl"], KW, dk, LW, dl)
        h_kk, h_ll = hsic(t["kk"], KW, dk, KW, dk), hsic(t["ll"], LW, dl, LW, dl)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((h_kk > 0) & (h_ll > 0), h_kl / np.sqrt(h_kk * h_ll), np.nan)

    def permuted(self, ga, gb, debiased: bool) -> np.ndarray:
        """CKA with the rows of the second representation permuted, one per relabelling (an n²
        gather per permutation; the tables use the exact permutation moments instead, see
        :func:`cka_chance`; the tests compare the two)."""
        from rra.metrics.cka import _cka_from_traces

        out = []
        for perm in self.u.perms:
            kl = float(np.einsum("ij,ij->", ga.gram, np.take(gb.gram[perm], perm, axis=1)))
            norms = (ga.sq_norms, gb.sq_norms[perm]) if debiased else None
            out.append(_cka_from_traces(kl, ga.self_trace, gb.self_trace, norms))
        return np.asarray(out)

    def stats(self, ga, gb, debiased: bool, value: float) -> dict[str, Any]:
        """Interval (n ≤ ``CKA_MAX_ROWS``), exact chance level and p from the exact permutation
        sd (:func:`cka_stats`)."""
        if ga.n > CKA_MAX_ROWS:
            return cka_stats(ga.self_trace, ga.sq_norms, gb.self_trace, gb.sq_norms, debiased,
                             value)
        null, sd = cka_chance(ga.self_trace, ga.sq_norms, gb.self_trace, gb.sq_norms, debiased)
        return U.stats(self.u.boot, self.resampled(ga, gb, debiased), value, null, sd)


def cka_chance(kk: float, a: np.ndarray, ll: float, b: np.ndarray,
               debiased: bool) -> tuple[float, float | None]:
    """(mean, sd) of linear CKA under a random row permutation of one representation, both exact:
    biased: :func:`~rra.metrics.uncertainty.cka_null` and the RV coefficient's variance
    (:func:`~rra.metrics.uncertainty.cka_null_sd`); debiased: 0 and √(2/(n(n − 3)))
    (:func:`~rra.metrics.uncertainty.cka_debiased_null_sd`). ``kk``, ``ll``: tr(K²), tr(L²) of
    the centred kernels; ``a``, ``b``: the centred rows' squared norms (the kernels' diagonals)."""
    n = a.shape[0]
    if debiased:
        return 0.0, U.cka_debiased_null_sd(n)
    tr_k, tr_l = float(a.sum()), float(b.sum())
    return (U.cka_null(kk, ll, tr_k, tr_l, n),
            U.cka_null_sd(kk, ll, tr_k, tr_l, float(a @ a), float(b @ b), n))


def cka_stats(kk: float, a: np.ndarray, ll: float, b: np.ndarray, debiased: bool,
              value: float) -> dict[str, Any]:
    """Chance level and p of a CKA value without an interval (above ``CKA_MAX_ROWS`` rows, where
    the bootstrap's n² B cost per pair exceeds the measure's own by far)."""
    null, sd = cka_chance(kk, a, ll, b, debiased)
    return dict(lo=None, hi=None, null=null, p=U.p_value(value, null, sd))


# ---------------------------------------------------------------------------------------------
# held-out placement (E11, rra.metrics.placement) [ours]

#: the SeedSequence word that derives the held-out rows' bootstrap seed from ``seed``
HELDOUT_STREAM = 11


def heldout_seed(seed: int) -> int:
    """The seed of the held-out rows' bootstrap: the first word of
    ``SeedSequence([seed, HELDOUT_STREAM])``, so its resamples are independent of the reference
    rows' (drawn with ``seed`` itself, as the metric tables draw theirs) even where both probes
    have the same class sizes (same-sized draws from one seed would pair the two resamples)."""
    return int(np.random.SeedSequence([int(seed), HELDOUT_STREAM]).generate_state(1)[0])


class PlacementUncertainty:
    """The ``lo``, ``hi``, ``null``, ``p`` columns of one placement stage (module
    :mod:`rra.metrics.placement`): the reference rows' bootstrap (:class:`RunUncertainty` of
    y_R, the metric tables' seed: ``placement_train_acc`` gets the stats of
    ``knn_vote_accuracy``), an independent stratified bootstrap of the held-out rows
    (:func:`heldout_seed`), and the chance levels of a held-out row whose k neighbours are
    drawn at random from the n_R reference rows. Each ``*_stats`` method returns
    ``(stats, resampled values)``."""

    def __init__(self, y_ref: np.ndarray, y_heldout: np.ndarray, settings: U.Settings):
        self.settings = settings
        self.y_ref = np.asarray(y_ref, dtype=np.int64)
        self.y_q = np.asarray(y_heldout, dtype=np.int64)
        self.ref = RunUncertainty(self.y_ref, settings)
        self.boot = U.RowBootstrap(self.y_q, settings.B, heldout_seed(settings.seed),
                                   settings.level)
        classes, pos = np.unique(np.concatenate([self.y_ref, self.y_q]), return_inverse=True)
        n_ref = self.y_ref.size
        self.ref_sizes = np.bincount(pos[:n_ref], minlength=classes.size)  # over the union
        self.q_sizes = np.bincount(pos[n_ref:], minlength=classes.size).astype(np.float64)
        self.m = self.y_q.size
        self._votes: dict[int, np.ndarray] = {}

    def vote_chance(self, k: int) -> np.ndarray:
        """q_c per class of the union (:func:`~rra.metrics.uncertainty.vote_null_reference`)."""
        if k not in self._votes:
            self._votes[k] = U.vote_null_reference(self.ref_sizes, k, self.settings.seed)
        return self._votes[k]

    def heldout_acc_stats(self, correct: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
        """``placement_acc``: per held-out row 1[vote = y_q]; null Σ_c m_c q_c / m, sd under
        the null √(Σ_c m_c q_c (1 − q_c)) / m."""
        correct = np.asarray(correct, dtype=np.float64)
        return vote_stats(self.boot, correct, self.q_sizes, self.vote_chance(k),
                          float(correct.mean()))

    def train_acc_stats(self, correct: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
        """``placement_train_acc``: the stats of ``knn_vote_accuracy`` of the reference rows'
        leave-one-out graph (:func:`class_response_stats`)."""
        u = self.ref
        correct = np.asarray(correct, dtype=np.float64)
        return vote_stats(u.boot, correct, u.boot.sizes.astype(np.float64), u.vote_chance(k),
                          float(correct.mean()))

    def gap_stats(self, value: float, train: np.ndarray, heldout: np.ndarray) -> dict:
        """``placement_gap``: resampled as the difference of the two independent resamples;
        null 0 (no gap); p two-sided (gap ≠ 0) from the bootstrap sd of the difference."""
        samples = np.asarray(train) - np.asarray(heldout)
        lo, hi = self.boot.interval(samples)
        sd = float(samples.std(ddof=1)) if samples.size > 1 else None
        return dict(lo=U._num(lo), hi=U._num(hi), null=0.0, p=U.p_two_sided(value, 0.0, sd))

    def purity_stats(self, shares: np.ndarray, k: int) -> dict:
        """``placement_purity``: per held-out row its share of own-class neighbours; null
        Σ_c m_c (n_c / n_R) / m, sd √(Σ_c m_c Var_c) / m (hypergeometric Var_c)."""
        shares = np.asarray(shares, dtype=np.float64)
        mean, var = U.share_null_reference(self.ref_sizes, k)
        return U.stats(self.boot, self.boot.mean(shares), float(shares.mean()),
                       float(self.q_sizes @ mean / self.m),
                       float(np.sqrt(self.q_sizes @ var)) / self.m)

    def agreement_stats(self, j: np.ndarray, k: int) -> dict:
        """``placement_agreement``: per held-out row the Jaccard of its neighbour sets at two
        hooks; null E[J] of two independent random k-subsets of the n_R reference rows, sd
        √(Var J / m)."""
        j = np.asarray(j, dtype=np.float64)
        mean, var = U.subset_jaccard_null(self.y_ref.size, k)
        return U.stats(self.boot, self.boot.mean(j), float(j.mean()), mean,
                       float(np.sqrt(var / self.m)))


# ---------------------------------------------------------------------------------------------
# representation dynamics (E10, rra.metrics.dynamics) [ours]

def settling_resamples(epochs, to_final: np.ndarray, tau: float, slack: float) -> np.ndarray:
    """The settling epoch of each row of ``to_final`` (B × m resampled D(e_j), the last column
    the final epoch, which always qualifies): min { e_j : D(e_l) ≥ τ − slack for every l ≥ j },
    the rule of :func:`rra.metrics.dynamics.settling_epoch`, vectorised."""
    epochs = np.asarray(list(epochs), dtype=np.int64)
    qual = np.asarray(to_final, dtype=np.float64) >= tau - slack
    qual[:, -1] = True
    suffix = np.flip(np.cumprod(np.flip(qual, axis=1), axis=1), axis=1).astype(bool)
    return epochs[suffix.argmax(axis=1)]


def discrete_interval(boot: U.RowBootstrap, samples: np.ndarray) -> tuple[float, float]:
    """Percentile interval of a discrete resampled value that stays on its values: the lower
    (1 − level)/2 and the higher (1 + level)/2 quantile (numpy ``lower`` / ``higher``)."""
    samples = np.asarray(samples, dtype=np.float64)
    lo = np.quantile(samples, (1 - boot.level) / 2, method="lower")
    hi = np.quantile(samples, (1 + boot.level) / 2, method="higher")
    return float(lo), float(hi)


def dynamics_stats(u: RunUncertainty, epochs, to_final_rows, step_rows, k: int, tau: float,
                   slack: float) -> dict[str, Any]:
    """The stats of one hook at one k of the dynamics table: ``to_final`` (per kept epoch;
    the final epoch is a graph with itself, :meth:`RunUncertainty.nnts_diagonal`), ``step``
    (per consecutive pair), both NNTS of two graphs on the same probe rows
    (:meth:`RunUncertainty.nnts`); ``settling``: the settling epoch of every resample (D_h(e)
    of resample b = (W j_e)_b / n from the per-row Jaccard j_e) → the interval of
    :func:`discrete_interval`, no chance level (a threshold crossing has none); ``settled``:
    the interval of the resampled indicator [settle < final], no chance level."""
    epochs = list(epochs)
    to_final = [u.nnts(j, k)[0] for j in to_final_rows[:-1]] + [u.nnts_diagonal(k)]
    step = [u.nnts(j, k)[0] for j in step_rows]
    boot_d = np.stack([u.boot.mean(j) for j in to_final_rows[:-1]]
                      + [np.ones(u.boot.B)], axis=1)                        # B × m
    settle = settling_resamples(epochs, boot_d, tau, slack)
    lo, hi = discrete_interval(u.boot, settle)
    slo, shi = discrete_interval(u.boot, (settle < epochs[-1]).astype(np.float64))
    return {"to_final": to_final, "step": step,
            "settling": dict(lo=lo, hi=hi, null=None, p=None),
            "settled": dict(lo=slo, hi=shi, null=None, p=None), "resamples": settle}
