"""Attention modules for the residual branch, selected by name (after timm's ``create_attn``).

Every module maps a branch output V (B × C × H × W) to a tensor of the same shape. The ResNet
blocks insert it before the addition [source: the SE/CBAM papers' placement; methods.md §4]:

    out = relu(shortcut(x) + attn(bn2(conv2(relu(bn1(conv1(x)))))))

``build_attention(name, channels, stage=i, **kwargs)`` builds one module; ``stage`` is the index
of the network stage the block belongs to (only ``stac`` uses it, to pick its per-stage scale).

| name   | module                | tag |
|--------|-----------------------|-----|
| `none` | identity              | —   |
| `se`   | squeeze-excitation    | [source: Hu et al. 2018]; hidden width max(1, C // r) [ours] |
| `cbam` | channel + spatial     | [source: Woo et al. 2018]; conv bias, no BN [ours] |
| `ac`   | attention condenser   | [source: Wong et al., concept]; exact layers [ours] |
| `stac` | scale-transformed AC  | [ours] (methods.md §4) |

Initialisation: PyTorch defaults here; the ResNet builder then re-initialises every Conv2d
(Kaiming normal, fan_out) and BatchNorm (weight 1, bias 0) of the whole network, attention
included. The learned scalar S of ``ac``/``stac`` (attribute ``gain``) starts at 1.

CUDA determinism: under ``torch.use_deterministic_algorithms(True)`` PyTorch refuses the
backward of ``adaptive_avg_pool2d`` and of bilinear ``interpolate`` on CUDA. ``stac`` therefore
pools with ``avg_pool2d`` (kernel = stride = H/s, the same numbers) whenever s divides H and W;
``mode="bilinear"`` (and an s that does not divide H) cannot train deterministically on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rra.io import PathLike, read_json

from .registry import check_kwargs, lookup, positive_int

UPSAMPLE_MODES = ("nearest", "bilinear")


def _expand(k: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Upsample ``k`` to ``size``: PyTorch ``nearest`` (source index floor(i·h/H)) or
    ``bilinear`` (align_corners=False). Same size in and out is the identity in both modes."""
    if mode == "bilinear":
        return F.interpolate(k, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(k, size=size, mode="nearest")


def _check_mode(mode: Any, what: str) -> str:
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"{what}: mode must be one of {list(UPSAMPLE_MODES)}, got {mode!r}")
    return mode


def _check_channels(channels: Any, what: str) -> int:
    return positive_int(channels, "channels", what)


def avg_pool_to(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of ``v`` to ``size``.

    When ``size`` divides the map exactly this is ``avg_pool2d`` with kernel = stride = H/s
    (identical windows; its CUDA backward is deterministic, unlike ``adaptive_avg_pool2d``'s).
    """
    h, w = v.shape[-2:]
    sh, sw = size
    if (sh, sw) == (h, w):
        return v
    if h % sh == 0 and w % sw == 0:
        return F.avg_pool2d(v, kernel_size=(h // sh, w // sw))
    return F.adaptive_avg_pool2d(v, size)


def identity(channels: int, *, stage: int = 0) -> nn.Module:
    """``none``: the branch output unchanged (``nn.Identity``, no parameters)."""
    _check_channels(channels, "attention 'none'")
    return nn.Identity()


class SqueezeExcite(nn.Module):
    """``se`` — squeeze-and-excitation [source: Hu et al., CVPR 2018, Fig. 3].

    g = sigmoid(W2 · relu(W1 · GAP(V) + b1) + b2),   out = V · g  (g broadcast over H × W),
    W1: C → h, W2: h → C, h = max(1, C // r) [ours: the floor at 1 keeps e.g. C = 8, r = 16
    valid; the paper has C ≥ r]. Parameters: C·h + h + h·C + C (C = 64, r = 16: 580).
    """

    def __init__(self, channels: int, *, stage: int = 0, reduction: int = 16) -> None:
        super().__init__()
        c = _check_channels(channels, "attention 'se'")
        r = positive_int(reduction, "reduction", "attention 'se'")
        hidden = max(1, c // r)
        self.fc1 = nn.Linear(c, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(self.relu(self.fc1(v.mean(dim=(2, 3))))))
        return v * g[:, :, None, None]


class CBAM(nn.Module):
    """``cbam`` — convolutional block attention module [source: Woo et al., ECCV 2018, Eq. 2–3].

    Channel:  M_c = sigmoid(MLP(AvgPool(V)) + MLP(MaxPool(V))), shared MLP C → h → C with ReLU,
              h = max(1, C // r);  V' = V · M_c.
    Spatial:  M_s = sigmoid(conv_k×k([mean_c(V'); max_c(V')])), 2 → 1 channels, padding k // 2;
              out = V' · M_s.
    [ours: the spatial conv has a bias and no BatchNorm (the paper's formula; the authors' code
    adds BN); the MLP layers have biases.]
    """

    def __init__(self, channels: int, *, stage: int = 0, reduction: int = 16,
                 kernel_size: int = 7) -> None:
        super().__init__()
        what = "attention 'cbam'"
        c = _check_channels(channels, what)
        r = positive_int(reduction, "reduction", what)
        k = positive_int(kernel_size, "kernel_size", what)
        if k % 2 == 0:
            raise ValueError(f"{what}: kernel_size must be odd (same-size output), got {k}")
        hidden = max(1, c // r)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c))
        self.spatial = nn.Conv2d(2, 1, k, padding=k // 2)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        mc = torch.sigmoid(self.mlp(v.mean(dim=(2, 3))) + self.mlp(v.amax(dim=(2, 3))))
        v = v * mc[:, :, None, None]
        maps = torch.cat([v.mean(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)], dim=1)
        return v * torch.sigmoid(self.spatial(maps))


class AttentionCondenser(nn.Module):
    """``ac`` — attention condenser [source: Wong et al., TinySpeech / AttendNets (concept:
    condensation, embedding, expansion, V·A·S)]; the exact layers are [ours]:

    Q = maxpool(V; kernel = stride = p, ceil_mode)        condensation, p = ``pool`` (2);
                                                          the kernel is cut to H (W) if larger
    K = conv1×1(relu(gconv3×3(Q)))                         embedding: grouped 3×3 conv C → C
                                                          (``groups`` = 4, padding 1, bias),
                                                          ReLU, pointwise conv C → C (bias)
    A = sigmoid(upsample(K, (H, W)))                       expansion, ``mode`` nearest|bilinear
    out = V · A · S                                        S learned scalar (``gain``), init 1
    """

    def __init__(self, channels: int, *, stage: int = 0, pool: int = 2, groups: int = 4,
                 mode: str = "nearest") -> None:
        super().__init__()
        what = "attention 'ac'"
        c = _check_channels(channels, what)
        self.pool = positive_int(pool, "pool", what)
        g = positive_int(groups, "groups", what)
        if c % g:
            raise ValueError(f"{what}: groups = {g} must divide channels = {c}")
        self.mode = _check_mode(mode, what)
        self.embed_group = nn.Conv2d(c, c, 3, padding=1, groups=g)
        self.relu = nn.ReLU()
        self.embed_point = nn.Conv2d(c, c, 1)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h, w = v.shape[-2:]
        q = F.max_pool2d(v, kernel_size=(min(self.pool, h), min(self.pool, w)), ceil_mode=True)
        k = self.embed_point(self.relu(self.embed_group(q)))
        return v * torch.sigmoid(_expand(k, (h, w), self.mode)) * self.gain


class STAC(nn.Module):
    """``stac`` — scale-transformed attention condenser [ours; methods.md §4].

    Q = adaptive_avg_pool(V, (s, s))                       s = the stage's condensation scale
    K = conv1×1(relu(BN(conv3×3(Q))))                      3×3: C → C, padding 1, no bias
                                                          (BN follows); 1×1: C → C, bias;
                                                          at s = 1 the "3×3" is 1×1 (below)
    A = sigmoid(upsample(K, (H, W)))                       ``mode`` nearest (default) | bilinear
    out = V · A · S                                        S learned scalar (``gain``), init 1

    Scale: ``scale=s`` for every block, or ``scales=[s_0, s_1, …]`` indexed by the block's
    ``stage`` (exactly one of the two). s larger than the map is cut to the map (s_h = min(s, H),
    s_w = min(s, W)) [ours]: the pooled map cannot be finer than the map itself, and this keeps
    one scale list usable at every input size. s = H gives a per-position gate computed at full
    resolution; s = 1 a channel gate from the global average.

    At s = 1 the pooled map is 1 × 1, where a zero-padded 3×3 convolution reads only its centre
    tap: the other 8C² weights could never affect the output yet would count as parameters.
    ``conv3`` is therefore a 1×1 convolution (no padding) at s = 1 [ours]: the same function
    (the centre tap; tests/test_attention.py copies the centre taps and compares outputs) with
    every parameter live. Parameters: k²C² + 2C (BN) + C² + C + 1, k = 3 (s ≥ 2) or 1 (s = 1).
    An s ≥ 2 on a map of height or width 1 keeps its 3×3 kernel, with dead taps there; the
    cost table's ``params_live`` (rra.models.cost) shows them.

    Note: in training mode BatchNorm needs more than one value per channel, so s = 1 needs a
    batch of at least 2 (PyTorch raises otherwise); evaluation mode has no such limit.
    """

    def __init__(self, channels: int, *, stage: int = 0, scale: int | None = None,
                 scales: Sequence[int] | None = None, mode: str = "nearest") -> None:
        super().__init__()
        what = "attention 'stac'"
        c = _check_channels(channels, what)
        if (scale is None) == (scales is None):
            raise ValueError(f"{what}: give exactly one of scale (int, every stage) or "
                             f"scales (list, one per stage); got scale={scale!r}, "
                             f"scales={scales!r}")
        if scales is not None:
            if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
                raise ValueError(f"{what}: scales must be a list of positive integers, "
                                 f"got {scales!r}")
            stage = int(stage)
            if not 0 <= stage < len(scales):
                raise ValueError(f"{what}: scales has {len(scales)} entries but the block is in "
                                 f"stage {stage}; give one scale per network stage")
            for i, s in enumerate(scales):
                positive_int(s, f"scales[{i}]", what)
            scale = scales[stage]
        self.size = positive_int(scale, "scale", what)
        self.mode = _check_mode(mode, what)
        k = 1 if self.size == 1 else 3  # [ours] 1×1 at s = 1: the 3×3's only live tap
        self.conv3 = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h, w = v.shape[-2:]
        q = avg_pool_to(v, (min(self.size, h), min(self.size, w)))
        k = self.conv1(self.relu(self.bn(self.conv3(q))))
        return v * torch.sigmoid(_expand(k, (h, w), self.mode)) * self.gain

    def extra_repr(self) -> str:
        return f"scale={self.size}, mode={self.mode!r}"

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        """Name the cause when a state dict from before the 1×1 change at s = 1 is loaded
        (torch then also reports the size mismatch; loading fails either way)."""
        weight = state_dict.get(prefix + "conv3.weight")
        if (self.size == 1 and weight is not None
                and weight.shape[-2:] != self.conv3.weight.shape[-2:]):
            error_msgs.append(
                f"{prefix}conv3.weight: the state dict has a {tuple(weight.shape[-2:])} kernel, "
                "but STAC at scale 1 uses a 1×1 convolution (the 3×3's centre tap, the only "
                "one a 1×1 map reaches; rra/models/attention.py); retrain, or take "
                "weight[:, :, 1:2, 1:2] of the old kernel")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "none": identity,
    "se": SqueezeExcite,
    "cbam": CBAM,
    "ac": AttentionCondenser,
    "stac": STAC,
}


def list_attention() -> list[str]:
    """Registered attention names, sorted."""
    return sorted(ATTENTION)


def get_attn(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name`` (ValueError listing the known names if unknown)."""
    return lookup(ATTENTION, name, "attention")


def build_attention(name: str, channels: int, *, stage: int = 0, **kwargs: Any) -> nn.Module:
    """Build attention ``name`` for a branch with ``channels`` channels in network ``stage``.

    Unknown names and unknown keyword arguments raise a ValueError listing what is accepted.
    """
    builder = get_attn(name)
    check_kwargs(builder, kwargs, f"attention {name!r}", reserved=("channels", "stage"))
    return builder(channels, stage=stage, **kwargs)


def read_attention_kwargs(path: PathLike) -> dict[str, Any]:
    """The ``stac`` keyword arguments stored in a scales file of ``rra.stac.choose_scales``:
    ``{"scales": [...]}``.

    What ``rra train --attention-kwargs-file`` and the cost stage merge into a run's
    ``attention_kwargs``. Raises FileNotFoundError / ValueError naming the file.
    """
    data = read_json(path)
    scales = data.get("scales") if isinstance(data, dict) else None
    if (not isinstance(scales, list) or not scales
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scales)):
        raise ValueError(f"{path}: key 'scales' must be a non-empty list of positive integers "
                         f"(one per stage), got {scales!r}")
    return {"scales": list(scales)}
