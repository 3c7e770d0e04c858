"""Fragmentation (rra.layers.fragmentation) on models whose decision regions on a plane are
known by hand, the plane grid, triplet drawing and the head substitution (LeNet-style
sequential models and a ResNet with skip connections)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hooks import forward_outputs
from rra.layers.fragmentation import (count_regions, draw_triplets, fragmentation,
                                      fragmentation_rows, head_logits, plane_coordinates)
from rra.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# the triangle (0,0), (1,0), (0,1): its box [0, 1]² extends to [−0.5, 1.5]²
TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)


class Stripes(nn.Module):
    """Two classes in stripes across x₁: class 0 where cos(π(4x₁ + 0.1)) > 0. Boundaries at
    4x₁ + 0.1 = m + ½, i.e. x₁ = 0.1 + m/4: eight of them in (−0.5, 1.5), hence 9 stripes."""

    def forward(self, x):
        s = torch.cos(torch.pi * (4 * x[:, :1] + 0.1))
        return torch.cat([s, -s], 1)


class Fold(nn.Module):
    """(x₁, x₂) ↦ (|x₁|, x₂)."""

    def forward(self, x):
        return torch.cat([x[:, :1].abs(), x[:, 1:]], 1)


class Threshold(nn.Module):
    """Two classes: class 1 where h₁ > 0.3 (a straight boundary)."""

    def forward(self, h):
        return torch.cat([0.3 - h[:, :1], h[:, :1] - 0.3], 1)


def _rows(n_per_triplet: int = 1):
    """Probe = the triangle repeated, with labels 0, 1, 2."""
    return np.tile(TRIANGLE, (n_per_triplet, 1)), np.tile([0, 1, 2], n_per_triplet)


# the triangle in its own order: a = (0,0), b = (1,0), c = (0,1)
CANON = {"canon": [[0, 1, 2]]}


def test_count_regions_uses_8_connectivity():
    assert count_regions(np.zeros((5, 5), dtype=int)) == 1
    assert count_regions(np.array([[0, 1], [1, 0]])) == 2  # 4-connectivity would give 4
    stripes = np.tile(np.array([0, 0, 1, 1, 0, 2, 2, 0]), (4, 1))
    assert count_regions(stripes) == 5
    blobs = np.zeros((6, 6), dtype=int)
    blobs[0:2, 0:2] = 1
    blobs[4:6, 4:6] = 1
    blobs[0:2, 4:6] = 2
    assert count_regions(blobs) == 4  # class 0 one region, class 1 two, class 2 one
    with pytest.raises(ValueError, match="class_map"):
        count_regions(np.zeros(4))


def test_plane_coordinates_of_the_unit_triangle():
    alpha, beta = plane_coordinates(*TRIANGLE, resolution=5, extend=0.5)
    axis = np.linspace(-0.5, 1.5, 5)
    np.testing.assert_allclose(alpha, np.tile(axis, (5, 1)), atol=1e-12)
    np.testing.assert_allclose(beta, np.tile(axis[:, None], (1, 5)), atol=1e-12)
    # a skewed triangle in 3-D: grid points lie on the plane, the box covers the three points
    a, b, c = np.array([1.0, 0, 0]), np.array([3.0, 0, 0]), np.array([4.0, 2, 0])
    al, be = plane_coordinates(a, b, c, resolution=3, extend=0.0)
    pts = a + al[..., None] * (b - a) + be[..., None] * (c - a)
    np.testing.assert_allclose(pts[..., 2], 0)
    np.testing.assert_allclose(pts[0, 0], [1, 0, 0])       # (min e₁, min e₂)
    np.testing.assert_allclose(pts[2, 2], [4, 2, 0])       # (max e₁, max e₂)
    np.testing.assert_allclose(pts[0, 2], [4, 0, 0])
    assert plane_coordinates(a, b, a + 2 * (b - a)) is None  # collinear
    assert plane_coordinates(a, a, c) is None
    with pytest.raises(ValueError, match="resolution"):
        plane_coordinates(a, b, c, resolution=1)
    with pytest.raises(ValueError, match="extend"):
        plane_coordinates(a, b, c, extend=-1)


def test_linear_two_class_model_has_two_regions_or_one():
    lin = nn.Linear(2, 2)
    with torch.no_grad():  # boundary x₁ + x₂ = 0.7 crosses the triangle
        lin.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.7, -0.7]))
    x, y = _rows()
    res = fragmentation(lin, x, y, ["input"], triplets=3, kinds=["mixed"], device="cpu")
    np.testing.assert_array_equal(res.counts[("input", "mixed")], [2, 2, 2])
    with torch.no_grad():  # boundary x₁ = 5, outside the extended box: one region
        lin.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        lin.bias.copy_(torch.tensor([5.0, -5.0]))
    res = fragmentation(lin, x, y, ["input"], triplets=2, kinds=["mixed"], device="cpu")
    np.testing.assert_array_equal(res.counts[("input", "mixed")], [1, 1])
    assert res.maps[("input", "mixed")].shape == (2, 50, 50)
    assert (res.maps[("input", "mixed")] == 0).all()


def test_stripes_have_nine_regions_in_input_and_rotated_hook_space():
    x, y = _rows()
    res = fragmentation(Stripes(), x, y, ["input"], triplet_rows=CANON, device="cpu")
    assert res.counts[("input", "canon")][0] == 9
    # a scaled rotation before the stripes, undone by the head: the hook-space plane is a
    # similar copy of the input plane, so the hook space shows the same 9 regions
    th = 0.7
    R = 2 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], dtype=np.float32)
    rot, unrot = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        rot.weight.copy_(torch.from_numpy(R))
        unrot.weight.copy_(torch.from_numpy(np.linalg.inv(R)))
    model = nn.Sequential(rot, unrot, Stripes())
    res = fragmentation(model, x, y, ["input", "0", "1"], triplet_rows=CANON, device="cpu",
                        batch_size=97)
    assert [res.counts[(h, "canon")][0] for h in ("input", "0", "1")] == [9, 9, 9]


def test_hook_space_differs_from_input_space_where_known():
    # input space: class 1 where |x₁| > 0.3, on x₁ ∈ [−0.5, 1.5]: 3 regions;
    # after the fold the head is a straight boundary h₁ = 0.3 on the same plane: 2 regions
    model = nn.Sequential(Fold(), Threshold())
    x, y = _rows()
    rows = fragmentation_rows(model, x, y, ["input", "0"],
                              triplet_rows={"canon": [[0, 1, 2], [0, 1, 2]]}, device="cpu")
    by = {(r["hook_a"], r["measure"]): r["value"] for r in rows}
    assert by[("input", "fragmentation_canon")] == 3
    assert by[("0", "fragmentation_canon")] == 2
    assert by[("0", "fragmentation_canon_sd")] == 0
    assert by[("0", "fragmentation_canon_triplets")] == 2
    assert {r["pos_a"] for r in rows if r["hook_a"] == "0"} == {1}
    assert all(r["scale_a"] == "full" for r in rows)
    # the logits of a 2-class model lie on the line z₂ = −z₁: every triplet is collinear
    res = fragmentation(model, x, y, ["1"], triplet_rows=CANON, device="cpu")
    assert np.isnan(res.counts[("1", "canon")]).all()


def test_collinear_triplets_are_left_out():
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], dtype=np.float32)
    res = fragmentation(Stripes(), x, [0, 1, 2], ["input"], triplets=2, kinds=["mixed"],
                        device="cpu")
    assert np.isnan(res.counts[("input", "mixed")]).all()
    rows = res.rows()
    by = {r["measure"]: r["value"] for r in rows}
    assert np.isnan(by["fragmentation_mixed"]) and by["fragmentation_mixed_triplets"] == 0
    assert res.maps[("input", "mixed")].shape == (0, 50, 50)


def test_draw_triplets_kinds_and_seed():
    labels = np.repeat([0, 1, 2, 3], [5, 2, 4, 3])
    same = draw_triplets(labels, "same_class", 40, np.random.default_rng(0))
    assert all(len(set(t)) == 3 and len(set(labels[t])) == 1 for t in same)
    assert 1 not in set(labels[same[:, 0]])  # class 1 has only 2 rows
    mixed = draw_triplets(labels, "mixed", 40, np.random.default_rng(0))
    assert all(len(set(labels[t])) == 3 for t in mixed)
    again = draw_triplets(labels, "mixed", 40, np.random.default_rng(0))
    np.testing.assert_array_equal(mixed, again)
    with pytest.raises(ValueError, match="labels"):
        draw_triplets([0, 0, 1, 1], "mixed", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="labels"):
        draw_triplets([0, 0, 1, 1, 2], "same_class", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="kinds"):
        draw_triplets(labels, "other", 1, np.random.default_rng(0))


def _tiny_resnet():
    torch.manual_seed(0)
    model = build_model("resnet8", in_channels=1, num_classes=3, image_size=8)
    model.eval()
    x = torch.randn(6, 1, 8, 8)
    return model, x


def test_head_substitution_on_a_resnet_reproduces_the_logits():
    model, x = _tiny_resnet()
    with torch.no_grad():
        z = model(x)
    for hook in ("stem", "layer1.0", "layer2.0", "pool", "fc", "layer2.0.conv1"):
        h = forward_outputs(model, x, [hook])[hook]
        torch.testing.assert_close(head_logits(model, hook, h, x), z)
        # a block output is a cut: the head ignores what the bypassed layers are fed
        other = head_logits(model, hook, h, torch.zeros_like(x))
        if hook == "layer2.0.conv1":  # inside a block: the shortcut still reads x
            assert not torch.allclose(other, z)
        else:
            torch.testing.assert_close(other, z)


def test_fragmentation_on_a_resnet_is_deterministic_per_seed():
    model, x = _tiny_resnet()
    x = torch.randn(12, 1, 8, 8)
    y = np.arange(12) % 3
    kw = dict(resolution=6, triplets=2, device="cpu", batch_size=64)
    hooks = ["input", "stem", "layer1.0", "layer2.0.conv1", "fc"]
    a = fragmentation(model, x, y, hooks, seed=3, **kw)
    b = fragmentation(model, x, y, hooks, seed=3, **kw)
    c = fragmentation(model, x, y, hooks, seed=4, **kw)
    assert a.rows() == b.rows()
    assert not np.array_equal(a.triplets["mixed"], c.triplets["mixed"])
    for key, v in a.counts.items():
        assert np.isfinite(v).all() and (v >= 1).all(), key
    assert {r["measure"] for r in a.rows()} == {
        f"fragmentation_{k}{s}" for k in ("same_class", "mixed") for s in ("", "_sd",
                                                                           "_triplets")}
    assert a.maps[("layer2.0.conv1", "mixed")].shape == (2, 6, 6)


def test_fragmentation_errors_name_the_argument():
    x, y = _rows(2)
    model = Stripes()
    with pytest.raises(ValueError, match="resolution"):
        fragmentation(model, x, y, ["input"], resolution=1, device="cpu")
    with pytest.raises(ValueError, match="triplets"):
        fragmentation(model, x, y, ["input"], triplets=0, device="cpu")
    with pytest.raises(ValueError, match="extend"):
        fragmentation(model, x, y, ["input"], extend=float("nan"), device="cpu")
    with pytest.raises(ValueError, match="kinds"):
        fragmentation(model, x, y, ["input"], kinds=["pairs"], device="cpu")
    with pytest.raises(ValueError, match="kinds"):
        fragmentation(model, x, y, ["input"], kinds=[], device="cpu")
    with pytest.raises(ValueError, match="keep_maps"):
        fragmentation(model, x, y, ["input"], keep_maps=-1, device="cpu")
    with pytest.raises(ValueError, match="hooks"):
        fragmentation(model, x, y, ["layer9"], device="cpu")
    with pytest.raises(ValueError, match="labels"):
        fragmentation(model, x, y[:3], ["input"], device="cpu")
    with pytest.raises(ValueError, match="triplet_rows"):
        fragmentation(model, x, y, ["input"], triplet_rows={"t": [[0, 1, 9]]}, device="cpu")
    with pytest.raises(ValueError, match="triplet_rows"):
        fragmentation(model, x, y, ["input"], triplet_rows={"t": [0, 1, 2]}, device="cpu")
    with pytest.raises(ValueError, match="positions"):
        fragmentation(model, x, y, ["input"], positions={"x": 0}, device="cpu")
