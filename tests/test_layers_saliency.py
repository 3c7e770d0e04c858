"""Saliency, filter grids and mean activation maps (rra.layers.saliency) against hand-computed
references on tiny models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rra.layers.saliency import (filter_grid, first_layer_filters, mean_activation_maps,
                                 saliency_maps, saliency_rows, top_share)

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_image_model(c: int = 2, h: int = 4, w: int = 5, k: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    lin = nn.Linear(c * h * w, k)
    with torch.no_grad():
        lin.weight.normal_()
    return nn.Sequential(nn.Flatten(), lin)


def _images(n: int, c: int = 2, h: int = 4, w: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


def test_saliency_of_a_linear_model_is_max_abs_weight_over_channels():
    model = _linear_image_model()
    x = _images(9)
    W = model[1].weight.detach().numpy().reshape(3, 2, 4, 5)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    labels = (pred + np.arange(9) % 2) % 3  # some right, some wrong
    res = saliency_maps(model, x, labels, device="cpu", batch_size=4)
    np.testing.assert_array_equal(res.predicted, pred)
    for i in range(9):
        np.testing.assert_allclose(res.true[i], np.abs(W[labels[i]]).max(0), rtol=1e-6)
        np.testing.assert_allclose(res.pred[i], np.abs(W[pred[i]]).max(0), rtol=1e-6)
    np.testing.assert_allclose(res.share_true, top_share(res.true))


def test_saliency_of_a_nonlinear_model_matches_finite_differences():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 4 * 5, 3))
    x = _images(2)
    res = saliency_maps(model, x, [0, 1], device="cpu")
    ref = copy.deepcopy(model).double()
    eps = 1e-5
    xi = torch.from_numpy(x[1:2]).double()
    num = np.zeros((2, 4, 5))
    for ch in range(2):
        for r in range(4):
            for c in range(5):
                d = torch.zeros_like(xi)
                d[0, ch, r, c] = eps
                with torch.no_grad():
                    num[ch, r, c] = abs((ref(xi + d)[0, 1] - ref(xi - d)[0, 1]).item()
                                        / (2 * eps))
    np.testing.assert_allclose(res.true[1], num.max(0), rtol=1e-4, atol=1e-6)
    assert res.true[1].std() > 0


def test_top_share_hand_computed():
    m = np.zeros((3, 4, 5))
    m[0, 1, 2] = 7.0                       # one hot pixel: share 1
    m[1] = 1.0                             # uniform, 20 px, top 5 % = 1 px: 1/20
    m[2] = np.arange(20).reshape(4, 5)     # top pixel 19 of total 190
    np.testing.assert_allclose(top_share(m, 0.05), [1.0, 1 / 20, 19 / 190])
    # ⌈0.05 · 30⌉ = 2 pixels
    m30 = np.arange(30, dtype=float).reshape(1, 5, 6)
    np.testing.assert_allclose(top_share(m30, 0.05), [(29 + 28) / 435])
    # top = 1: everything
    np.testing.assert_allclose(top_share(m30, 1.0), [1.0])
    assert np.isnan(top_share(np.zeros((1, 2, 2))))[0]
    with pytest.raises(ValueError, match="top"):
        top_share(m, 0.0)
    with pytest.raises(ValueError, match="maps"):
        top_share(-m)
    with pytest.raises(ValueError, match="maps"):
        top_share(m[0])


def test_saliency_rows_means_overall_and_per_class():
    model = _linear_image_model(seed=3)
    x = _images(10, seed=4)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    res = saliency_maps(model, x, labels, device="cpu")
    rows = res.rows()
    assert rows == saliency_rows(model, x, labels, device="cpu")
    overall = {r["measure"]: r["value"] for r in rows if "class" not in r}
    assert overall["saliency_top5pct_share_true"] == pytest.approx(res.share_true.mean())
    assert overall["saliency_top5pct_share_pred"] == pytest.approx(res.share_pred.mean())
    per_class = {r["class"]: r["value"] for r in rows
                 if r.get("class") is not None and r["measure"].endswith("_true")}
    assert per_class[0] == pytest.approx(res.share_true[labels == 0].mean())
    assert set(per_class) == {0, 1, 2}
    assert all(r["hook_a"] == "input" and r["pos_a"] == 0 and r["scale_a"] == "full"
               for r in rows)


def test_saliency_errors_name_the_argument():
    model = _linear_image_model()
    x = _images(3)
    with pytest.raises(ValueError, match="images"):
        saliency_maps(model, x.reshape(3, -1), [0, 0, 0], device="cpu")
    with pytest.raises(ValueError, match="labels"):
        saliency_maps(model, x, [0, 0], device="cpu")
    with pytest.raises(ValueError, match="labels"):
        saliency_maps(model, x, [0, 0, 3], device="cpu")
    with pytest.raises(ValueError, match="top"):
        saliency_maps(model, x, [0, 0, 0], top=2.0, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        saliency_maps(model, x, [0, 0, 0], batch_size=-1, device="cpu")


# --------------------------------------------------------------------------- filters

def _conv_model(weights: np.ndarray) -> nn.Module:
    conv = nn.Conv2d(weights.shape[1], weights.shape[0], weights.shape[2])
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weights))
    return nn.Sequential(nn.Identity(), conv, nn.ReLU(), nn.Conv2d(weights.shape[0], 2, 1))


def test_first_layer_filters_normalised_per_filter_and_globally():
    w = np.zeros((3, 1, 2, 2), dtype=np.float32)
    w[0, 0] = [[-1, 0], [1, 3]]          # min −1, max 3
    w[1, 0] = [[2, 2], [2, 2]]           # constant → 0.5
    w[2, 0] = [[0, -4], [0, 0]]          # max |w| of all = 4
    model = _conv_model(w)
    f = first_layer_filters(model)
    np.testing.assert_allclose(f[0, 0], [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(f[1], 0.5)
    np.testing.assert_allclose(f[2, 0], [[1, 0], [1, 1]])
    g = first_layer_filters(model, normalise="global")
    np.testing.assert_allclose(g[0, 0], [[0.375, 0.5], [0.625, 0.875]])
    np.testing.assert_allclose(g[2, 0], [[0.5, 0.0], [0.5, 0.5]])
    # layer by name: the second conv (1×1, 3 → 2)
    assert first_layer_filters(model, layer="3").shape == (2, 3, 1, 1)
    with pytest.raises(ValueError, match="layer"):
        first_layer_filters(model, layer="2")
    with pytest.raises(ValueError, match="layer"):
        first_layer_filters(model, layer="nope")
    with pytest.raises(ValueError, match="normalise"):
        first_layer_filters(model, normalise="minmax")
    with pytest.raises(ValueError, match="Conv2d"):
        first_layer_filters(nn.Linear(2, 2))


def test_filter_grid_layout():
    f = np.arange(5 * 1 * 2 * 2, dtype=np.float32).reshape(5, 1, 2, 2) / 20
    grid = filter_grid(f, pad=1, fill=-1)  # ⌈√5⌉ = 3 columns, 2 rows
    assert grid.shape == (2 * 3 - 1, 3 * 3 - 1)
    np.testing.assert_array_equal(grid[0:2, 3:5], f[1, 0])
    np.testing.assert_array_equal(grid[3:5, 3:5], f[4, 0])
    assert (grid[2, :] == -1).all() and (grid[3:5, 6:8] == -1).all()
    rgb = filter_grid(np.random.default_rng(0).random((4, 3, 3, 3)), ncols=4, pad=0)
    assert rgb.shape == (3, 12, 3)
    multi = filter_grid(np.ones((2, 5, 3, 3)), pad=1)  # rows = filters, cols = channels
    assert multi.shape == (2 * 4 - 1, 5 * 4 - 1)
    with pytest.raises(ValueError, match="ncols"):
        filter_grid(np.ones((2, 5, 3, 3)), ncols=2)
    with pytest.raises(ValueError, match="filters"):
        filter_grid(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="pad"):
        filter_grid(f, pad=-1)


def test_mean_activation_maps_are_channel_means():
    w = np.random.default_rng(5).normal(size=(3, 2, 1, 1)).astype(np.float32)
    model = nn.Sequential(_conv_model(w), nn.Flatten(), nn.LazyLinear(2))
    x = _images(4, seed=6)
    with torch.no_grad():
        model(torch.from_numpy(x))  # materialise the lazy layer
    maps = mean_activation_maps(model, x, ["input", "0.1", "0.2", "2"], device="cpu",
                                batch_size=3)
    assert set(maps) == {"input", "0.1", "0.2"}  # the flat fc output has no map
    np.testing.assert_allclose(maps["input"], x.mean(1), rtol=1e-6)
    b = model[0][1].bias.detach().numpy()
    conv = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    np.testing.assert_allclose(maps["0.1"], conv.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["0.2"], np.maximum(conv, 0).mean(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="hooks"):
        mean_activation_maps(model, x, ["7"], device="cpu")
