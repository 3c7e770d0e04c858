"""Attention modules: shapes, determinism, parameter counts, values against direct formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rra.models.attention import (ATTENTION, STAC, AttentionCondenser, CBAM, SqueezeExcite,
                                  avg_pool_to, build_attention, get_attn, list_attention)
from rra.models.cost import count_params

KWARGS = {"none": {}, "se": {}, "cbam": {}, "ac": {}, "stac": {"scale": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (eval-mode tests)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))


def test_registry_names():
    assert list_attention() == sorted(["none", "se", "cbam", "ac", "stac"])
    assert set(KWARGS) == set(ATTENTION)
    assert get_attn("se") is SqueezeExcite


@pytest.mark.parametrize("name", sorted(ATTENTION))
@pytest.mark.parametrize("size", [1, 7, 8])
def test_shape_and_determinism(name, size):
    x = torch.randn(2, 16, size, size, generator=torch.Generator().manual_seed(0))
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = build_attention(name, 16, stage=0, **KWARGS[name]).eval()
        with torch.no_grad():
            outs.append(m(x))
    assert outs[0].shape == x.shape
    assert torch.equal(outs[0], outs[1])
    assert torch.isfinite(outs[0]).all()
    if name == "none":
        assert torch.equal(outs[0], x)


@pytest.mark.parametrize("name", ["se", "cbam", "ac", "stac"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    kwargs = {"reduction": 2} if name in ("se", "cbam") else KWARGS[name]  # hidden 4: no dead unit
    m = build_attention(name, 8, **kwargs).train()
    x = (torch.randn(4, 8, 8, 8) + 3 * torch.randn(4, 8, 1, 1)).requires_grad_()
    m(x).square().sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert x.grad is not None


@pytest.mark.parametrize("c,r", [(64, 16), (16, 16), (8, 16), (32, 4), (5, 2)])
def test_se_param_count(c, r):
    h = max(1, c // r)
    assert count_params(build_attention("se", c, reduction=r)) == c * h + h + h * c + c
    if (c, r) == (64, 16):
        assert count_params(build_attention("se", c, reduction=r)) == 580


def test_se_values():
    torch.manual_seed(0)
    m = SqueezeExcite(8, reduction=4)
    x = torch.randn(3, 8, 5, 5)
    z = x.mean(dim=(2, 3))
    g = torch.sigmoid(torch.relu(z @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias)
    assert torch.allclose(m(x), x * g[:, :, None, None], atol=1e-6)


def test_cbam_values_and_params():
    torch.manual_seed(0)
    m = CBAM(8, reduction=4, kernel_size=7)
    assert count_params(m) == (8 * 2 + 2 + 2 * 8 + 8) + (2 * 49 + 1)
    x = torch.randn(2, 8, 6, 6)
    l1, l2 = m.mlp[0], m.mlp[2]

    def mlp(z):
        return torch.relu(z @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias

    mc = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.flatten(2).max(dim=2).values))
    v = x * mc[:, :, None, None]
    maps = torch.stack([v.mean(dim=1), v.max(dim=1).values], dim=1)  # B × 2 × H × W
    # spatial conv by explicit sum over the 7×7 window of the zero-padded maps
    padded = F.pad(maps, (3, 3, 3, 3))
    w = m.spatial.weight[0]  # 2 × 7 × 7
    s = torch.full((2, 6, 6), float(m.spatial.bias.detach()))
    for i in range(6):
        for j in range(6):
            s[:, i, j] += (padded[:, :, i:i + 7, j:j + 7] * w).sum(dim=(1, 2, 3))
    expected = v * torch.sigmoid(s)[:, None]
    assert torch.allclose(m(x), expected, atol=1e-5)


def test_ac_values():
    torch.manual_seed(0)
    c, g = 8, 4
    m = AttentionCondenser(c, pool=2, groups=g)
    with torch.no_grad():
        m.gain.fill_(0.7)
    assert count_params(m) == (9 * c * c // g + c) + (c * c + c) + 1
    x = torch.randn(2, c, 8, 8)
    q = x.reshape(2, c, 4, 2, 4, 2).amax(dim=(3, 5))  # 2×2 max-pool
    per = c // g
    groups = [slice(i * per, (i + 1) * per) for i in range(g)]
    e = torch.cat([F.conv2d(q[:, sl], m.embed_group.weight[sl], m.embed_group.bias[sl], padding=1)
                   for sl in groups], dim=1)
    k = torch.einsum("oc,bchw->bohw", m.embed_point.weight[:, :, 0, 0], torch.relu(e))
    k = k + m.embed_point.bias[None, :, None, None]
    a = torch.sigmoid(k.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert torch.allclose(m(x), x * a * 0.7, atol=1e-5)


def test_ac_odd_and_tiny_maps():
    m = AttentionCondenser(4, pool=2, groups=2)
    for size in (1, 3, 7):
        x = torch.randn(1, 4, size, size)
        assert m(x).shape == x.shape
    # ceil_mode: a 3×3 map condenses to 2×2, the last row/column on its own
    x = torch.arange(9.0).reshape(1, 1, 3, 3).repeat(1, 4, 1, 1)
    q = F.max_pool2d(x, 2, ceil_mode=True)
    assert q[0, 0].tolist() == [[4.0, 5.0], [7.0, 8.0]]


def _stac(c: int, scale: int, mode: str = "nearest") -> STAC:
    torch.manual_seed(0)
    m = STAC(c, scale=scale, mode=mode)
    _randomise_bn(m)
    with torch.no_grad():
        m.gain.fill_(1.3)
    return m.eval()


def _bn_eval(m: STAC, h: torch.Tensor) -> torch.Tensor:
    bn = m.bn
    shape = (1, -1) + (1,) * (h.dim() - 2)
    return ((h - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def _conv3x3_direct(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """3×3 convolution, padding 1, no bias, as an explicit sum of the 9 shifted maps."""
    h, wd = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    return sum(torch.einsum("oc,bchw->bohw", w[:, :, di, dj], p[:, :, di:di + h, dj:dj + wd])
               for di in range(3) for dj in range(3))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_stac_full_scale_is_per_position_gate(mode):
    c, size = 6, 5
    m = _stac(c, scale=size, mode=mode)
    x = torch.randn(2, c, size, size)
    h = torch.relu(_bn_eval(m, _conv3x3_direct(x, m.conv3.weight)))
    k = torch.einsum("oc,bchw->bohw", m.conv1.weight[:, :, 0, 0], h)
    k = k + m.conv1.bias[None, :, None, None]
    with torch.no_grad():
        assert torch.allclose(m(x), x * torch.sigmoid(k) * 1.3, atol=1e-5)
        # a scale above the map is cut to the map: same output
        assert torch.allclose(_stac(c, scale=50, mode=mode)(x), m(x), atol=0)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_stac_scale_one_is_channel_gate(mode):
    c = 6
    m = _stac(c, scale=1, mode=mode)
    x = torch.randn(3, c, 7, 7)
    q = x.mean(dim=(2, 3))                                     # B × C
    assert m.conv3.kernel_size == (1, 1)  # see test_stac_scale_one_1x1_equals_old_3x3
    h = torch.relu(_bn_eval(m, q @ m.conv3.weight[:, :, 0, 0].T))
    k = h @ m.conv1.weight[:, :, 0, 0].T + m.conv1.bias
    with torch.no_grad():
        assert torch.allclose(m(x), x * torch.sigmoid(k)[:, :, None, None] * 1.3, atol=1e-5)


def test_stac_intermediate_scale_nearest():
    c = 4
    m = _stac(c, scale=2)
    x = torch.randn(2, c, 8, 8)
    q = x.reshape(2, c, 2, 4, 2, 4).mean(dim=(3, 5))           # 4×4 blocks -> 2×2
    h = torch.relu(_bn_eval(m, _conv3x3_direct(q, m.conv3.weight)))
    k = torch.einsum("oc,bchw->bohw", m.conv1.weight[:, :, 0, 0], h)
    k = k + m.conv1.bias[None, :, None, None]
    a = torch.sigmoid(k).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    with torch.no_grad():
        assert torch.allclose(m(x), x * a * 1.3, atol=1e-5)


def _old_stac_scale_one(c: int, mode: str) -> STAC:
    """STAC at s = 1 as it was built before the 1×1 change: a zero-padded 3×3 ``conv3``."""
    m = _stac(c, scale=1, mode=mode)
    m.conv3 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
    torch.nn.init.normal_(m.conv3.weight, generator=torch.Generator().manual_seed(3))
    return m


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("train", [False, True])
def test_stac_scale_one_1x1_equals_old_3x3(mode, train):
    """[ours] At s = 1 the 1×1 conv3 computes what the zero-padded 3×3 did: on the 1×1 pooled
    map only the 3×3's centre tap is read, so copying the centre taps gives the same output,
    in eval mode and in training mode (batch statistics)."""
    c = 6
    old = _old_stac_scale_one(c, mode)
    new = _stac(c, scale=1, mode=mode)
    assert new.conv3.weight.shape == (c, c, 1, 1) and new.conv3.padding == (0, 0)
    state = old.state_dict()
    state["conv3.weight"] = state["conv3.weight"][:, :, 1:2, 1:2].clone()
    new.load_state_dict(state)
    old.train(train)
    new.train(train)
    x = torch.randn(4, c, 7, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = old(x)
        assert torch.allclose(new(x), expected, atol=1e-6)
        # the centre tap matters, the 8 others do not: zeroing them changes nothing
        old.conv3.weight[:, :, [0, 2]] = 0.0
        old.conv3.weight[:, :, :, [0, 2]] = 0.0
        assert torch.allclose(old(x), expected, atol=1e-6)
    assert count_params(old) - count_params(new) == 8 * c * c


def test_stac_scale_one_old_checkpoint_is_refused():
    """A state dict from before the change (3×3 conv3 at s = 1) fails to load, naming why."""
    c = 4
    state = _old_stac_scale_one(c, "nearest").state_dict()
    with pytest.raises(RuntimeError, match=r"conv3\.weight.*scale 1 uses a 1×1 convolution"):
        _stac(c, scale=1).load_state_dict(state)
    _stac(c, scale=2).load_state_dict(state)  # s ≥ 2 keeps the 3×3: loads as before


@pytest.mark.parametrize("size,s", [(8, 2), (8, 4), (7, 2), (7, 3), (5, 5)])
def test_avg_pool_to_matches_adaptive(size, s):
    x = torch.randn(2, 3, size, size)
    assert torch.allclose(avg_pool_to(x, (s, s)), F.adaptive_avg_pool2d(x, (s, s)), atol=1e-6)


def test_stac_param_count_and_stage_scales():
    c = 16
    m = build_attention("stac", c, stage=2, scales=[4, 2, 1])
    assert m.size == 1
    assert count_params(m) == c * c + 2 * c + c * c + c + 1  # 1×1 "conv3" at s = 1
    assert count_params(build_attention("stac", c, stage=1, scales=[4, 2, 1])) == (
        9 * c * c + 2 * c + c * c + c + 1)
    assert build_attention("stac", c, stage=0, scales=[4, 2, 1]).size == 4
    assert build_attention("stac", c, stage=3, scale=3).size == 3


@pytest.mark.parametrize("name,kwargs,match", [
    ("nope", {}, "unknown attention 'nope'"),
    ("se", {"reduction": 0}, "reduction"),
    ("se", {"reduction": 2.5}, "reduction"),
    ("se", {"scale": 2}, "unknown keyword"),
    ("cbam", {"reduction": -1}, "reduction"),
    ("cbam", {"kernel_size": 4}, "kernel_size"),
    ("ac", {"pool": 0}, "pool"),
    ("ac", {"groups": 3}, "groups"),
    ("ac", {"mode": "bicubic"}, "mode"),
    ("stac", {}, "exactly one of scale"),
    ("stac", {"scale": 2, "scales": [2]}, "exactly one of scale"),
    ("stac", {"scale": 0}, "scale"),
    ("stac", {"scale": True}, "scale"),
    ("stac", {"scales": [2, 0, 1]}, r"scales\[1\]"),
    ("stac", {"scales": [2, 1]}, "stage 2"),
    ("stac", {"scales": "421"}, "scales"),
    ("stac", {"scale": 2, "mode": "linear"}, "mode"),
    ("none", {"reduction": 4}, "unknown keyword"),
])
def test_bad_parameters_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_attention(name, 16, stage=2, **kwargs)


def test_bad_channels_raise():
    with pytest.raises(ValueError, match="channels"):
        build_attention("se", 0)
