"""Input-space views: saliency maps, first-layer filter grids, per-hook mean activation maps
(seed-measures §4).

Saliency [source: Simonyan, Vedaldi & Zisserman 2013, "Deep Inside Convolutional Networks",
§3.1]: for an image x (C × H × W, the normalised network input) and class c with score S_c (the
logit, before the softmax), the map

    M_c[h, w] = max_ch |∂S_c / ∂x[ch, h, w]|,

for c = the true class and c = the predicted class. Scalar per image [ours]: the share of the
saliency mass in the top ``top`` (5 %) of pixels,

    share = Σ_{p ∈ top m} M[p] / Σ_p M[p],   m = ⌈top · H · W⌉ (at least one pixel),

1 for a single hot pixel, ``top`` (→ m/HW) for a uniform map; NaN for an all-zero map.
Plain autograd, not captum: the gradient of one logit per row is a few lines
(``torch.autograd.grad`` of Σ_i S_{c_i}(x_i), which in eval mode is row i's own gradient), where
captum would add a dependency for the same call.

Uncertainty and chance of the share rows [ours] (:mod:`rra.layers.intervals`; methods.md §4):
``lo``, ``hi`` from the class-stratified bootstrap of the per-image shares (the mean over the
images with a defined share, Σ_i W[b, i] s_i f_i / Σ_i W[b, i] f_i; per class over the class's
images). ``null`` = m / HW, the share of a flat map: the least any map can have (the top m of
HW values hold at least m/HW of the mass), i.e. "no concentration at all". It is a reference,
not a shuffled-row chance level: the share depends only on the multiset of a map's values, so
shuffling pixels (or pairing maps with other images) leaves it unchanged and there is no
permutation null. ``p`` stays null: every map but a flat one lies above m/HW, so a test of
value > m/HW would be trivially significant and say nothing (and the bootstrap sd is not an sd
under a null). B = 0: the four columns null.

First-layer filters: the weights of the first ``Conv2d`` (module order), out × in × kh × kw,
scaled for display [ours]: ``"filter"`` maps each filter's min..max to 0..1 (a constant filter
to 0.5); ``"global"`` maps w ↦ (w / max|w| + 1) / 2 over all filters (0 → 0.5, relative
magnitudes kept). :func:`filter_grid` tiles them into one image (RGB tiles for 3 input
channels, else one grey tile per input channel).

Mean activation maps [ours]: for a hook with an N × C × H' × W' output, the mean over the C
channels per image, an H' × W' map (signed); hooks without a spatial map (N × F) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from rra.layers.common import (FULL_SCALE, INPUT_HOOK, HookRunner, as_batch, as_labels,
                              check_hooks, on_device, positive_int)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rra.metrics.uncertainty import Settings

TOP = 0.05
NORMALISE = ("filter", "global")


def top_share(maps: Any, top: float = TOP) -> np.ndarray:
    """Share of each map's mass in its top ⌈top · H · W⌉ pixels (N × H × W nonnegative maps →
    N values; NaN for an all-zero map) [ours]."""
    top = _check_top(top)
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"maps must be N × H × W, got shape {m.shape}")
    if m.size and m.min() < 0:
        raise ValueError("maps must be nonnegative (saliency magnitudes)")
    flat = m.reshape(m.shape[0], -1)
    k = max(1, math.ceil(top * flat.shape[1] - 1e-9))
    top_mass = -np.sort(-flat, axis=1)[:, :k].sum(1)
    total = flat.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, top_mass / total, np.nan)


@dataclass
class Saliency:
    """Saliency maps of the true and the predicted class, per image, and their top shares."""

    true: np.ndarray         # (n, H, W) float32: max_ch |∂S_y/∂x|
    pred: np.ndarray         # (n, H, W) float32: max_ch |∂S_ŷ/∂x|
    labels: np.ndarray       # (n,) true classes
    predicted: np.ndarray    # (n,) predicted classes
    share_true: np.ndarray   # (n,) top-``top`` mass share of ``true``
    share_pred: np.ndarray   # (n,)
    top: float

    def rows(self, bootstrap: "Mapping[str, Any] | Settings | None" = None) -> list[dict]:
        """Tidy rows (``hook_a`` = ``input``, ``pos_a`` = 0, ``scale_a`` = ``full``):
        ``saliency_top{p}pct_share_true`` / ``_pred`` (p = 100·top), the mean over all images
        and, with ``class`` (the true class), over the images of each class; with ``lo``,
        ``hi`` (class-stratified bootstrap of the per-image shares, ``bootstrap`` =
        ``metrics.bootstrap``, None: the defaults, B = 0: null) and ``null`` = m / HW, the
        share of a flat map (``p`` null; module docstring)."""
        from rra.layers.intervals import (NONE, columns, resampled_class_means, resampled_means,
                                          row_bootstrap)

        name = f"saliency_top{100 * self.top:g}pct_share"
        common = dict(hook_a=INPUT_HOOK, pos_a=0, scale_a=FULL_SCALE)
        classes = np.unique(self.labels)
        boot = row_bootstrap(self.labels, self.labels.size, bootstrap)
        out: list[dict] = []
        for which, v in (("true", self.share_true), ("pred", self.share_pred)):
            values = [_nanmean(v), *(_nanmean(v[self.labels == c]) for c in classes)]
            unc = [dict(NONE) for _ in values]
            if boot is not None:
                samples = np.concatenate([resampled_means(boot, v)[:, None],
                                          resampled_class_means(boot, v)], axis=1)
                unc = columns(boot, samples, values)
                for u in unc:
                    u["null"] = self.flat_share
            out.append(dict(common, measure=f"{name}_{which}", value=values[0], **unc[0]))
            for c, value, u in zip(classes, values[1:], unc[1:]):
                out.append(dict(common, measure=f"{name}_{which}", **{"class": int(c)},
                                value=value, **u))
        return out

    @property
    def flat_share(self) -> float:
        """The top share of a flat (uniform) map, m / HW with m = ⌈top · H · W⌉: the least a
        map can have (the chance level of the table)."""
        hw = int(np.prod(self.true.shape[1:]))
        return max(1, math.ceil(self.top * hw - 1e-9)) / hw


def saliency_maps(model: "nn.Module", images: Any, labels: Any, *, top: float = TOP,
                  device: Any = "auto", batch_size: int = 256) -> Saliency:
    """Saliency maps max_ch |∂S_c/∂x| for the true and the predicted class of every image
    [source: Simonyan et al. 2013] and their top-``top`` mass shares [ours].

    ``images``: float N × C × H × W network inputs; ``labels``: N true classes. One forward and
    two backward passes per batch of ``batch_size`` images.
    """
    import torch

    x_all = as_batch(images, ndim=4)
    n = x_all.shape[0]
    y_all = as_labels(labels, n)
    top = _check_top(top)
    batch_size = positive_int(batch_size, "batch_size")
    true = np.zeros((n, *x_all.shape[2:]), dtype=np.float32)
    pred_maps = np.zeros_like(true)
    predicted = np.zeros(n, dtype=np.int64)
    with on_device(model, device) as dev, torch.enable_grad():
        for s in range(0, n, batch_size):
            x = x_all[s:s + batch_size].to(dev).requires_grad_(True)
            y = torch.from_numpy(y_all[s:s + batch_size]).to(dev)
            z = model(x)
            if z.ndim != 2 or z.shape[0] != x.shape[0]:
                raise ValueError(f"model output must be B × classes logits, got shape "
                                 f"{tuple(z.shape)}")
            if int(y.max()) >= z.shape[1]:
                raise ValueError(f"labels: class {int(y.max())} out of range for a model with "
                                 f"{z.shape[1]} outputs")
            p = z.detach().argmax(1)
            rows = torch.arange(x.shape[0], device=dev)
            g_true, = torch.autograd.grad(z[rows, y].sum(), x, retain_graph=True)
            g_pred, = torch.autograd.grad(z[rows, p].sum(), x)
            sl = slice(s, s + x.shape[0])
            true[sl] = g_true.abs().amax(1).cpu().numpy()
            pred_maps[sl] = g_pred.abs().amax(1).cpu().numpy()
            predicted[sl] = p.cpu().numpy()
    return Saliency(true=true, pred=pred_maps, labels=y_all, predicted=predicted,
                    share_true=top_share(true, top), share_pred=top_share(pred_maps, top),
                    top=top)


def saliency_rows(model: "nn.Module", images: Any, labels: Any, *, top: float = TOP,
                  device: Any = "auto", batch_size: int = 256,
                  bootstrap: "Mapping[str, Any] | Settings | None" = None) -> list[dict]:
    """The scalar rows of :func:`saliency_maps` (see :meth:`Saliency.rows`; ``bootstrap``:
    ``metrics.bootstrap``)."""
    return saliency_maps(model, images, labels, top=top, device=device,
                         batch_size=batch_size).rows(bootstrap)


def first_layer_filters(model: "nn.Module", layer: str | None = None,
                        normalise: str = "filter") -> np.ndarray:
    """Weights of the first ``Conv2d`` (or of module ``layer``), out × in × kh × kw, scaled to
    0..1 for display (``normalise``: ``"filter"`` per-filter min–max, ``"global"`` zero at 0.5
    and ±max|w| at 0/1) [ours]."""
    from torch import nn

    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
    if layer is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise ValueError("the model has no Conv2d: pass layer= naming a convolution")
    else:
        try:
            conv = model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"layer {layer!r}: no such module in the model") from err
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"layer {layer!r} is a {type(conv).__name__}, not a Conv2d")
    w = conv.weight.detach().double().cpu().numpy()
    if normalise == "global":
        scale = np.abs(w).max()
        return ((w / scale + 1) / 2 if scale > 0 else np.full_like(w, 0.5)).astype(np.float32)
    flat = w.reshape(w.shape[0], -1)
    lo, hi = flat.min(1), flat.max(1)
    span = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(span[:, None] > 0, (flat - lo[:, None]) / span[:, None], 0.5)
    return out.reshape(w.shape).astype(np.float32)


def filter_grid(filters: Any, ncols: int | None = None, pad: int = 1,
                fill: float = 1.0) -> np.ndarray:
    """Tile out × in × kh × kw filters into one image with ``pad`` pixels of ``fill`` between
    tiles. in = 3: RGB tiles, ``ncols`` (default ⌈√out⌉) per row → H × W × 3; in = 1: grey
    tiles likewise → H × W; other in: one row per filter, one grey tile per input channel."""
    f = np.asarray(filters, dtype=np.float32)
    if f.ndim != 4:
        raise ValueError(f"filters must be out × in × kh × kw, got shape {f.shape}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a nonnegative integer, got {pad!r}")
    n_out, n_in, kh, kw = f.shape
    if n_in in (1, 3):
        ncols = math.ceil(math.sqrt(n_out)) if ncols is None else positive_int(ncols, "ncols")
        tiles = f.transpose(0, 2, 3, 1)  # out × kh × kw × in
        nrows = math.ceil(n_out / ncols)
    else:
        if ncols is not None:
            raise ValueError(f"ncols applies to 1 or 3 input channels only (got {n_in}): the "
                             "grid has one row per filter, one column per input channel")
        tiles = f.reshape(n_out * n_in, kh, kw, 1)
        nrows, ncols = n_out, n_in
    depth = tiles.shape[-1]
    grid = np.full((nrows * (kh + pad) - pad, ncols * (kw + pad) - pad, depth), fill,
                   dtype=np.float32)
    for t in range(tiles.shape[0]):
        r, c = divmod(t, ncols)
        grid[r * (kh + pad):r * (kh + pad) + kh, c * (kw + pad):c * (kw + pad) + kw] = tiles[t]
    return grid[..., 0] if depth == 1 else grid


def mean_activation_maps(model: "nn.Module", images: Any, hooks: Sequence[str], *,
                         device: Any = "auto", batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per hook with an N × C × H' × W' output: the channel mean per image, (n, H', W') float32
    [ours]; hooks with flat outputs are left out. ``input`` maps the images themselves."""
    x_all = as_batch(images)
    hooks = check_hooks(model, hooks)
    batch_size = positive_int(batch_size, "batch_size")
    parts: dict[str, list[np.ndarray]] = {h: [] for h in hooks}

    def keep(hook: str, out: "torch.Tensor") -> None:
        if out.ndim == 4:
            parts[hook].append(out.float().mean(1).cpu().numpy())

    runner = HookRunner(model, hooks)
    with on_device(model, device, inference=True) as dev:
        for s in range(0, x_all.shape[0], batch_size):
            runner.run(x_all[s:s + batch_size].to(dev), keep)
    return {h: np.concatenate(p) for h, p in parts.items() if p}


def _check_top(top: float) -> float:
    if isinstance(top, bool) or not isinstance(top, (int, float)) or not 0 < top <= 1:
        raise ValueError(f"top must be a fraction in (0, 1], got {top!r}")
    return float(top)


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
