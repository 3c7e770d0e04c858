"""Held-out placement (E11, rra.metrics.placement, rra.knn.cross): against float64 brute force
on tiny inputs, hand-computed votes, ties, duplicates, k limits, and the rra.api function."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import polars as pl
import pytest
import torch

from hooks import forward_outputs
from rra.api import placement
from rra.knn import knn_exact
from rra.knn.cross import cross_neighbours
from rra.metrics.class_response import class_response
from rra.metrics.placement import (OUTPUTS, agreement, placement_rows, placement_table, purity,
                                   vote_accuracy)
from rra.metrics.tables import SCHEMA


def brute_cross(ref: np.ndarray, q: np.ndarray, k: int, distance: str = "euclidean") -> np.ndarray:
    """float64 full distance matrix, rows sorted by (distance, reference index)."""
    r, q = ref.astype(np.float64), q.astype(np.float64)
    if distance == "cosine":
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return np.lexsort((np.broadcast_to(np.arange(len(r)), d.shape), d), axis=1)[:, :k]


def brute_loo(x: np.ndarray, k: int) -> np.ndarray:
    x = x.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]


def brute_vote(labels: np.ndarray) -> int:
    """Most frequent label, ties to the smaller label."""
    values, counts = np.unique(labels, return_counts=True)
    return int(values[counts == counts.max()].min())


def integer_rows(rng, n, d, lo=-2, hi=3):
    return rng.integers(lo, hi, size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block_rows", [1, 4, None])
def test_cross_matches_brute_force_with_ties_and_duplicates(dtype, block_rows):
    """Small integer coordinates: many exactly equal distances (exact in float64), duplicate
    reference rows and held-out rows equal to reference rows."""
    rng = np.random.default_rng(1)
    for _ in range(6):
        n_ref, m, d = int(rng.integers(3, 40)), int(rng.integers(1, 15)), int(rng.integers(1, 6))
        ref = integer_rows(rng, n_ref, d)
        ref[n_ref // 2:n_ref // 2 + 2] = ref[0]  # duplicate reference rows
        q = integer_rows(rng, m, d)
        q[0] = ref[0]  # a held-out row equal to (three) reference rows: distance 0
        for k in sorted({1, 2, min(5, n_ref), n_ref}):
            idx, sqd, _ = cross_neighbours(ref, q, k, block_rows=block_rows, dtype=dtype)
            expected = brute_cross(ref, q, k)
            np.testing.assert_array_equal(idx, expected)
            exact = ((q[:, None, :].astype(np.float64) - ref[expected].astype(np.float64)) ** 2)
            np.testing.assert_array_equal(sqd, exact.sum(-1))
        assert list(cross_neighbours(ref, q, 3)[0][0]) == [0, n_ref // 2, n_ref // 2 + 1]


def test_cross_cosine_matches_brute_force():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((30, 5))
    ref[7] = ref[3]  # duplicates (identical float64 values in any computation)
    q = rng.standard_normal((9, 5))
    q[0] = 3.0 * ref[3]  # same direction as rows 3 and 7
    for k in (1, 4, 30):
        idx, _, _ = cross_neighbours(ref, q, k, "cosine")
        np.testing.assert_array_equal(idx, brute_cross(ref, q, k, "cosine"))
    assert list(cross_neighbours(ref, q, 2, "cosine")[0][0]) == [3, 7]


def test_cross_cosine_collinear_rows_in_exact_order():
    """Rows along one direction (exactly: float32 values scaled by 2.5 in float64) are at equal
    cosine distance, which float64 may round apart; they come in index order."""
    rng = np.random.default_rng(5)
    r = rng.standard_normal(6).astype(np.float32).astype(np.float64)
    ref = np.stack([2.5 * r, rng.standard_normal(6), r, -r, 4.0 * r])
    for q in (r[None], rng.standard_normal((3, 6))):
        idx = cross_neighbours(ref, q, 5, "cosine")[0]
        for row in idx:  # rows 0, 2, 4 adjacent and in index order
            where = [list(row).index(j) for j in (0, 2, 4)]
            assert where == list(range(where[0], where[0] + 3))


def test_cross_cosine_duplicates_inside_a_near_tie_group():
    rng = np.random.default_rng(1)
    r = rng.standard_normal(4).astype(np.float32).astype(np.float64)
    q = rng.standard_normal((1, 4))
    ref = np.stack([r, r, 2.5 * r, -r])  # rows 0, 1, 2 at exactly equal cosine distance
    assert list(cross_neighbours(ref, q, 4, "cosine")[0][0]) == [3, 0, 1, 2]


def test_cross_cosine_exact_ties_order_by_index():
    """Orthogonal integer rows: exact cosine ties (distance √2) that float64 may round apart;
    the order is the exact one, by index (integer arithmetic)."""
    ref = np.array([[1, 0, 0], [0, 1, 1], [0, 2, -2], [0, 0, 3], [1, 1, 0]], np.float32)
    q = np.array([[1, 0, 0]], np.float32)
    keys = []
    for j, r in enumerate(ref.astype(int)):
        p = int(q[0].astype(int) @ r)
        keys.append((Fraction(-(1 if p > 0 else -1) * p * p, int(r @ r)), j))
    expected = [j for _, j in sorted(keys)]
    assert expected == [0, 4, 1, 2, 3]
    assert list(cross_neighbours(ref, q, 5, "cosine")[0][0]) == expected


def test_cross_certificate_failure_rechecks_the_row():
    """30 reference rows at the same distance from the query (±e_i): more ties than candidates,
    so the certificate fails and the row gets all distances; ties go to the smaller index."""
    ref = np.concatenate([np.eye(15), -np.eye(15)])[np.random.default_rng(6).permutation(30)]
    q = np.zeros((2, 15))
    q[1, 0] = 0.25
    idx, _, stats = cross_neighbours(ref, q, 3)
    assert stats["rows_rechecked"] >= 1 and stats["candidates"] < 30
    np.testing.assert_array_equal(idx, brute_cross(ref, q, 3))
    assert list(idx[0]) == [0, 1, 2]


def test_cross_k_limits_and_inputs():
    ref, q = np.eye(4), np.ones((2, 4))
    assert cross_neighbours(ref, q, 4)[0].shape == (2, 4)  # no self: k = n_R is allowed
    with pytest.raises(ValueError, match=r"k = 5 exceeds the number of reference rows n_R = 4"):
        cross_neighbours(ref, q, 5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        cross_neighbours(ref, q, 0)
    with pytest.raises(ValueError, match="3 features but the reference rows have 4"):
        cross_neighbours(ref, np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="held-out row 1 contains NaN"):
        cross_neighbours(ref, np.array([[0, 0, 0, 1.0], [np.nan, 0, 0, 0]]), 1)
    with pytest.raises(ValueError, match="zero norm"):
        cross_neighbours(ref, np.zeros((1, 4)), 1, "cosine")
    one = cross_neighbours(ref, np.array([[0, 0, 1.0, 0]]), 2)[0]  # a single held-out row
    np.testing.assert_array_equal(one, [[2, 0]])


def test_votes_purity_agreement_by_hand():
    y_ref = np.array([0, 0, 1, 1, 2])
    idx = np.array([[0, 2, 4],    # labels 0, 1, 2: a three-way tie → 0
                    [2, 3, 0],    # 1, 1, 0 → 1
                    [4, 2, 3]])   # 2, 1, 1 → 1
    y_q = np.array([0, 1, 2])
    assert vote_accuracy(idx, y_ref, y_q) == pytest.approx(2 / 3)
    assert vote_accuracy(idx, y_ref, y_q, k=1) == 1.0  # nearest labels 0, 1, 2 = y_q
    # k = 2: [0, 1] tie → 0 ✓; [1, 1] → 1 ✓; [2, 1] tie → 1 ✗
    assert vote_accuracy(idx, y_ref, y_q, k=2) == pytest.approx(2 / 3)
    assert vote_accuracy(idx, y_ref, np.array([0, 1, 1]), k=1) == pytest.approx(2 / 3)
    assert purity(idx, y_ref, y_q) == pytest.approx((1 / 3 + 2 / 3 + 1 / 3) / 3)
    other = np.array([[0, 1, 2], [3, 2, 1], [1, 0, 3]])
    # |∩| = 2, 2, 1 of k = 3: J = 2/4, 2/4, 1/5
    assert agreement(idx, other) == pytest.approx((0.5 + 0.5 + 0.2) / 3)
    assert agreement(idx, other, k=1) == pytest.approx((1 + 0 + 0) / 3)
    assert agreement(idx, idx) == 1.0
    # one class
    assert vote_accuracy(idx, np.zeros(5, int), np.zeros(3, int)) == 1.0
    assert purity(idx, np.zeros(5, int), np.zeros(3, int)) == 1.0
    # a held-out class absent from the reference rows is never voted
    assert vote_accuracy(idx, y_ref, np.array([3, 3, 3])) == 0.0


def embeddings(rng, hooks, n_ref, m):
    """Integer embeddings (ties everywhere), one hook with duplicate rows."""
    ref = {h: integer_rows(rng, n_ref, d) for h, d in zip(hooks, (3, 5, 2))}
    q = {h: integer_rows(rng, m, d) for h, d in zip(hooks, (3, 5, 2))}
    ref[hooks[1]][5:8] = ref[hooks[1]][0]
    q[hooks[1]][0] = ref[hooks[1]][0]
    return ref, q


def test_placement_rows_equal_brute_force():
    rng = np.random.default_rng(3)
    hooks = ["conv1", "conv2", "fc"]
    n_ref, m, ks = 25, 11, [1, 4, 7]
    ref, q = embeddings(rng, hooks, n_ref, m)
    y_ref, y_q = rng.integers(0, 3, n_ref), rng.integers(0, 3, m)
    table = placement_table(hooks, ref, q, y_ref, y_q, ks, run={"model": "toy", "probe": "p"})
    assert table.columns == list(SCHEMA)
    assert set(table["measure"]) == set(OUTPUTS)
    assert table.height == len(hooks) * len(ks) * 4 + (len(hooks) - 1) * len(ks)
    got = {(r["measure"], r["hook_a"], r["hook_b"], r["k"]): r["value"]
           for r in table.iter_rows(named=True)}
    for k in ks:
        for pos, h in enumerate(hooks):
            nq, nr = brute_cross(ref[h], q[h], k), brute_loo(ref[h], k)
            acc = np.mean([brute_vote(y_ref[row]) == y for row, y in zip(nq, y_q)])
            train = np.mean([brute_vote(y_ref[row]) == y for row, y in zip(nr, y_ref)])
            pur = np.mean([np.mean(y_ref[row] == y) for row, y in zip(nq, y_q)])
            assert got[("placement_acc", h, None, k)] == pytest.approx(acc)
            assert got[("placement_train_acc", h, None, k)] == pytest.approx(train)
            assert got[("placement_gap", h, None, k)] == pytest.approx(train - acc)
            assert got[("placement_purity", h, None, k)] == pytest.approx(pur)
            # the training-probe accuracy is class_response's kNN-vote accuracy of its graph
            assert train == pytest.approx(class_response(nr, y_ref).vote_accuracy)
            if pos:
                prev = brute_cross(ref[hooks[pos - 1]], q[hooks[pos - 1]], k)
                jac = np.mean([len(set(a) & set(b)) / len(set(a) | set(b))
                               for a, b in zip(prev, nq)])
                assert got[("placement_agreement", hooks[pos - 1], h, k)] == pytest.approx(jac)
    agree = table.filter(pl.col("measure") == "placement_agreement")
    assert (agree["pos_b"] == agree["pos_a"] + 1).all()
    assert set(table["backend"]) == {"exact"} and set(table["model"]) == {"toy"}


def test_placement_k_limits_one_class_and_k1():
    rng = np.random.default_rng(4)
    ref = {"a": integer_rows(rng, 6, 2)}
    q = {"a": integer_rows(rng, 3, 2)}
    with pytest.raises(ValueError, match=r"k = 6 must be smaller than the number of reference "
                                         r"\(training probe\) rows n_R = 6"):
        placement_rows(["a"], ref, q, np.zeros(6, int), np.zeros(3, int), [1, 6])
    with pytest.raises(ValueError, match=r"k = 9 .* n_R = 6"):
        placement_rows(["a"], ref, q, np.zeros(6, int), np.zeros(3, int), 9)
    rows = placement_rows(["a"], ref, q, np.zeros(6, int), np.zeros(3, int), [1, 5])
    values = {(r["measure"], r["k"]): r["value"] for r in rows}
    assert values[("placement_acc", 1)] == values[("placement_train_acc", 5)] == 1.0
    assert values[("placement_gap", 5)] == 0.0 and values[("placement_purity", 1)] == 1.0
    # k = 1: the held-out vote is its nearest reference row's label
    y_ref = np.arange(6) % 2
    rows = placement_rows(["a"], ref, q, y_ref, np.array([0, 1, 0]), 1)
    nearest = brute_cross(ref["a"], q["a"], 1)[:, 0]
    acc = np.mean(y_ref[nearest] == np.array([0, 1, 0]))
    assert next(r["value"] for r in rows if r["measure"] == "placement_acc") == pytest.approx(acc)
    with pytest.raises(ValueError, match="3 reference and 3 held-out rows, but 6 and 3 labels"):
        placement_rows(["a"], {"a": ref["a"][:3]}, q, y_ref, np.zeros(3, int), 1)


def test_api_placement_on_a_tiny_model(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 6 * 6, 3)).eval()
    hooks = ["0", "1", "3"]
    x_ref, y_ref = torch.randn(20, 1, 8, 8), torch.arange(20) % 3
    x_q, y_q = torch.randn(7, 1, 8, 8), torch.arange(7) % 3
    table = placement(model, x_ref, y_ref, x_q, y_q, hooks=hooks, k=[1, 3], batch_size=6,
                      out_dir=tmp_path, progress=False)
    assert (tmp_path / "reference" / "manifest.json").is_file()
    assert set(table["scale_a"]) == {"full"} and table.columns == list(SCHEMA)
    out_ref = forward_outputs(model, x_ref, hooks)
    out_q = forward_outputs(model, x_q, hooks)
    ref = {h: out_ref[h].flatten(1).numpy() for h in hooks}
    q = {h: out_q[h].flatten(1).numpy() for h in hooks}
    expected = placement_table(hooks, ref, q, y_ref.numpy(), y_q.numpy(), [1, 3],
                               run={"model": "Sequential"})
    key = ["measure", "hook_a", "hook_b", "k"]
    assert table.sort(key).drop("value").equals(expected.sort(key).drop("value"))
    np.testing.assert_allclose(table.sort(key)["value"], expected.sort(key)["value"])
    with pytest.raises(ValueError, match=r"k = 20 .* n_R = 20"):
        placement(model, x_ref, y_ref, x_q, y_q, hooks=hooks, k=20, progress=False)
