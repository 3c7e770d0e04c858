"""Fragmentation of the decision regions on planes through triplets of samples, in the input
space and per hook (seed-measures §5) [source: the core measure, arXiv 2411.04695; per-layer
variant ours].

Plane and grid [source: a plane through three samples, an R × R grid extended by half the span
on each side; the frame ours]. For a triplet a, b, c (rows flattened): e₁ = (b − a)/‖b − a‖,
e₂ = the unit component of c − a orthogonal to e₁; the three points have plane coordinates
A = (0, 0), B = (‖b − a‖, 0), C = ((c − a)·e₁, (c − a)·e₂). Their bounding box [lo, hi] per
axis, extended by half its span on each side ([lo − span/2, hi + span/2]), is sampled at R
equally spaced values per axis (``np.linspace``, ends included): grid point (i, j) is
p = a + u_j e₁ + w_i e₂, row i along e₂, column j along e₁. Each p is also written in affine
coordinates, p = a + α(b − a) + β(c − a). A triplet whose points are (numerically) collinear
spans no plane: NaN, left out of the mean.

Fragmentation [source]: the predicted class (argmax of the logits) at every grid point gives
an R × R class map L; fragmentation = Σ_{classes c present} #connected components of {L = c}
with 8-connectivity (``scipy.ndimage.label`` with a 3 × 3 structure). One class everywhere
gives 1; a straight boundary across the grid 2.

Triplets [ours where silent]: ``same_class``: a class drawn uniformly among the classes with at
least 3 probe rows, then 3 distinct rows of it; ``mixed``: 3 distinct classes drawn uniformly,
one row of each. T triplets per kind (50), drawn with ``numpy.random.default_rng(seed)``; the
same triplets (probe rows) serve every hook, so layers are compared on the same samples.

Per hook [ours]: the plane through h(a), h(b), h(c) in the hook's output space (the full,
unpooled tensor, flattened), with the same grid construction, classified by "the head after
the hook": the model is run with a forward hook that replaces the module's output by the grid
point (reshaped to the output's shape), so everything computed after that module sees the grid
point. For a hook every path to the logits passes through (all hook points of the registry's
models: LeNet's modules, a ResNet's stem, its blocks — each block's output is the complete
state the next block and its shortcut read —, ``pool`` and ``fc``), the logits are a function
of the hook's output alone: that function is the head. For a module inside a residual block
(e.g. ``layer1.0.conv1``) other paths (the block's shortcut) bypass it; they are fed the
input-space point with the same affine coordinates, x = x_a + α(x_b − x_a) + β(x_c − x_a), so
at the triplet's own points the substituted model reproduces the model's prediction. The hook
``input`` is the core measure (the model itself on the input plane). Cost: R² forward passes
of the whole model per triplet and hook (the layers before the hook are evaluated and
discarded; any model works without splitting it).

Uncertainty (the ``lo``, ``hi``, ``null``, ``p`` columns; docs/methods.md §4 and §8) [ours].
``bootstrap``: ``metrics.bootstrap`` (:class:`rra.metrics.uncertainty.Settings`; ``None``: its
defaults; B = 0: the four columns null). The sampling units are the **triplets**, not the probe
images (a triplet's count is one draw of the quantity whose mean is reported; the images enter
only through the triplets): B resamples of the triplets, stratified by kind (each triplet of a
kind replaced by a uniformly drawn triplet of that kind;
:class:`rra.metrics.uncertainty.RowBootstrap` with the kind as the label, seed
``metrics.bootstrap.seed``), one set of resamples shared by every hook, so hooks are compared
on the same resampled triplets. A resampled mean is the mean of the drawn triplets' finite
counts (collinear ones, NaN, left out as in the value: the bootstrap of a ratio; a resample
that draws only collinear triplets is NaN and ignored by the percentile interval).
``fragmentation_{kind}`` gets ``lo``, ``hi``; no chance level (``null``, ``p`` empty): the count
is compared between hooks and variants, and no shuffle gives it a meaningful reference (a
constant class map gives 1, a labelling of the grid points at random ~R² regions; neither is a
model one could have had). ``…_sd`` and ``…_triplets``: none (a spread and a count of units).
Triplets drawn from one probe may share images; they are resampled as independent units, and
the interval is over triplets given the probe (as the value is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from rra.layers.common import (FULL_SCALE, INPUT_HOOK, HookRunner, as_batch, as_labels,
                              check_hooks, hook_positions, on_device, positive_int, substitute)

if TYPE_CHECKING:
    import torch
    from torch import nn

KINDS = ("same_class", "mixed")
RESOLUTION = 50
TRIPLETS = 50
EXTEND = 0.5
#: relative tolerance below which a triplet counts as collinear
COLLINEAR_TOL = 1e-6


def count_regions(class_map: Any) -> int:
    """Σ over the classes present of the number of 8-connected components of {L = c}."""
    from scipy import ndimage

    L = np.asarray(class_map)
    if L.ndim != 2 or L.size == 0:
        raise ValueError(f"class_map must be a non-empty 2-D array, got shape {L.shape}")
    structure = np.ones((3, 3), dtype=bool)
    return int(sum(ndimage.label(L == c, structure=structure)[1] for c in np.unique(L)))


def plane_coordinates(a: Any, b: Any, c: Any, resolution: int = RESOLUTION,
                      extend: float = EXTEND) -> tuple[np.ndarray, np.ndarray] | None:
    """Affine coordinates (α, β), each R × R (row i along e₂, column j along e₁), of the grid on
    the plane through a, b, c: p_ij = a + α_ij (b − a) + β_ij (c − a); ``None`` when the three
    points are collinear (see the module docstring)."""
    resolution = _check_resolution(resolution)
    extend = _check_extend(extend)
    a, b, c = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b, c))
    u = b - a
    v = c - a
    nu = np.linalg.norm(u)
    scale = max(nu, np.linalg.norm(v), np.linalg.norm(a), 1e-300)
    if nu <= COLLINEAR_TOL * scale:
        return None
    e1 = u / nu
    cx = float(v @ e1)
    perp = v - cx * e1
    cy = float(np.linalg.norm(perp))
    if cy <= COLLINEAR_TOL * max(nu, np.linalg.norm(v)):
        return None
    xs, ys = np.array([0.0, nu, cx]), np.array([0.0, 0.0, cy])
    grid = []
    for vals in (xs, ys):
        lo, hi = vals.min(), vals.max()
        span = hi - lo
        grid.append(np.linspace(lo - extend * span, hi + extend * span, resolution))
    W, U = np.meshgrid(grid[1], grid[0], indexing="ij")  # rows: e₂, columns: e₁
    beta = W / cy
    alpha = (U - cx * beta) / nu
    return alpha, beta


@dataclass
class Fragmentation:
    """Per (hook, kind): fragmentation of each triplet, the triplets, a few class maps;
    ``bootstrap``: ``metrics.bootstrap`` of the rows' ``lo``, ``hi`` (module docstring)."""

    hooks: list[str]
    counts: dict[tuple[str, str], np.ndarray]    # (hook, kind) → (T,) float, NaN collinear
    triplets: dict[str, np.ndarray]              # kind → (T, 3) probe rows
    maps: dict[tuple[str, str], np.ndarray]      # (hook, kind) → (keep, R, R) class maps
    positions: dict[str, int] = field(default_factory=dict)
    bootstrap: Any = None

    def rows(self) -> list[dict]:
        """Tidy rows per hook and kind (``scale_a`` = ``full``): ``fragmentation_{kind}`` (the
        mean over the non-collinear triplets, with ``lo``, ``hi``: :meth:`resampled_means`),
        ``fragmentation_{kind}_sd`` (their standard deviation, ddof 0),
        ``fragmentation_{kind}_triplets`` (how many were used); ``null``, ``p`` are empty."""
        from rra.metrics import uncertainty as U

        settings = U.Settings.of(self.bootstrap)
        empty = dict.fromkeys(U.COLUMNS)
        boot, samples = self.resampled_means(settings) if settings.enabled else (None, {})
        out: list[dict] = []
        for h in self.hooks:
            common = dict(hook_a=h, pos_a=self.positions.get(h), scale_a=FULL_SCALE)
            for kind in self.triplets:
                v = self.counts[(h, kind)]
                v = v[np.isfinite(v)]
                name = f"fragmentation_{kind}"
                value = float(v.mean()) if v.size else float("nan")
                stats = U.stats(boot, samples[(h, kind)], value) if boot is not None else empty
                out.append(dict(common, measure=name, value=value, **stats))
                out.append(dict(common, measure=f"{name}_sd",
                                value=float(v.std()) if v.size else float("nan"), **empty))
                out.append(dict(common, measure=f"{name}_triplets", value=float(v.size),
                                **empty))
        return out

    def resampled_means(self, settings: Any) -> tuple[Any, dict[tuple[str, str], np.ndarray]]:
        """(the triplet bootstrap, {(hook, kind): (B,) resampled means}) [ours]: B resamples of
        the triplets stratified by kind (:class:`rra.metrics.uncertainty.RowBootstrap` with
        the kind's position in ``triplets`` as the label, so seeded by ``settings.seed``),
        shared by every hook; a resampled mean is the mean of the drawn triplets' finite
        counts (NaN when every drawn triplet is collinear)."""
        from rra.metrics import uncertainty as U

        settings = U.Settings.of(settings)
        kinds = list(self.triplets)
        sizes = [len(self.triplets[k]) for k in kinds]
        labels = np.repeat(np.arange(len(kinds)), sizes)
        boot = U.RowBootstrap(labels, settings.B, settings.seed, settings.level)
        idx = boot.indices()                               # B × ΣT, each within its kind
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        out: dict[tuple[str, str], np.ndarray] = {}
        for kind, start, size in zip(kinds, starts, sizes):
            local = idx[:, start:start + size] - start     # B × T positions in the kind
            for h in self.hooks:
                drawn = np.asarray(self.counts[(h, kind)], dtype=np.float64)[local]
                finite = np.isfinite(drawn)
                used = finite.sum(axis=1)
                total = np.where(finite, drawn, 0.0).sum(axis=1)
                out[(h, kind)] = np.where(used > 0, total / np.maximum(used, 1), np.nan)
        return boot, out


def draw_triplets(labels: Any, kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` triplets of probe rows of ``kind`` (``same_class`` / ``mixed``) [ours]."""
    y = as_labels(labels, len(np.asarray(labels)))
    count = positive_int(count, "triplets")
    classes, sizes = np.unique(y, return_counts=True)
    out = np.zeros((count, 3), dtype=np.int64)
    if kind == "same_class":
        eligible = classes[sizes >= 3]
        if eligible.size == 0:
            raise ValueError("labels: no class has 3 probe rows, so no same_class triplet "
                             "exists (drop it from kinds)")
        for t in range(count):
            cls = rng.choice(eligible)
            out[t] = rng.choice(np.flatnonzero(y == cls), 3, replace=False)
    elif kind == "mixed":
        if classes.size < 3:
            raise ValueError(f"labels: mixed triplets need 3 classes, the probe has "
                             f"{classes.size} (drop 'mixed' from kinds)")
        for t in range(count):
            for m, cls in enumerate(rng.choice(classes, 3, replace=False)):
                out[t, m] = rng.choice(np.flatnonzero(y == cls))
    else:
        raise ValueError(f"kinds: unknown kind {kind!r}, use {KINDS}")
    return out


def fragmentation(model: "nn.Module", images: Any, labels: Any, hooks: Sequence[str], *,
                  resolution: int = RESOLUTION, triplets: int = TRIPLETS,
                  extend: float = EXTEND, kinds: Sequence[str] = KINDS, seed: int = 0,
                  triplet_rows: Mapping[str, Any] | None = None, keep_maps: int = 4,
                  positions: Mapping[str, int] | None = None, device: Any = "auto",
                  batch_size: int = 500, bootstrap: Any = None) -> Fragmentation:
    """Mean number of class regions on R × R grids over planes through T triplets of probe
    rows, per hook (``input``: the input space) and triplet kind; formulas in the module
    docstring [source: core; ours: per hook].

    ``images``: float N × … network inputs; ``labels``: their classes (to draw triplets);
    ``hooks``: module names or ``input`` in forward order (``pos_a`` = index, or
    ``positions``); ``keep_maps``: class maps kept per (hook, kind) for figures (the first
    triplets). ``triplet_rows``: explicit triplets instead of drawn ones, {name: T × 3 probe
    rows} (the names replace ``kinds``; ``triplets``, ``kinds`` and ``seed`` are then unused).
    Grid points go through the model ``batch_size`` at a time.
    ``bootstrap``: ``metrics.bootstrap`` of the rows' ``lo``, ``hi`` (triplets resampled by kind,
    see the module docstring; ``None``: the defaults; ``{"B": 0}``: null).
    """
    from rra.metrics.uncertainty import Settings

    settings = Settings.of(bootstrap)
    x_all = as_batch(images)
    n = x_all.shape[0]
    y_all = as_labels(labels, n)
    hooks = check_hooks(model, hooks)
    pos = hook_positions(hooks, positions)
    resolution = _check_resolution(resolution)
    extend = _check_extend(extend)
    batch_size = positive_int(batch_size, "batch_size")
    if isinstance(keep_maps, bool) or not isinstance(keep_maps, (int, np.integer)) \
            or keep_maps < 0:
        raise ValueError(f"keep_maps must be a nonnegative integer, got {keep_maps!r}")
    chosen = (_drawn_triplets(y_all, kinds, triplets, seed) if triplet_rows is None
              else _check_triplet_rows(triplet_rows, n))
    rows_used = np.unique(np.concatenate([t.ravel() for t in chosen.values()]))

    counts: dict[tuple[str, str], np.ndarray] = {}
    maps: dict[tuple[str, str], np.ndarray] = {}
    with on_device(model, device) as dev:
        planes = _Planes(resolution, extend, keep_maps, batch_size, dev, x_all[rows_used],
                         {int(r): i for i, r in enumerate(rows_used)})
        for hook in hooks:
            h_used = _hook_outputs(model, planes.x_used, hook, dev, batch_size)
            for kind, trip in chosen.items():
                counts[(hook, kind)], maps[(hook, kind)] = _triplet_counts(model, hook, h_used,
                                                                          trip, planes)
    return Fragmentation(hooks=hooks, counts=counts, triplets=chosen, maps=maps, positions=pos,
                         bootstrap=settings)


def _drawn_triplets(labels: np.ndarray, kinds: Sequence[str] | str, triplets: int,
                    seed: int) -> dict[str, np.ndarray]:
    """``triplets`` triplets per kind, drawn in order of ``kinds`` from one seeded generator."""
    triplets = positive_int(triplets, "triplets")
    if isinstance(kinds, str):
        kinds = [kinds]
    kinds = list(dict.fromkeys(kinds))
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    rng = np.random.default_rng(seed)
    return {kind: draw_triplets(labels, kind, triplets, rng) for kind in kinds}


@dataclass(frozen=True)
class _Planes:
    """The grid settings of one :func:`fragmentation` call, its device, and the input rows
    its triplets use (``x_used``; ``where``: probe row → index in ``x_used``)."""

    resolution: int
    extend: float
    keep_maps: int
    batch_size: int
    dev: Any
    x_used: "torch.Tensor"
    where: dict[int, int]


def _triplet_counts(model: "nn.Module", hook: str, h_used: "torch.Tensor", trip: np.ndarray,
                    planes: _Planes) -> tuple[np.ndarray, np.ndarray]:
    """Fragmentation of each triplet's plane at ``hook`` (NaN when collinear) and the first
    ``keep_maps`` class maps."""
    vals = np.full(len(trip), np.nan)
    kept = []
    for t, (i, j, k) in enumerate(trip):
        a, b, c = (h_used[planes.where[int(r)]] for r in (i, j, k))
        coords = plane_coordinates(a.numpy(), b.numpy(), c.numpy(), planes.resolution,
                                   planes.extend)
        if coords is None:
            continue
        xs = tuple(planes.x_used[planes.where[int(r)]] for r in (i, j, k))
        L = _class_map(model, hook, (a, b, c), xs, coords, planes.dev, planes.batch_size)
        vals[t] = count_regions(L)
        if len(kept) < planes.keep_maps:
            kept.append(L)
    return vals, (np.stack(kept) if kept else
                  np.zeros((0, planes.resolution, planes.resolution), dtype=np.int64))


def fragmentation_rows(model: "nn.Module", images: Any, labels: Any, hooks: Sequence[str],
                       **kwargs: Any) -> list[dict]:
    """The rows of :func:`fragmentation` (same arguments; see :meth:`Fragmentation.rows`)."""
    return fragmentation(model, images, labels, hooks, **kwargs).rows()


def head_logits(model: "nn.Module", hook: str, h: "torch.Tensor", x_base: "torch.Tensor"
                ) -> "torch.Tensor":
    """Logits of the model run on ``x_base`` with hook ``hook``'s output replaced by ``h``
    (the head after the hook; ``input``: the model on ``h``). No gradient is kept."""
    import torch

    with torch.inference_mode():
        if hook == INPUT_HOOK:
            return model(h)
        holder = {"value": h, "calls": 0}
        with substitute(model, hook, holder):
            z = model(x_base)
        if holder["calls"] != 1:
            raise ValueError(f"hook {hook!r} was called {holder['calls']} times per forward "
                             "pass: its output cannot be substituted unambiguously")
        return z


def _hook_outputs(model, x, hook, dev, batch_size) -> "torch.Tensor":
    """Hook outputs of the rows of x (CPU float32, original per-row shape)."""
    import torch

    if hook == INPUT_HOOK:
        return x
    parts = []
    runner = HookRunner(model, [hook])
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            runner.run(x[s:s + batch_size].to(dev),
                       lambda h, out: parts.append(out.float().cpu()))
    return torch.cat(parts)


def _class_map(model, hook, hs, xs, coords, dev, batch_size) -> np.ndarray:
    """Predicted class at every grid point of the plane through the hook outputs ``hs``."""
    import torch

    alpha, beta = coords
    shape = alpha.shape
    al = torch.from_numpy(alpha.ravel()).to(dev, torch.float32)
    be = torch.from_numpy(beta.ravel()).to(dev, torch.float32)
    a, b, c = (v.to(dev) for v in hs)
    xa, xb, xc = (v.to(dev) for v in xs)
    view_h, view_x = (-1,) + (1,) * a.ndim, (-1,) + (1,) * xa.ndim
    out = []
    for s in range(0, al.numel(), batch_size):
        p, q = al[s:s + batch_size], be[s:s + batch_size]
        h = a + p.view(view_h) * (b - a) + q.view(view_h) * (c - a)
        x = h if hook == INPUT_HOOK else (xa + p.view(view_x) * (xb - xa)
                                          + q.view(view_x) * (xc - xa))
        out.append(head_logits(model, hook, h, x).argmax(1).cpu())
    return torch.cat(out).numpy().reshape(shape)


def _check_triplet_rows(triplet_rows: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    if not isinstance(triplet_rows, Mapping) or not triplet_rows:
        raise ValueError("triplet_rows must be a non-empty mapping {name: T × 3 probe rows}")
    out = {}
    for name, rows in triplet_rows.items():
        arr = np.asarray(rows)
        if not isinstance(name, str) or not name:
            raise ValueError(f"triplet_rows: names must be non-empty strings, got {name!r}")
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 1 \
                or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"triplet_rows[{name!r}] must be a T × 3 integer array (T ≥ 1), "
                             f"got shape {arr.shape} of {arr.dtype}")
        if arr.min() < 0 or arr.max() >= n:
            raise ValueError(f"triplet_rows[{name!r}]: rows must lie in 0..{n - 1}")
        out[name] = arr.astype(np.int64)
    return out


def _check_resolution(resolution: int) -> int:
    r = positive_int(resolution, "resolution")
    if r < 2:
        raise ValueError(f"resolution must be at least 2 (grid points per axis), got {r}")
    return r


def _check_extend(extend: float) -> float:
    if isinstance(extend, bool) or not isinstance(extend, (int, float)) \
            or not np.isfinite(extend) or extend < 0:
        raise ValueError(f"extend must be a finite number ≥ 0, got {extend!r}")
    return float(extend)
