"""Translation sensitivity maps per hook (seed-measures.md §1, experiment E7).

For every shift d = (dx, dy) ∈ [−S, S]² the probe image x is translated with fill,

    x'_d[c, i, j] = x[c, i − dy, j − dx]   where 0 ≤ i − dy < H and 0 ≤ j − dx < W,
                  = fill[c]                 elsewhere,

(positive dx moves the content right, positive dy down), and each hook's output h(·) at each
pooled scale (:func:`rra.embed.pool.pool_embedding`: scale 1 = global average pool, ``full`` =
the flattened map) is compared with that of x [source: translation-sensitivity maps with cosine
similarity; S = 4 at 28–32 px ours]:

    cos_map(d)  = (1/n) Σ_x cos(h(x), h(x'_d)),
    rel_map(d)  = (1/|X+|) Σ_{x ∈ X+} ‖h(x) − h(x'_d)‖₂ / ‖h(x)‖₂,   X+ = {x : ‖h(x)‖₂ > 0}.

Undefined cases [ours]: cos(u, v) = u·v / (‖u‖‖v‖) with ‖·‖ the float32 Euclidean norm; if both
vectors are zero, cos = 1 (nothing changed: the hook is blind to both images); if exactly one is
zero, cos = 0 (no shared direction). The relative change is undefined for ‖h(x)‖ = 0, so those
probe images are left out of rel_map — the set X+ depends on x only, so every shift of a
(hook, scale) averages the same images — and their share is reported as
``translation_zero_norm_fraction``; rel_map is NaN when X+ is empty.

Summaries [source]: the mean of each map over the shifts without (0, 0), and the radial profile
p(r) = mean of the map over {d : max(|dx|, |dy|) = r}, r = 0 … S (r = 0 is the (0, 0) entry:
cos 1, change 0 up to rounding).

Fill [ours]: "zero fill" is taken as a *black pixel* (raw value 0), whose value in the
normalised input is −mean_c / std_c per channel (:func:`black_fill`), not 0 of normalised space
(the mean colour). Reasons: (1) this is what the training augmentation pads with
(``rra.train.augment``, ``standard``: zeros in raw pixels, as torchvision's ``RandomCrop``
before ``Normalize``), so for augmented models the translated probe is what training showed;
(2) the MNIST background is black, so a translated digit is an ordinary digit image, whereas a
normalised 0 would paint grey border strips (0.13 of full scale) the model never saw. The batch
passed in is already normalised and does not know the dataset's mean/std, so ``fill`` is a
required argument: ``fill=black_fill(info)`` (or ``0.0`` for normalised zero).

Cost: (2S + 1)² + 1 forward passes of the probe (81 + 1 at S = 4); shifted copies are stacked
so that one forward pass holds up to ``batch_size`` rows. Memory: the pooled reference outputs
of one image batch for every (hook, scale), one forward batch, and the per-image values (cos,
rel and their chance pairs: 4 × (2S + 1)² × n float32 per (hook, scale)). The values are a
function of the model and the probe (up to the device's float summation order).

Uncertainty and chance [ours] (:mod:`rra.layers.intervals`; methods.md §4 and §8), with
``bootstrap`` (``metrics.bootstrap``; B = 0: the four columns null, the values unchanged):

- interval: the class-stratified bootstrap over the probe images (``labels``) of the
  per-image values cos_i(d), rel_i(d): cos_map*(d) = Σ_i W[b, i] cos_i(d) / n,
  rel_map*(d) = Σ_{i ∈ X+} W[b, i] rel_i(d) / Σ_{i ∈ X+} W[b, i]; the means and radial
  profiles are the same averages over shifts of the resampled maps;
  ``translation_zero_norm_fraction`` is resampled as a share (no chance level).
- chance level: a **shuffled row correspondence**, the same statistic between h(x_i) and the
  translated *other* image h(x'_{π(i), d}):

      null_cos(d) = (1/n) Σ_i cos(h(x_i), h(x'_{π(i), d})),
      null_rel(d) = (1/|X+|) Σ_{i ∈ X+} ‖h(x_i) − h(x'_{π(i), d})‖₂ / ‖h(x_i)‖₂,

  i.e. how similar the translate of another image is; the means and radial profiles average
  it over the same shifts. π pairs each image with the next one in its image batch: the
  images are taken in a seeded random order (``default_rng([seed, 31])``) and cut into
  ⌈n / batch_size⌉ nearly equal batches of at least 2 images, and row j of a batch is compared
  with the shifted outputs of row j + 1 (the last with the first). So π has no fixed point
  and, the order being uniformly random, each image's partner is uniformly distributed over
  the other n − 1 images; the pairs reuse the shifted outputs of the batch loop (no extra
  forward pass: one dot product per pair, cos = a·b / (‖a‖ ‖b‖) and
  ‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b in float64 scalars, :func:`_pair_cos_rel`). One π, not
  ``permutations`` of them (each would cost that pass again); its own estimation error enters
  the sd, sd = σ̂ √(1/n + 1/n) (:func:`rra.layers.intervals.mc_nulls`, σ̂ the sd of the
  per-image null scores; n → |X+| for the relative change).
- p: cosine one-sided "more similar than for another image" (value > null); relative change
  one-sided "less change than for another image" (value < null). p ≥ 0.05 is drawn as
  indistinguishable from chance. The image order decides only which images share a forward
  pass: the per-image values are stored by row and summed in row order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from rra.embed.pool import parse_scales, pool_embedding, scale_name
from rra.embed.dump import _plan
from rra.layers.common import (HookRunner, as_batch, as_labels, check_hooks, hook_positions,
                              on_device, positive_int)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rra.metrics.uncertainty import RowBootstrap, Settings

DEFAULT_MAX_SHIFT = 4
DEFAULT_SCALES: tuple[object, ...] = (1, "full")
MEASURES = ("translation_cosine", "translation_rel_change", "translation_cosine_mean",
            "translation_rel_change_mean", "translation_cosine_radial",
            "translation_rel_change_radial", "translation_zero_norm_fraction")


def black_fill(info: Any) -> tuple[float, ...]:
    """The normalised value of a black (raw 0) pixel per channel, −mean_c / std_c, for a
    :class:`rra.data.DatasetInfo` (or anything with per-channel ``mean`` and ``std``)."""
    mean = getattr(info, "mean", None)
    std = getattr(info, "std", None)
    if mean is None or std is None:
        raise ValueError(f"info must have per-channel 'mean' and 'std' (a DatasetInfo), "
                         f"got {type(info).__name__}")
    if len(mean) != len(std) or any(float(s) <= 0 for s in std):
        raise ValueError(f"info: mean {tuple(mean)} and std {tuple(std)} must have one value "
                         "per channel, std positive")
    return tuple(float(np.float32(-float(m)) / np.float32(float(s))) for m, s in zip(mean, std))


def shift_grid(max_shift: int) -> list[tuple[int, int]]:
    """All shifts (dx, dy) ∈ [−S, S]², dy-major (dy = −S first, then dx = −S … S)."""
    s = _check_max_shift(max_shift)
    return [(dx, dy) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]


def shift_stack(x: "torch.Tensor", shifts: Sequence[tuple[int, int]],
                fill: "torch.Tensor | float | Sequence[float]") -> "torch.Tensor":
    """Translated copies of a batch, shift-major: row ``k·B + i`` is image i under shifts[k].

    ``x``: B × C × H × W; ``fill``: a scalar or one value per channel (in the units of ``x``).
    x'[c, i, j] = x[c, i − dy, j − dx] inside the image, fill[c] elsewhere; a shift of H or
    more rows (W columns) leaves only fill.
    """
    import torch

    if x.ndim != 4:
        raise ValueError(f"x must be B × C × H × W, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    f = _fill_tensor(fill, c).to(device=x.device, dtype=x.dtype)
    out = f.view(1, 1, c, 1, 1).expand(len(shifts), b, c, h, w).clone()
    for k, (dx, dy) in enumerate(shifts):
        dx, dy = int(dx), int(dy)
        if abs(dx) >= w or abs(dy) >= h:
            continue
        out[k, :, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[:, :, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out.reshape(len(shifts) * b, c, h, w)


def translation_sensitivity(model: "nn.Module", probe: Any, hooks: Sequence[str], *,
                            fill: "float | Sequence[float] | torch.Tensor",
                            max_shift: int = DEFAULT_MAX_SHIFT,
                            scales: Iterable[object] = DEFAULT_SCALES, device: Any = "auto",
                            batch_size: int = 256,
                            positions: Mapping[str, int] | None = None,
                            labels: Any = None,
                            bootstrap: "Mapping[str, Any] | Settings | None" = None
                            ) -> list[dict]:
    """Translation sensitivity maps and their summaries for every hook and scale (module doc).

    ``probe``: normalised float N × C × H × W images; ``hooks``: module names in forward order
    (``input`` first allowed); ``fill``: the translated-in value per channel in normalised
    units (:func:`black_fill`); ``max_shift`` S with 1 ≤ S < min(H, W); ``scales``: pooled
    scales (an int scale applies to maps no smaller than it, vectors have only ``full``);
    ``batch_size``: rows per forward pass (image batches of about min(n, batch_size) images,
    at least 2, each with ⌊batch_size / images⌋ shifts stacked per pass); ``positions``:
    ``pos_a`` per hook (default: the index in ``hooks``); ``labels``: the images' classes, the
    strata of the bootstrap (None: one stratum); ``bootstrap``: ``metrics.bootstrap`` (None:
    the defaults; ``B`` = 0: no intervals or chance levels).

    Returns tidy rows (``hook_a``, ``pos_a``, ``scale_a``, ``value``, ``lo``, ``hi``,
    ``null``, ``p`` and): ``translation_cosine`` and ``translation_rel_change`` with ``dx``,
    ``dy`` (the maps); ``translation_cosine_mean`` and ``translation_rel_change_mean`` (over
    d ≠ (0, 0)); ``translation_cosine_radial`` and ``translation_rel_change_radial`` with
    ``radius``; ``translation_zero_norm_fraction`` (share of probe images with h(x) = 0).
    """
    from rra.layers.intervals import row_bootstrap
    from rra.metrics.uncertainty import Settings

    x_all = as_batch(probe, "probe", ndim=4)
    n, c, h, w = x_all.shape
    hook_list = check_hooks(model, hooks)
    pos = hook_positions(hook_list, positions)
    batch_size = positive_int(batch_size, "batch_size")
    s = _check_max_shift(max_shift, h, w)
    scale_list = parse_scales(scales)
    fill_t = _fill_tensor(fill, c)
    shifts = shift_grid(s)
    settings = Settings.of(bootstrap)
    boot = row_bootstrap(None if labels is None else as_labels(labels, n), n, settings)
    batches = image_batches(n, batch_size, settings.seed)
    with on_device(model, device, inference=True) as dev:
        per_image = _shift_values(model, x_all, hook_list, scale_list, shifts, fill_t.to(dev),
                                  batch_size, batches, pair=boot is not None and n > 1,
                                  dev=dev)
    return _translation_rows(per_image, shifts, s, n, pos, boot)


def image_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The image batches of :func:`translation_sensitivity`: the n rows in a seeded random
    order (``default_rng([seed, 31])``) cut into ⌈n / min(n, batch_size)⌉ nearly equal parts,
    fewer where a part would hold a single image (n ≥ 2), so that every image has a partner
    in its batch for the chance level."""
    from rra.layers.intervals import ORDER_STREAM

    order = np.random.default_rng([int(seed), ORDER_STREAM]).permutation(n)
    parts = -(-n // min(n, batch_size))
    if n >= 2 and n // parts < 2:
        parts = max(1, n // 2)
    return list(np.array_split(order, parts))


@dataclass
class _ShiftValues:
    """Per-image values per (hook, scale) in ``keys`` order, shifts × n float32 (rows in probe
    order): cos and rel (0 where ‖h(x)‖ = 0), with ``pair`` also cos and rel against the shifted
    outputs of the batch partner (the chance level); ``nonzero`` marks ‖h(x)‖ > 0; ``ref``
    holds the current image batch's pooled reference outputs h(x) and their norms, ``rows``
    its probe rows."""

    plan: dict[str, list[Any]]
    keys: list[tuple[str, Any]]
    pair: bool
    cos: dict[tuple[str, Any], "torch.Tensor"]
    rel: dict[tuple[str, Any], "torch.Tensor"]
    cos0: dict[tuple[str, Any], "torch.Tensor"]
    rel0: dict[tuple[str, Any], "torch.Tensor"]
    nonzero: dict[tuple[str, Any], "torch.Tensor"]
    ref: dict[tuple[str, Any], tuple["torch.Tensor", "torch.Tensor"]] = field(default_factory=dict)
    rows: "torch.Tensor | None" = None

    @classmethod
    def empty(cls, plan: dict[str, list[Any]], hooks: list[str], n_shifts: int, n: int,
              pair: bool, dev: Any) -> "_ShiftValues":
        import torch

        keys = [(hk, sc) for hk in hooks for sc in plan[hk]]

        def new(on: bool = True):
            return {k: torch.zeros((n_shifts, n) if on else (0, n), dtype=torch.float32,
                                   device=dev) for k in keys}

        return cls(plan, keys, pair, cos=new(), rel=new(), cos0=new(pair), rel0=new(pair),
                   nonzero={k: torch.zeros(n, dtype=torch.bool, device=dev) for k in keys})

    def keep(self, hook: str, out: "torch.Tensor") -> None:
        """HookRunner callback on the unshifted batch: store h(x) per scale, mark ‖h(x)‖ > 0."""
        import torch

        for sc in self.plan[hook]:
            r = pool_embedding(out, sc).clone()  # a later in-place op cannot alter it
            rn = torch.linalg.vector_norm(r, dim=1)
            self.ref[(hook, sc)] = (r, rn)
            self.nonzero[(hook, sc)][self.rows] = rn > 0

    def compare(self, hook: str, out: "torch.Tensor", *, k0: int, m: int) -> None:
        """HookRunner callback on ``m`` stacked shifts from shift ``k0``: each image's cos and
        rel, and (``pair``) those of h(x_j) against the shifted output of image j + 1."""
        for sc in self.plan[hook]:
            r, rn = self.ref[(hook, sc)]
            p = pool_embedding(out, sc).view(m, r.shape[0], -1)
            unit = _unit(p)
            cos, rel = _cos_rel(p, r, rn, unit)
            self.cos[(hook, sc)][k0:k0 + m, self.rows] = cos.float()
            self.rel[(hook, sc)][k0:k0 + m, self.rows] = rel.float()
            if self.pair:  # column k: p_k against r_{k−1}; rolled back: image j against p_{j+1}
                cos, rel = _pair_cos_rel(p, unit[0], r.roll(1, dims=0), rn.roll(1, dims=0))
                self.cos0[(hook, sc)][k0:k0 + m, self.rows] = cos.roll(-1, dims=1).float()
                self.rel0[(hook, sc)][k0:k0 + m, self.rows] = rel.roll(-1, dims=1).float()


def _shift_values(model: "nn.Module", x_all: "torch.Tensor", hooks: list[str],
                  scales: list[Any], shifts: list[tuple[int, int]], fill: "torch.Tensor",
                  batch_size: int, batches: list[np.ndarray], *, pair: bool,
                  dev: Any) -> _ShiftValues:
    """The forward passes: per image batch (:func:`image_batches`), one pass of the images
    (:meth:`_ShiftValues.keep`), then their shifted copies, ⌊batch_size / images⌋ shifts per
    pass (:meth:`_ShiftValues.compare`)."""
    import torch

    n = x_all.shape[0]
    per_pass = max(1, batch_size // max(len(b) for b in batches))
    runner = HookRunner(model, hooks)
    plan = _plan(runner.shapes(x_all[:1].to(dev)), scales)
    values = _ShiftValues.empty(plan, hooks, len(shifts), n, pair, dev)
    for rows in batches:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        xb = x_all[index].to(dev)
        values.ref, values.rows = {}, index.to(dev)
        runner.run(xb, values.keep)
        for k0 in range(0, len(shifts), per_pass):
            chunk = shifts[k0:k0 + per_pass]
            runner.run(shift_stack(xb, chunk, fill), partial(values.compare, k0=k0,
                                                              m=len(chunk)))
    return values


def _summary_weights(shifts: list[tuple[int, int]], max_shift: int) -> np.ndarray:
    """Shifts × (1 + S + 1): the averaging weights of the map mean over d ≠ (0, 0) (column 0)
    and of the radial profile r = 0 … S (columns 1 …): a summary = map @ weights."""
    radius = np.abs(np.array(shifts)).max(axis=1)
    groups = [radius > 0] + [radius == r for r in range(max_shift + 1)]
    return np.stack([g / g.sum() for g in groups], axis=1)


def _translation_rows(values: _ShiftValues, shifts: list[tuple[int, int]], max_shift: int,
                      n: int, pos: Mapping[str, int], boot: "RowBootstrap | None") -> list[dict]:
    """Tidy rows per (hook, scale): both maps, their means over d ≠ (0, 0), their radial
    profiles and the zero-norm share, each with its four uncertainty columns (see
    :func:`translation_sensitivity`)."""
    from rra.layers.intervals import NONE, columns, mc_nulls, resampled_means

    rows: list[dict] = []
    radius = np.abs(np.array(shifts)).max(axis=1)
    off = radius > 0
    n_shifts = len(shifts)
    A = np.concatenate([np.eye(n_shifts), _summary_weights(shifts, max_shift)], axis=1)
    for hk, sc in values.keys:
        key = (hk, sc)
        common = dict(hook_a=hk, pos_a=pos[hk], scale_a=scale_name(sc))
        mask = values.nonzero[key].cpu().numpy()
        nz = int(mask.sum())
        cos = values.cos[key].cpu().numpy().astype(np.float64).T          # n × shifts
        rel = values.rel[key].cpu().numpy().astype(np.float64).T
        maps = {"translation_cosine": cos.sum(0) / n,
                "translation_rel_change": (rel[mask].sum(0) / nz if nz
                                           else np.full(n_shifts, np.nan))}
        summary = {name: np.concatenate([m, [m[off].mean()],
                                         [m[radius == r].mean() for r in range(max_shift + 1)]])
                   for name, m in maps.items()}
        unc = {name: [dict(NONE) for _ in range(A.shape[1])] for name in maps}
        zero = dict(NONE)
        if boot is not None:
            per_image = {"translation_cosine": (cos, np.ones(n, bool)),
                         "translation_rel_change": (rel, mask)}
            pairs = {"translation_cosine": values.cos0[key], "translation_rel_change":
                     values.rel0[key]}
            for name, (v, rows_in) in per_image.items():
                samples = resampled_means(boot, np.where(rows_in[:, None], v, np.nan)) @ A
                nulls = sds = None
                if values.pair:
                    scores = pairs[name].cpu().numpy().astype(np.float64).T[rows_in] @ A
                    nulls, sds = mc_nulls(scores, int(rows_in.sum()))
                unc[name] = columns(boot, samples, summary[name], nulls, sds,
                                    less=name == "translation_rel_change")
            zero = columns(boot, resampled_means(boot, (~mask).astype(np.float64))[:, None],
                           [(n - nz) / n])[0]
        for name in maps:
            for j, (dx, dy) in enumerate(shifts):
                rows.append(dict(common, measure=name, dx=int(dx), dy=int(dy),
                                 value=float(summary[name][j]), **unc[name][j]))
        for name in maps:
            rows.append(dict(common, measure=f"{name}_mean", value=float(summary[name][n_shifts]),
                             **unc[name][n_shifts]))
        for name in maps:
            for r in range(max_shift + 1):
                j = n_shifts + 1 + r
                rows.append(dict(common, measure=f"{name}_radial", radius=r,
                                 value=float(summary[name][j]), **unc[name][j]))
        rows.append(dict(common, measure="translation_zero_norm_fraction",
                         value=float((n - nz) / n), **zero))
    return rows


def _unit(p: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Norms (m × b) and unit vectors (m × b × F, 0 for a zero vector) of m × b × F outputs."""
    import torch

    pn = torch.linalg.vector_norm(p, dim=2)
    return pn, p / pn.clamp_min(torch.finfo(p.dtype).tiny).unsqueeze(2)


def _cos_rel(p: "torch.Tensor", r: "torch.Tensor", rn: "torch.Tensor",
             unit: tuple["torch.Tensor", "torch.Tensor"] | None = None
             ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per (shift, image): cos(h(x), h(x')) with the zero conventions, and the relative change
    (0 where ‖h(x)‖ = 0: those images are left out of the mean by the caller's count); ``unit``:
    :func:`_unit` of p when already computed."""
    import torch

    pn, pu = _unit(p) if unit is None else unit                      # m × b, m × b × F
    tiny = torch.finfo(p.dtype).tiny
    ru = r / rn.clamp_min(tiny).unsqueeze(1)
    cos = (pu * ru.unsqueeze(0)).sum(2).clamp(-1.0, 1.0)
    both_zero = (pn == 0) & (rn == 0).unsqueeze(0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)          # one zero: pu or ru is 0
    diff = torch.linalg.vector_norm(p - r.unsqueeze(0), dim=2)
    rel = torch.where(rn.unsqueeze(0) > 0, diff / rn.clamp_min(tiny).unsqueeze(0),
                      torch.zeros_like(diff))
    return cos, rel


def _pair_cos_rel(p: "torch.Tensor", pn: "torch.Tensor", r: "torch.Tensor", rn: "torch.Tensor"
                  ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """As :func:`_cos_rel` (same zero conventions) for the chance level's pairs, from one dot
    product per pair: cos = p·r / (‖p‖ ‖r‖), ‖p − r‖² = ‖p‖² + ‖r‖² − 2 p·r, the scalars in
    float64 (``pn``: the norms of p); no per-element difference, so a pair costs one pass over
    p. [ours]"""
    import torch

    dot = torch.bmm(r.unsqueeze(1), p.permute(1, 2, 0)).squeeze(1).T.double()   # m × b
    pn, rn = pn.double(), rn.double().unsqueeze(0)
    tiny = torch.finfo(torch.float64).tiny
    denom = pn * rn
    zero, one = torch.zeros_like(dot), torch.ones_like(dot)
    cos = torch.where(denom > 0, dot / denom.clamp_min(tiny), zero).clamp(-1.0, 1.0)
    cos = torch.where((pn == 0) & (rn == 0), one, cos)
    sq = (pn * pn + rn * rn - 2.0 * dot).clamp_min(0.0)
    rel = torch.where(rn > 0, sq.sqrt() / rn.clamp_min(tiny), zero)
    return cos, rel


def _check_max_shift(max_shift: Any, h: int | None = None, w: int | None = None) -> int:
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) \
            or max_shift < 1:
        raise ValueError(f"max_shift must be a positive integer, got {max_shift!r}")
    if h is not None and w is not None and max_shift >= min(h, w):
        raise ValueError(f"max_shift {max_shift} must be smaller than the image side "
                         f"min(H, W) = {min(h, w)}: larger shifts leave only fill")
    return int(max_shift)


def _fill_tensor(fill: Any, channels: int) -> "torch.Tensor":
    import torch

    if fill is None or isinstance(fill, (bool, str)):
        raise ValueError(f"fill must be a number or one number per channel ({channels}), e.g. "
                         f"black_fill(info), got {fill!r}")
    try:
        f = torch.as_tensor(fill, dtype=torch.float32).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"fill must be a number or one number per channel ({channels}), "
                         f"got {fill!r}") from err
    if f.numel() == 1:
        f = f.expand(channels).clone()
    if f.numel() != channels:
        raise ValueError(f"fill has {f.numel()} values, the images have {channels} channels")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"fill must be finite, got {fill!r}")
    return f
