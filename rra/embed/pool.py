"""Spatial scales of one hook's output: parsing, applicability, pooling (methods.md §1).

An embedding of a hook point is its output for each probe image, reduced to one row per image:

- feature map (B, C, H, W), ``scale = s`` (int): adaptive average pooling to (s, s), then
  flattening to C·s² values, channel-major (row = [c0 at (0,0), c0 at (0,1), …, c1 at (0,0), …]);
- feature map, ``scale = "full"``: flattening all C·H·W values, in the same order;
- a scale s larger than H or W is skipped (no up-sampling) [ours, motivated by the thesis's
  "pooled spatial resolutions"];
- vector output (B, D) (a linear layer, the globally pooled features): it has no spatial extent,
  so it yields exactly one embedding, ``"full"`` = the vector itself, and only when ``"full"``
  is among the requested scales; int scales are skipped for it. (Treating the vector as a 1 × 1
  map would make scale 1 a byte-identical duplicate of ``full``.) [ours]

Other output ranks (sequences, tuples) are not supported and raise ``ValueError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence, Union

if TYPE_CHECKING:
    import torch

Scale = Union[int, str]
FULL = "full"


def parse_scale(scale: object) -> Scale:
    """One config scale -> a positive ``int`` or ``"full"``; digit strings like ``"4"`` are ints.

    Raises ``ValueError`` naming the value for 0, negatives, booleans, floats, other strings.
    """
    if isinstance(scale, bool):
        raise ValueError(f"invalid scale {scale!r}: use a positive integer or 'full'")
    if isinstance(scale, int):
        value = scale
    elif isinstance(scale, str):
        text = scale.strip().lower()
        if text == FULL:
            return FULL
        if not text.lstrip("+-").isdigit():
            raise ValueError(f"invalid scale {scale!r}: use a positive integer or 'full'")
        value = int(text)
    else:
        raise ValueError(f"invalid scale {scale!r} ({type(scale).__name__}): "
                         "use a positive integer or 'full'")
    if value < 1:
        raise ValueError(f"invalid scale {scale!r}: an integer scale must be at least 1")
    return value


def parse_scales(scales: Iterable[object]) -> list[Scale]:
    """Config scales (e.g. ``[1, 2, 4, "full"]``) -> validated list, coarse to fine, ``full`` last.

    Raises ``ValueError`` for an empty list, an invalid scale, or a repeated scale.
    """
    if isinstance(scales, (str, int)):
        scales = [scales]
    parsed = [parse_scale(s) for s in scales]
    if not parsed:
        raise ValueError("no scales given: use e.g. [1, 2, 4, 'full']")
    names = [scale_name(s) for s in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"scale(s) {repeated} given more than once in {list(scales)!r}")
    return sorted(parsed, key=_order_key)


def _order_key(scale: Scale) -> tuple[int, int]:
    return (1, 0) if scale == FULL else (0, int(scale))


def scale_name(scale: Scale) -> str:
    """The scale as it appears in file names and manifests: ``"1"``, ``"2"``, ``"full"``."""
    return FULL if scale == FULL else str(int(scale))


def scales_for(shape: Sequence[int], scales: Iterable[object]) -> list[Scale]:
    """The scales that apply to an output of ``shape`` (batch dimension first).

    (B, C, H, W): every int s with s ≤ min(H, W), and ``"full"`` if requested.
    (B, D): only ``"full"`` (if requested). Other ranks: ``ValueError``.
    """
    parsed = parse_scales(scales)
    shape = tuple(int(v) for v in shape)
    if len(shape) == 4:
        limit = min(shape[2], shape[3])
        return [s for s in parsed if s == FULL or s <= limit]
    if len(shape) == 2:
        return [s for s in parsed if s == FULL]
    raise ValueError(f"cannot embed an output of shape {shape}: expected (B, C, H, W) or (B, D)")


def pool_embedding(t: "torch.Tensor", scale: object) -> "torch.Tensor":
    """One batch of hook outputs -> its embedding at ``scale``, a (B, d) float32 tensor.

    (B, C, H, W), int s: ``adaptive_avg_pool2d(t, (s, s)).flatten(1)``, d = C·s²; cell (i, j)
    averages rows ⌊iH/s⌋ … ⌈(i+1)H/s⌉−1 and the same for columns (exactly the block mean
    when s divides H and W). ``"full"``: ``t.flatten(1)``, d = C·H·W. (B, D): only ``"full"``,
    the vector itself. A scale larger than H or W, or an int scale of a vector, is a
    ``ValueError`` (callers filter with :func:`scales_for`). [ours]
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(t, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(t).__name__}")
    parsed = parse_scale(scale)
    if parsed not in scales_for(t.shape, [parsed]):
        raise ValueError(f"scale {scale_name(parsed)!r} does not apply to an output of shape "
                         f"{tuple(t.shape)} (larger than the map, or a vector output)")
    if parsed != FULL:
        t = F.adaptive_avg_pool2d(t, (parsed, parsed))
    return t.flatten(1).to(torch.float32)
