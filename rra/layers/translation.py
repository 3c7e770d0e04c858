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
of one image batch for every (hook, scale), plus one forward batch. No randomness: the result
is a function of the model and the probe (up to the device's float summation order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from rra.embed.pool import parse_scales, pool_embedding, scale_name
from rra.embed.dump import _plan
from rra.layers.common import (HookRunner, as_batch, check_hooks, hook_positions, on_device,
                              positive_int)

if TYPE_CHECKING:
    import torch
    from torch import nn

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
                            positions: Mapping[str, int] | None = None) -> list[dict]:
    """Translation sensitivity maps and their summaries for every hook and scale (module doc).

    ``probe``: normalised float N × C × H × W images; ``hooks``: module names in forward order
    (``input`` first allowed); ``fill``: the translated-in value per channel in normalised
    units (:func:`black_fill`); ``max_shift`` S with 1 ≤ S < min(H, W); ``scales``: pooled
    scales (an int scale applies to maps no smaller than it, vectors have only ``full``);
    ``batch_size``: rows per forward pass (image batches of min(n, batch_size) images, each
    with ⌊batch_size / images⌋ shifts stacked per pass); ``positions``: ``pos_a`` per hook
    (default: the index in ``hooks``).

    Returns tidy rows (``hook_a``, ``pos_a``, ``scale_a``, ``value`` and):
    ``translation_cosine`` and ``translation_rel_change`` with ``dx``, ``dy`` (the maps);
    ``translation_cosine_mean`` and ``translation_rel_change_mean`` (over d ≠ (0, 0));
    ``translation_cosine_radial`` and ``translation_rel_change_radial`` with ``radius``;
    ``translation_zero_norm_fraction`` (share of probe images with h(x) = 0).
    """
    x_all = as_batch(probe, "probe", ndim=4)
    n, c, h, w = x_all.shape
    hook_list = check_hooks(model, hooks)
    pos = hook_positions(hook_list, positions)
    batch_size = positive_int(batch_size, "batch_size")
    s = _check_max_shift(max_shift, h, w)
    scale_list = parse_scales(scales)
    fill_t = _fill_tensor(fill, c)
    shifts = shift_grid(s)
    with on_device(model, device, inference=True) as dev:
        sums = _shift_sums(model, x_all, hook_list, scale_list, shifts, fill_t.to(dev),
                           batch_size, dev)
    return _translation_rows(sums, shifts, s, n, pos)


@dataclass
class _ShiftSums:
    """Sums over the probe images, per (hook, scale) in ``keys`` order: Σ_x cos and
    Σ_{x ∈ X+} rel per shift (float64), and |X+|; ``ref`` holds the current image batch's
    pooled reference outputs h(x) and their norms."""

    plan: dict[str, list[Any]]
    keys: list[tuple[str, Any]]
    cos: dict[tuple[str, Any], "torch.Tensor"]
    rel: dict[tuple[str, Any], "torch.Tensor"]
    nonzero: dict[tuple[str, Any], "torch.Tensor"]
    ref: dict[tuple[str, Any], tuple["torch.Tensor", "torch.Tensor"]] = field(default_factory=dict)

    @classmethod
    def zeros(cls, plan: dict[str, list[Any]], hooks: list[str], n_shifts: int,
              dev: Any) -> "_ShiftSums":
        import torch

        keys = [(hk, sc) for hk in hooks for sc in plan[hk]]
        return cls(plan, keys,
                   cos={k: torch.zeros(n_shifts, dtype=torch.float64, device=dev) for k in keys},
                   rel={k: torch.zeros(n_shifts, dtype=torch.float64, device=dev) for k in keys},
                   nonzero={k: torch.zeros((), dtype=torch.int64, device=dev) for k in keys})

    def keep(self, hook: str, out: "torch.Tensor") -> None:
        """HookRunner callback on the unshifted batch: store h(x) per scale, count ‖h(x)‖ > 0."""
        import torch

        for sc in self.plan[hook]:
            r = pool_embedding(out, sc).clone()  # a later in-place op cannot alter it
            rn = torch.linalg.vector_norm(r, dim=1)
            self.ref[(hook, sc)] = (r, rn)
            self.nonzero[(hook, sc)] += (rn > 0).sum()

    def compare(self, hook: str, out: "torch.Tensor", *, k0: int, m: int) -> None:
        """HookRunner callback on ``m`` stacked shifts from shift ``k0``: add cos and rel."""
        import torch

        for sc in self.plan[hook]:
            r, rn = self.ref[(hook, sc)]
            p = pool_embedding(out, sc).view(m, r.shape[0], -1)
            cos, rel = _cos_rel(p, r, rn)
            self.cos[(hook, sc)][k0:k0 + m] += cos.sum(1, dtype=torch.float64)
            self.rel[(hook, sc)][k0:k0 + m] += rel.sum(1, dtype=torch.float64)


def _shift_sums(model: "nn.Module", x_all: "torch.Tensor", hooks: list[str], scales: list[Any],
                shifts: list[tuple[int, int]], fill: "torch.Tensor", batch_size: int,
                dev: Any) -> _ShiftSums:
    """The forward passes: per batch of min(n, batch_size) images, one pass of the images
    (:meth:`_ShiftSums.keep`), then their shifted copies, ⌊batch_size / images⌋ shifts per
    pass (:meth:`_ShiftSums.compare`)."""
    n = x_all.shape[0]
    b_img = min(n, batch_size)
    per_pass = max(1, batch_size // b_img)
    runner = HookRunner(model, hooks)
    plan = _plan(runner.shapes(x_all[:1].to(dev)), scales)
    sums = _ShiftSums.zeros(plan, hooks, len(shifts), dev)
    for start in range(0, n, b_img):
        xb = x_all[start:start + b_img].to(dev)
        sums.ref = {}
        runner.run(xb, sums.keep)
        for k0 in range(0, len(shifts), per_pass):
            chunk = shifts[k0:k0 + per_pass]
            runner.run(shift_stack(xb, chunk, fill), partial(sums.compare, k0=k0, m=len(chunk)))
    return sums


def _translation_rows(sums: _ShiftSums, shifts: list[tuple[int, int]], max_shift: int, n: int,
                      pos: Mapping[str, int]) -> list[dict]:
    """Tidy rows per (hook, scale): both maps, their means over d ≠ (0, 0), their radial
    profiles and the zero-norm share (see :func:`translation_sensitivity`)."""
    rows: list[dict] = []
    radius = np.abs(np.array(shifts)).max(axis=1)
    off = radius > 0
    for hk, sc in sums.keys:
        common = dict(hook_a=hk, pos_a=pos[hk], scale_a=scale_name(sc))
        nz = int(sums.nonzero[(hk, sc)])
        maps = {"translation_cosine": sums.cos[(hk, sc)].cpu().numpy() / n,
                "translation_rel_change": (sums.rel[(hk, sc)].cpu().numpy() / nz if nz
                                           else np.full(len(shifts), np.nan))}
        for name, m in maps.items():
            for (dx, dy), v in zip(shifts, m):
                rows.append(dict(common, measure=name, dx=int(dx), dy=int(dy), value=float(v)))
        for name, m in maps.items():
            rows.append(dict(common, measure=f"{name}_mean", value=float(m[off].mean())))
        for name, m in maps.items():
            for r in range(max_shift + 1):
                rows.append(dict(common, measure=f"{name}_radial", radius=r,
                                 value=float(m[radius == r].mean())))
        rows.append(dict(common, measure="translation_zero_norm_fraction",
                         value=float((n - nz) / n)))
    return rows


def _cos_rel(p: "torch.Tensor", r: "torch.Tensor", rn: "torch.Tensor"
             ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per (shift, image): cos(h(x), h(x')) with the zero conventions, and the relative change
    (0 where ‖h(x)‖ = 0: those images are left out of the mean by the caller's count)."""
    import torch

    pn = torch.linalg.vector_norm(p, dim=2)                         # m × b
    tiny = torch.finfo(p.dtype).tiny
    pu = p / pn.clamp_min(tiny).unsqueeze(2)
    ru = r / rn.clamp_min(tiny).unsqueeze(1)
    cos = (pu * ru.unsqueeze(0)).sum(2).clamp(-1.0, 1.0)
    both_zero = (pn == 0) & (rn == 0).unsqueeze(0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)          # one zero: pu or ru is 0
    diff = torch.linalg.vector_norm(p - r.unsqueeze(0), dim=2)
    rel = torch.where(rn.unsqueeze(0) > 0, diff / rn.clamp_min(tiny).unsqueeze(0),
                      torch.zeros_like(diff))
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
