"""Margins (rra.layers.margins): hidden margins against closed forms on linear heads, DeepFool
and constrained DeepFool against the exact distances of affine classifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rra.layers.margins import (deepfool, hidden_margin_rows, hidden_margins, input_margin_rows,
                                pca_basis)

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(d: int, k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.normal_()
    return lin


def _data(n: int, d: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _affine_margin(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: int,
                   P: np.ndarray | None = None) -> float:
    """Exact distance from x to the boundary of class y of z = Wx + b (inside span(P))."""
    best = np.inf
    for j in range(W.shape[0]):
        if j == y:
            continue
        w = W[y] - W[j]
        nw = np.linalg.norm(w if P is None else P @ w)
        if nw > 0:
            best = min(best, abs(w @ x + b[y] - b[j]) / nw)
    return best


# --------------------------------------------------------------------------- hidden margin

def test_hidden_margin_input_hook_of_a_linear_model_is_the_affine_distance():
    lin = _linear(5, 4)
    x = _data(40, 5)
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    z = x.astype(np.float64) @ W.T + b
    labels = z.argmax(1)
    labels[:7] = (labels[:7] + 1) % 4  # seven misclassified rows
    res = hidden_margins(lin, x, labels, ["input"], device="cpu", batch_size=16)
    spread = np.sqrt(np.var(x.astype(np.float64), axis=0, ddof=1).sum())
    assert res.spread["input"] == pytest.approx(spread, rel=1e-6)
    for i in range(40):
        if i < 7:
            assert not res.correct[i] and np.isnan(res.margin["input"][i])
            continue
        y = labels[i]
        zz = z[i].copy()
        zz[y] = -np.inf
        j = zz.argmax()
        d = (z[i, y] - z[i, j]) / np.linalg.norm(W[y] - W[j])
        assert res.raw["input"][i] == pytest.approx(d, rel=1e-5)
        assert res.margin["input"][i] == pytest.approx(d / spread, rel=1e-5)


def test_hidden_margin_hidden_and_logit_hooks_closed_form():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = _data(30, 4, seed=2)
    with torch.no_grad():
        h = model[1](model[0](torch.from_numpy(x))).double().numpy()
        z = model(torch.from_numpy(x)).double().numpy()
    labels = z.argmax(1)
    B = model[2].weight.detach().double().numpy()
    res = hidden_margins(model, x, labels, ["1", "2"], device="cpu", batch_size=7)
    spread_h = np.sqrt(np.var(h, axis=0, ddof=1).sum())
    spread_z = np.sqrt(np.var(z, axis=0, ddof=1).sum())
    assert res.correct.all()
    for i in range(30):
        y = labels[i]
        j = np.argsort(z[i])[-2]
        gap = z[i, y] - z[i, j]
        # head after ReLU output is linear: ∇_h = B_y − B_j
        assert res.margin["1"][i] == pytest.approx(gap / np.linalg.norm(B[y] - B[j]) / spread_h,
                                                   rel=1e-5)
        # the logits: ∇_z = e_y − e_j, norm √2
        assert res.margin["2"][i] == pytest.approx(gap / np.sqrt(2) / spread_z, rel=1e-5)
    rows = res.rows()
    q = {r["quantile"]: r["value"] for r in rows if r["measure"] == "hidden_margin"
         and r["hook_a"] == "1"}
    assert q == pytest.approx({p: float(np.quantile(res.margin["1"], p))
                               for p in (0.25, 0.5, 0.75)})
    n_row = next(r for r in rows if r["measure"] == "hidden_margin_n" and r["hook_a"] == "2")
    assert n_row["value"] == 30 and n_row["pos_a"] == 1 and n_row["scale_a"] == "full"


def test_hidden_margin_is_batch_size_invariant_and_rows_have_the_measures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = _data(25, 4)
    labels = np.random.default_rng(0).integers(0, 3, 25)
    a = hidden_margin_rows(model, x, labels, ["input", "0", "1", "2"], device="cpu",
                           batch_size=4)
    b = hidden_margin_rows(model, x, labels, ["input", "0", "1", "2"], device="cpu",
                           batch_size=25)
    va = np.array([r["value"] for r in a])
    vb = np.array([r["value"] for r in b])
    np.testing.assert_allclose(va, vb, rtol=1e-5, equal_nan=True)
    assert {r["measure"] for r in a} == {"hidden_margin", "hidden_margin_mean", "hidden_margin_n",
                                         "hidden_margin_flat", "hidden_margin_spread"}
    assert [r["pos_a"] for r in a if r["measure"] == "hidden_margin_n"] == [0, 1, 2, 3]


def test_hidden_margin_flat_rows_are_counted_and_left_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(0.01)
        model[0].bias.fill_(-100.0)  # every ReLU dead: logits = fc bias
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    x = _data(10, 3)
    res = hidden_margins(model, x, np.zeros(10, dtype=int), ["0", "1"], device="cpu")
    assert res.correct.all()
    # before the ReLU the gradient is zero (flat); after it, ∇_h = B_y − B_j ≠ 0, but the
    # output is constant over the probe (tr Cov = 0): no normalised margin either
    assert res.flat == {"0": 10, "1": 0}
    assert res.spread["1"] == 0.0 and np.isnan(res.margin["1"]).all()
    assert np.isfinite(res.raw["1"]).all()
    rows = res.rows()
    med = [r["value"] for r in rows if r["measure"] == "hidden_margin" and r["quantile"] == 0.5]
    assert np.isnan(med).all()
    n = {r["hook_a"]: r["value"] for r in rows if r["measure"] == "hidden_margin_n"}
    assert n == {"0": 0, "1": 0}


def test_hidden_margin_errors_name_the_argument():
    lin = _linear(3, 2)
    x = _data(6, 3)
    with pytest.raises(ValueError, match="labels"):
        hidden_margins(lin, x, np.zeros(5, dtype=int), ["input"], device="cpu")
    with pytest.raises(ValueError, match="labels"):
        hidden_margins(lin, x, np.full(6, 2), ["input"], device="cpu")
    with pytest.raises(ValueError, match="hooks"):
        hidden_margins(lin, x, np.zeros(6, dtype=int), ["nope"], device="cpu")
    with pytest.raises(ValueError, match="hooks"):
        hidden_margins(lin, x, np.zeros(6, dtype=int), [], device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        hidden_margins(lin, x, np.zeros(6, dtype=int), ["input"], device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="images"):
        hidden_margins(lin, x[:1], np.zeros(1, dtype=int), ["input"], device="cpu")
    with pytest.raises(ValueError, match="images"):
        hidden_margins(lin, (x * 10).astype(np.int64), np.zeros(6, dtype=int), ["input"],
                       device="cpu")
    with pytest.raises(ValueError, match="quantiles"):
        hidden_margin_rows(lin, x, np.zeros(6, dtype=int), ["input"], quantiles=[1.5],
                           device="cpu")


# --------------------------------------------------------------------------- DeepFool

def test_deepfool_binary_linear_margin_is_exact_in_one_step():
    w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    b = 0.3
    lin = nn.Linear(3, 2)
    with torch.no_grad():  # z_1 − z_0 = w·x + b
        lin.weight.copy_(torch.from_numpy(np.stack([-w / 2, w / 2])))
        lin.bias.copy_(torch.tensor([-b / 2, b / 2]))
    x = _data(20, 3)
    res = deepfool(lin, x, None, device="cpu", batch_size=6)
    exact = np.abs(x.astype(np.float64) @ w + b) / np.linalg.norm(w)
    assert res.converged.all() and res.attacked.all()
    np.testing.assert_allclose(res.margin, exact, rtol=1e-5, atol=1e-6)
    assert (res.iterations == 1).all()


def test_deepfool_multiclass_linear_margin_and_crossing():
    lin = _linear(6, 5, seed=4)
    x = _data(30, 6, seed=5)
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    labels = (x.astype(np.float64) @ W.T + b).argmax(1)
    labels[:4] = (labels[:4] + 1) % 5
    res = deepfool(lin, x, labels, overshoot=0.02, device="cpu", batch_size=8)
    assert not res.attacked[:4].any() and np.isnan(res.margin[:4]).all()
    assert res.attacked[4:].all() and res.converged[4:].all()
    exact = [_affine_margin(W, b, x[i].astype(np.float64), labels[i]) for i in range(4, 30)]
    np.testing.assert_allclose(res.margin[4:], exact, rtol=1e-5, atol=1e-6)
    # without overshoot the step lands on the boundary; with it, (1 + η) r crosses: a smaller
    # overshoot still converges with the same margin (affine: one step)
    res2 = deepfool(lin, x, labels, overshoot=1e-3, device="cpu")
    np.testing.assert_allclose(res2.margin[4:], exact, rtol=1e-5, atol=1e-6)


def test_deepfool_candidates_restrict_the_classes():
    # class 0 wins; class 1 is far (large logit gap), class 2 close but with the smallest logit
    # among the others... the closest boundary is found only when its class is a candidate
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0]]))
        lin.bias.copy_(torch.tensor([1.0, 0.5, 0.0]))
    x = np.array([[-0.005, 0.0]], dtype=np.float32)  # z = (1, 0.5, -0.5)
    full = deepfool(lin, x, [0], candidates=3, device="cpu")
    assert full.margin[0] == pytest.approx(0.015, rel=1e-4)  # to z_2 = z_0: 100 x = 1.5
    two = deepfool(lin, x, [0], candidates=2, device="cpu")  # only class 1: flat → stuck
    assert not two.converged[0] and np.isnan(two.margin[0])


def test_deepfool_nonlinear_crosses_and_is_batch_invariant():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    x = _data(24, 4, seed=8)
    a = deepfool(model, x, None, device="cpu", batch_size=5)
    b = deepfool(model, x, None, device="cpu", batch_size=24)
    np.testing.assert_allclose(a.margin, b.margin, rtol=1e-4, equal_nan=True)
    assert a.converged.mean() > 0.9
    assert (a.iterations[a.converged] >= 1).all()
    assert (a.margin[a.converged] > 0).all()


# --------------------------------------------------------------------------- PCA projection

def _axis_train(scales: list[float]) -> np.ndarray:
    """±s_i e_i: mean 0, covariance exactly diagonal, so the principal axes are e_1, e_2, …"""
    d = len(scales)
    rows = []
    for i, s in enumerate(scales):
        for sign in (1, -1):
            e = np.zeros(d, dtype=np.float32)
            e[i] = sign * s
            rows.append(e)
    return np.stack(rows)


def test_pca_basis_recovers_known_axes():
    train = _axis_train([1.0, 5.0, 0.5, 3.0])  # order by variance: e2, e4, e1, e3
    V = pca_basis(train, 2)
    np.testing.assert_allclose(V @ V.T, np.diag([0.0, 1.0, 0.0, 1.0]), atol=1e-12)
    with pytest.raises(ValueError, match="k = 8"):
        pca_basis(train, 8)


def test_constrained_deepfool_on_a_linear_model_matches_the_projected_distance():
    lin = _linear(4, 3, seed=9)
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    x = _data(15, 4, seed=10)
    labels = (x.astype(np.float64) @ W.T + b).argmax(1)
    train = _axis_train([1.0, 5.0, 0.5, 3.0])
    for k, axes in ((1, [1]), (2, [1, 3]), (3, [0, 1, 3])):
        P = np.zeros((4, 4))
        P[axes, axes] = 1.0
        res = deepfool(lin, x, labels, basis=pca_basis(train, k), device="cpu")
        assert res.converged.all()
        exact = [_affine_margin(W, b, x[i].astype(np.float64), labels[i], P) for i in range(15)]
        np.testing.assert_allclose(res.margin, exact, rtol=1e-5, atol=1e-6)
        # never shorter than the unconstrained margin
        free = [_affine_margin(W, b, x[i].astype(np.float64), labels[i]) for i in range(15)]
        assert (res.margin >= np.array(free) * (1 - 1e-6)).all()


def test_constrained_deepfool_orthogonal_subspace_cannot_converge():
    lin = nn.Linear(2, 2)
    with torch.no_grad():  # boundary depends on x_2 only
        lin.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
        lin.bias.zero_()
    x = np.array([[0.3, 0.2], [0.1, 0.5]], dtype=np.float32)
    train = _axis_train([2.0, 1.0])  # top-1 direction e_1
    res = deepfool(lin, x, [0, 0], basis=pca_basis(train, 1), device="cpu")
    assert not res.converged.any() and np.isnan(res.margin).all()
    rows = input_margin_rows(lin, x, [0, 0], train_inputs=train, ks=(1, "full"), device="cpu")
    by = {(r["measure"], r["pca_k"]): r["value"] for r in rows}
    assert by[("input_margin_not_converged", 1)] == 2 and np.isnan(by[("input_margin_mean", 1)])
    assert by[("input_margin_n", 1)] == 2
    assert by[("input_margin_mean", 2)] == pytest.approx(np.mean([0.2, 0.5]), rel=1e-5)
    assert by[("input_margin_not_converged", 2)] == 0
    assert all(r["hook_a"] == "input" and r["pos_a"] == 0 for r in rows)


def test_input_margin_rows_images_shaped_and_full_equals_d():
    lin = nn.Sequential(nn.Flatten(), _linear(2 * 3 * 3, 3, seed=11))
    x = np.random.default_rng(12).normal(size=(8, 2, 3, 3)).astype(np.float32)
    train = np.random.default_rng(13).normal(size=(40, 2, 3, 3)).astype(np.float32)
    with torch.no_grad():
        labels = lin(torch.from_numpy(x)).argmax(1).numpy()
    rows = input_margin_rows(lin, x, labels, train_inputs=train, ks=(1, 18, "full"),
                             device="cpu", batch_size=3)
    ks = sorted({r["pca_k"] for r in rows})
    assert ks == [1, 18]  # 18 = D and "full" coincide
    means = {r["pca_k"]: r["value"] for r in rows if r["measure"] == "input_margin_mean"}
    assert means[1] >= means[18]


def test_deepfool_errors_name_the_argument():
    lin = _linear(3, 2)
    x = _data(4, 3)
    with pytest.raises(ValueError, match="overshoot"):
        deepfool(lin, x, None, overshoot=-0.1, device="cpu")
    with pytest.raises(ValueError, match="max_iter"):
        deepfool(lin, x, None, max_iter=0, device="cpu")
    with pytest.raises(ValueError, match="basis"):
        deepfool(lin, x, None, basis=np.eye(4)[:, :2], device="cpu")
    with pytest.raises(ValueError, match="basis"):
        deepfool(lin, x, None, basis=np.ones((3, 1)), device="cpu")
    with pytest.raises(ValueError, match="train_inputs"):
        input_margin_rows(lin, x, np.zeros(4, dtype=int), ks=(1,), device="cpu")
    with pytest.raises(ValueError, match="train_inputs"):
        input_margin_rows(lin, x, np.zeros(4, dtype=int), train_inputs=_data(10, 5), ks=(1,),
                          device="cpu")
    with pytest.raises(ValueError, match="ks"):
        input_margin_rows(lin, x, np.zeros(4, dtype=int), ks=(0,), device="cpu")
    with pytest.raises(ValueError, match="ks"):
        input_margin_rows(lin, x, np.zeros(4, dtype=int), ks=(4,), device="cpu")
