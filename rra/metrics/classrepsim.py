"""ClassRepSim (multi-scale class response similarity) and the STAC scale choice (methods.md §3).

ClassRepSim [ours, reconstruction of the published idea]. For one hook v with a kNN graph per
pooling scale s (1, 2, 4, …, full) and a class c:

    S_v[c, s, t] = mean over rows i with y_i = c of J(K_(v,s)[i], K_(v,t)[i]),
    J = m_i / (2k − m_i) the per-row Jaccard of NNTS,

reported with its class mean and spread (population std over classes) and, per class, the
agreement of the class responses 1 − ½‖P_(v,s)[c] − P_(v,t)[c]‖₁ (1 = the same class
composition of the neighbourhoods). A high S between a coarse scale and ``full`` means the
coarse summary already carries the hook's class neighbourhoods.

Scale choice for STAC [ours], per stage at its last block v, over the pooled scales s:

- ``agreement`` (the default of ``stac_auto.criterion``): the coarsest s whose class-mean
  class-response agreement A_v[s, full] is within δ of the finest pooled scale's,
  A_v[s, full] ≥ A_v[s_max, full] − δ (s_max always qualifies) — :func:`choose_stac_scale_within`;
- ``jaccard`` (the first version): the coarsest s with class-mean S_v[s, full] ≥ τ, else the
  finest s — :func:`choose_stac_scale`.

Why and with which evidence: docs/methods.md, "Scale choice for STAC".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rra.metrics.class_response import class_response
from rra.metrics.common import check_labels
from rra.metrics.nnts import jaccard_rows_all_pairs, prepare_graphs


@dataclass(frozen=True)
class ClassRepSim:
    """Multi-scale class response similarity of one hook [ours].

    scales: scale names in the order given (axes 1 and 2 of S and agreement).
    classes: (C,) sorted labels present.
    S: C × S × S float64, S[c, s, t] = mean over rows of class c of the per-row Jaccard of the
        graphs at scales s and t (ones on the diagonal, symmetric).
    class_mean, class_spread: S × S mean and population standard deviation of S over classes.
    agreement: C × S × S float64, 1 − ½‖P_s[c] − P_t[c]‖₁ with P the class response.
    k: neighbours per row used.
    row_jaccard: {(a, b): per-row Jaccard (n,)} for the scale pairs a < b; responses: the class
        response of each scale's graph (with its per-row shares). The per-row quantities the
        bootstrap resamples (``rra.metrics.uncertainty``).
    """

    scales: tuple[str, ...]
    classes: np.ndarray
    S: np.ndarray
    class_mean: np.ndarray
    class_spread: np.ndarray
    agreement: np.ndarray
    k: int
    row_jaccard: dict = field(default_factory=dict)
    responses: tuple = ()


def classrepsim(graphs_by_scale: Mapping[str, np.ndarray], labels: np.ndarray,
                k: int | None = None) -> ClassRepSim:
    """ClassRepSim of one hook from its kNN graph per scale [ours].

    ``k=None`` uses the smallest k_max among the graphs. Raises ValueError for graphs over
    different rows, a bad ``k`` or labels of the wrong length.
    """
    scales = tuple(str(s) for s in graphs_by_scale)
    if not scales:
        raise ValueError("graphs_by_scale: need at least one scale")
    if len(set(scales)) != len(scales):
        raise ValueError(f"graphs_by_scale: scale names repeat: {list(scales)}")
    graphs = prepare_graphs(list(graphs_by_scale.values()), k,
                            names=[f"scale {s}" for s in scales])
    n, k_used = graphs[0].shape
    y = check_labels(labels, n)
    classes, pos = np.unique(y, return_inverse=True)
    sizes = np.bincount(pos)
    n_scales, n_classes = len(scales), classes.size

    S = np.ones((n_classes, n_scales, n_scales), dtype=np.float64)
    rows = {}
    for a, b, j in jaccard_rows_all_pairs(graphs, names=[f"scale {s}" for s in scales]):
        S[:, a, b] = S[:, b, a] = np.bincount(pos, weights=j) / sizes
        rows[a, b] = j

    responses = tuple(class_response(g, y) for g in graphs)
    P = [r.P for r in responses]  # each C × C, rows of present classes
    agreement = np.ones((n_classes, n_scales, n_scales), dtype=np.float64)
    for a in range(n_scales):
        for b in range(a + 1, n_scales):
            agreement[:, a, b] = agreement[:, b, a] = 1.0 - 0.5 * np.abs(P[a] - P[b]).sum(axis=1)
    return ClassRepSim(scales=scales, classes=classes.astype(np.int64), S=S,
                       class_mean=S.mean(axis=0), class_spread=S.std(axis=0),
                       agreement=agreement, k=int(k_used), row_jaccard=rows,
                       responses=responses)


@dataclass(frozen=True)
class ScaleChoice:
    """The STAC condensation scale chosen from ClassRepSim [ours].

    scale: the chosen integer scale s.
    qualified: True when the evidence at s reaches the threshold; False when no scale qualified
        and the finest (largest) scale was taken instead.
    tau: the threshold used (for ``agreement``: A[s_max, full] − δ of this stage).
    evidence: {s: class-mean evidence at [s, full]} for every candidate scale, sorted by s.
    criterion: ``jaccard`` (S ≥ τ) or ``agreement`` (A within δ of the finest pooled scale).
    """

    scale: int
    qualified: bool
    tau: float
    evidence: dict[int, float] = field(default_factory=dict)
    criterion: str = "jaccard"


def choose_stac_scale(s_to_full: Mapping[int, float], tau: float = 0.5) -> ScaleChoice:
    """Coarsest (smallest) integer scale s with class-mean S[s, full] ≥ tau [ours].

    If none qualifies: the finest (largest) scale, with ``qualified=False``. Raises ValueError
    for an empty mapping, tau outside [0, 1], a scale that is not a positive integer, or a value
    outside [0, 1] (a mean Jaccard).
    """
    if not s_to_full:
        raise ValueError("choose_stac_scale: no candidate scales given")
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:  # also rejects NaN
        raise ValueError(f"choose_stac_scale: tau must lie in [0, 1], got {tau}")
    evidence: dict[int, float] = {}
    for s, value in s_to_full.items():
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"choose_stac_scale: scale {s!r} is not a positive integer "
                             "(pass the integer pooling scales, not 'full')")
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"choose_stac_scale: S[{s}, full] = {value} is not in [0, 1]")
        evidence[int(s)] = value
    evidence = dict(sorted(evidence.items()))
    qualifying = [s for s, value in evidence.items() if value >= tau]
    if qualifying:
        return ScaleChoice(scale=qualifying[0], qualified=True, tau=tau, evidence=evidence)
    return ScaleChoice(scale=max(evidence), qualified=False, tau=tau, evidence=evidence)


#: float slack of the ``agreement`` comparison, so that a value exactly δ below the finest
#: pooled scale's qualifies despite rounding in A[s_max] − δ [ours]
SLACK = 1e-9


def choose_stac_scale_within(agreement_to_full: Mapping[int, float], delta: float) -> ScaleChoice:
    """Coarsest (smallest) integer scale s whose class-mean class-response agreement with
    ``full`` is within ``delta`` of the finest (largest) pooled scale's [ours]:

        s* = min{ s : A[s, full] ≥ A[s_max, full] − δ }.

    s_max itself always qualifies, so the choice is never a fallback (``qualified`` is True);
    the returned ``tau`` is this stage's threshold A[s_max, full] − δ. Validation as
    :func:`choose_stac_scale`; ValueError for δ outside [0, 1].
    """
    delta = float(delta)
    if not 0.0 <= delta <= 1.0:  # also rejects NaN
        raise ValueError(f"choose_stac_scale_within: delta must lie in [0, 1], got {delta}")
    checked = choose_stac_scale(agreement_to_full, 0.0).evidence  # validates every entry
    threshold = checked[max(checked)] - delta
    choice = choose_stac_scale(checked, max(0.0, threshold - SLACK))
    return ScaleChoice(scale=choice.scale, qualified=True, tau=threshold, evidence=checked,
                       criterion="agreement")
