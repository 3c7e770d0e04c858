"""Reduced products of the sweep: an embedding that is an affine image of fewer features gets
its products from its coordinates in a basis of its span, with the measured residuals in the
error bound (rra.knn.lowrank); constant columns are left out. The sweep's graphs and sets stay
exactly those of brute force."""

from __future__ import annotations

import numpy as np
import pytest

from rra.knn import lowrank
from rra.knn.common import prepare_points
from rra.knn.exact import error_gamma
from rra.knn.sweep import sweep
from knn_reference import assert_sweep_matches_brute_force, brute_force


def affine_hooks(n=400, seed=0):
    """A 12-feature 'input' (with duplicated rows, a zero row and integer ties) and two affine
    images of it of 240 and 300 features (a conv-like map with a bias), plus a ReLU of one of
    them (not low-rank)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, 12)).astype(np.float32)  # ties everywhere
    x[n // 2: n // 2 + 20] = x[:20]                           # duplicated rows
    x[7] = 0
    w1, w2 = rng.normal(size=(12, 240)), rng.normal(size=(12, 300))
    z1 = (x @ w1).astype(np.float32)                           # linear: span of dimension 12
    z2 = (x @ w2 + rng.normal(size=300)).astype(np.float32)    # affine: 13
    return [x, z1, z2, np.maximum(z2, 0)]


def test_low_rank_sweep_equals_brute_force(one_thread):
    xs = affine_hooks()
    n = xs[0].shape[0]
    ks = [9, 120, n - 1]
    res = sweep([prepare_points(x, "euclidean") for x in xs], 10, ks, block_rows=53,
                progress=False, low_rank=True)
    features = [s["product_features"] for s in res.stats]
    assert features[1] == 12 and features[2] == 13  # the spans, not 240 and 300
    assert features[3] == 300 and features[0] == 12  # ReLU: no low rank; the input: d = 12
    assert_sweep_matches_brute_force(xs, res, 10, ks, atol=1e-6)


def test_low_rank_equals_full_products_and_narrows_bands(one_thread):
    xs = affine_hooks(n=600, seed=1)[1:3]
    args = dict(k_graph=15, ks=[200], progress=False)
    low = sweep([prepare_points(x, "euclidean") for x in xs], low_rank=True, **args)
    full = sweep([prepare_points(x, "euclidean") for x in xs], low_rank=False, **args)
    for a, b in zip(low.graphs, full.graphs):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(low.overlaps[200], full.overlaps[200])
    assert [s["product_features"] for s in full.stats] == [240, 300]
    # a bound narrower than the full products' here (γ of 13 terms, not 300): fewer band pairs
    assert all(lo["band_pairs"] < fu["band_pairs"] for lo, fu in zip(low.stats, full.stats))


def test_basis_completed_by_rows_the_sample_misses(one_thread):
    """Rows outside the strided sample that hold a direction no sampled row has (a pixel that
    is on in a few images only): the basis is completed by their residuals, exactly."""
    rng = np.random.default_rng(2)
    n = 900
    x = rng.normal(size=(n, 10))
    x = np.concatenate([x, np.zeros((n, 1))], axis=1)
    rare = np.array([5, 301, 777])  # not on the strided sample's rows (multiples of ~1.8)
    x[rare, 10] = 3.0
    z = (x @ rng.normal(size=(11, 256))).astype(np.float32)
    pts = prepare_points(z, "euclidean")
    old = lowrank.SAMPLE
    try:
        lowrank.SAMPLE = 64
        res = sweep([pts], 8, [], progress=False, low_rank=True)
    finally:
        lowrank.SAMPLE = old
    assert res.stats[0]["product_features"] == 11
    ref_idx, _ = brute_force(z, 8)
    np.testing.assert_array_equal(res.graphs[0][0], ref_idx)


def test_full_rank_and_small_inputs_keep_their_own_products():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 280)).astype(np.float32)
    sq = (z.astype(np.float64) ** 2).sum(1)
    assert lowrank.low_rank(z, sq, 2.0 ** -24, lambda r: r, error_gamma(280, 2.0 ** -24)) is None
    assert not lowrank.worth_trying(500, 4704, "euclidean", z)      # too few rows
    assert not lowrank.worth_trying(60_000, 4704, "cosine", z)      # normalised keys
    big = np.zeros((lowrank.MIN_ROWS, lowrank.MIN_D), np.float32)
    assert lowrank.worth_trying(*big.shape, "euclidean", big)


@pytest.mark.parametrize("noise", [0.0, 1e-7, 1e-6])
def test_bound_holds_for_every_pair(noise):
    """|ẽ_ij − e_ij| ≤ γ' (ñ_i + ñ_j)² for the coordinates' values o_ij = fl(u_i·u_j − h_j),
    against float64 (exact to far below the bound) products of the stored rows, with rows
    off the subspace by up to the accepted residuals."""
    rng = np.random.default_rng(4)
    n = 500
    z = rng.normal(size=(n, 9)) @ rng.normal(size=(9, 400)) + 3.0
    z = (z * (1 + noise * rng.normal(size=z.shape))).astype(np.float32)
    sq = (z.astype(np.float64) ** 2).sum(1)
    u = 2.0 ** -24
    found = lowrank.low_rank(z, sq, u, lambda r: r, error_gamma(400, u))
    assert found is not None and found.r < 400
    nc, gamma = found.bound(np.sqrt(sq), found.r, u)
    h = (sq / 2).astype(np.float32)
    o = (found.u @ found.u.T).astype(np.float32) - h[None, :]          # float32, like torch.mm
    z64 = z.astype(np.float64)
    e = sq[:, None] + sq[None, :] - 2 * z64 @ z64.T
    e_est = sq[:, None] - 2 * o.astype(np.float64)
    w = gamma * (nc[:, None] + nc[None, :]) ** 2
    assert np.all(np.abs(e_est - e) <= w)
    assert np.all(nc >= np.sqrt(sq))


def test_constant_columns_left_out_of_the_products(one_thread):
    """Columns of one value in every row (dead ReLU units, empty image borders) add nothing to
    a difference: left out of the products where they are at least 10 % of the columns, with
    the same graphs and sets as brute force; below that share the rows are used as they are."""
    rng = np.random.default_rng(5)
    n = 300
    x = rng.integers(0, 3, size=(n, 40)).astype(np.float32)   # ties everywhere
    x[:, [3, 4, 17, 30]] = 0.0                               # dead units
    x[:, [8, 9, 25]] = 2.5                                   # constant, not zero
    x[100:110] = x[:10]
    few = x.copy()
    few[:, [4, 17, 30, 8, 9, 25]] = rng.normal(size=(n, 6))   # one constant column: 2.5 %
    ks = [20, 150]
    res = sweep([prepare_points(x, "euclidean"), prepare_points(few, "euclidean")], 10, ks,
                block_rows=41, progress=False)
    assert [s["product_features"] for s in res.stats] == [33, 40]
    assert_sweep_matches_brute_force([x, few], res, 10, ks, atol=1e-6)
