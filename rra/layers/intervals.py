"""The ``lo``, ``hi``, ``null``, ``p`` columns of the layer tables: translation (E7), saliency
and margins (E9) (docs/methods.md §4, "Uncertainty and chance levels", and §8) [ours].

The settings are the metric tables' ``metrics.bootstrap`` (:class:`rra.metrics.uncertainty.
Settings`: ``B`` resamples, default 200, ``permutations``, ``seed``, ``level``); B = 0 leaves
the four columns null and never changes ``value``. Every analysis keeps its **per-image values**
(one number per probe image and table cell: a cosine, a relative change, a saliency share, a
margin) while it runs, and resamples those, never the model:

- **Interval** (``lo``, ``hi``): the class-stratified row bootstrap of the metric tables
  (:class:`~rra.metrics.uncertainty.RowBootstrap` over the images' labels, seeded
  ``[seed, 0]``, so every hook and scale of a run shares one set of resamples). A value that
  is a mean over the images where a per-image quantity is defined (finite) is resampled as the
  *ratio* Σ_i W[b, i] v_i f_i / Σ_i W[b, i] f_i (f_i = 1 where v_i is finite: the resampled
  mean of the images that have the quantity, as the value itself; :func:`resampled_means`);
  a class mean likewise over the class's columns of W (:func:`resampled_class_means`); a value
  that is a linear function of such means (the translation maps' means and radial profiles) is
  that function of the resampled means; a quantile is the same quantile (numpy's linear
  interpolation) of the finite per-image values of the resampled images
  (:func:`resampled_quantiles`). ``lo``, ``hi`` are the (1 ∓ level)/2 quantiles of the B
  resampled values.
- **Chance level** (``null``) and ``p``: per analysis (see its module); where an analysis has
  no chance level both stay null. :func:`p_less` is the one-sided p of "less than chance"
  (the translation maps' relative change); :func:`mc_nulls` the null and its sd from per-image
  null scores (as :func:`rra.metrics.uncertainty.mc_null`, one column per value).
- Counts (``hidden_margin_n``, ``hidden_margin_flat``, ``input_margin_n``,
  ``input_margin_not_converged``) and the margins' normaliser ``hidden_margin_spread`` keep
  null columns (:data:`NONE`); ``translation_zero_norm_fraction``, a share, gets an interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from rra.metrics import uncertainty as U

#: the four columns of a row without an interval or chance level
NONE: dict[str, Any] = dict(lo=None, hi=None, null=None, p=None)
#: the random stream of the translation maps' image order (their null pairing):
#: ``default_rng([seed, ORDER_STREAM])``; streams 0–4 are the metric tables', 21 the patterns'
ORDER_STREAM = 31


def row_bootstrap(labels: Any, n: int,
                  bootstrap: Mapping[str, Any] | U.Settings | None) -> U.RowBootstrap | None:
    """The stratified row bootstrap of n images (``labels`` None: one stratum) under
    ``metrics.bootstrap`` (:meth:`~rra.metrics.uncertainty.Settings.of`; None: the defaults,
    B = 200), or None when the settings switch it off (B = 0) or there are no images."""
    settings = U.Settings.of(bootstrap)
    if not settings.enabled or n < 1:
        return None
    y = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"labels must hold one class per image ({n}), got shape {y.shape}")
    return U.RowBootstrap(y, settings.B, settings.seed, settings.level)


def resampled_means(boot: U.RowBootstrap, v: np.ndarray) -> np.ndarray:
    """B (× m) resampled means of per-image values v (n, or n × m) over the images where v is
    finite: Σ_i W[b, i] v_i f_i / Σ_i W[b, i] f_i; NaN for a resample without such images."""
    v = np.asarray(v, dtype=np.float64)
    f = np.isfinite(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        return boot.mean(np.where(f, v, 0.0)) / boot.mean(f.astype(np.float64))


def resampled_class_means(boot: U.RowBootstrap, v: np.ndarray) -> np.ndarray:
    """B × C (× m) resampled class means of v over each class's images where v is finite
    (classes in ``boot.classes`` order)."""
    v = np.asarray(v, dtype=np.float64)
    f = np.isfinite(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        return boot.class_means(np.where(f, v, 0.0)) / boot.class_means(f.astype(np.float64))


def resampled_quantiles(boot: U.RowBootstrap, v: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """B × len(qs): the quantiles qs (linear interpolation, as ``np.quantile``) of the finite
    values among each resample's images (an image drawn twice counts twice); NaN for a
    resample without finite values."""
    v = np.asarray(v, dtype=np.float64)
    drawn = v[boot.indices()]                      # B × n: resample b's images' values
    with warnings.catch_warnings():                # an all-NaN resample stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(drawn, list(qs), axis=1).T


def mc_nulls(scores: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of R × m per-image null scores (R images, each paired with another image):
    the chance level = the column mean, and the sd of a mean over ``rows`` images under the
    null, σ̂ √(1/rows + 1/R) (the value's null spread and the estimate's own, as
    :func:`rra.metrics.uncertainty.mc_null`); NaN without scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.shape[0] == 0 or rows < 1:
        nan = np.full(s.shape[1], np.nan)
        return nan, nan.copy()
    sigma = s.std(axis=0, ddof=1) if s.shape[0] > 1 else np.zeros(s.shape[1])
    return s.mean(axis=0), sigma * np.sqrt(1.0 / rows + 1.0 / s.shape[0])


def p_less(value: float, null: float | None, sd: float | None) -> float | None:
    """One-sided p of value < null (less than chance): 1 − Φ((null − value) / sd), i.e.
    :func:`rra.metrics.uncertainty.p_value` of the negated value and null."""
    if null is None or value is None or not np.isfinite(null):
        return None
    return U.p_value(-float(value), -float(null), sd)


def columns(boot: U.RowBootstrap | None, samples: np.ndarray | None, values: Sequence[float],
            nulls: Sequence[float] | None = None, sds: Sequence[float] | None = None, *,
            less: bool = False) -> list[dict[str, Any]]:
    """The four columns of m values from their B × m resampled values; ``nulls``, ``sds``: the
    chance levels and null sds (None: no chance level); ``less``: p of value < null instead of
    value > null. Without a bootstrap every column is null."""
    m = len(values)
    if boot is None or samples is None:
        return [dict(NONE) for _ in range(m)]
    lo, hi = boot.interval(np.asarray(samples, dtype=np.float64).reshape(-1, m))
    out = []
    for i in range(m):
        null = None if nulls is None else U._num(nulls[i])
        sd = None if sds is None or null is None else U._num(sds[i])
        value = float(values[i])
        p = None
        if null is not None and sd is not None and np.isfinite(value):
            p = p_less(value, null, sd) if less else U.p_value(value, null, sd)
        out.append(dict(lo=U._num(lo[i]), hi=U._num(hi[i]), null=null, p=p))
    return out
