"""Core RRA metrics (NNTS, NNTP, class response, ClassRepSim, STAC scale choice) against
brute-force references written plainly here and against hand-computed fixtures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rra.metrics.class_response import class_response
from rra.metrics.classrepsim import ClassRepSim, choose_stac_scale, classrepsim
from rra.metrics.nnts import jaccard_per_row, nnts, nnts_by_class, nnts_matrix
from rra.metrics.nntp import nntp, undirected_edge_codes

TOL = 1e-12


# ---------------------------------------------------------------- helpers (tests only)

def random_graph(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """k distinct random other rows per row (self gets the largest key, so it is never taken)."""
    keys = rng.random((n, n)) + 2.0 * np.eye(n)
    return np.argsort(keys, axis=1)[:, :k].astype(np.int32)


def knn_brute(x: np.ndarray, k: int) -> np.ndarray:
    """Exact kNN by a dense distance matrix, self excluded, ties to the smaller index."""
    n = x.shape[0]
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j))
        out[i] = order[:k]
    return out


def jaccard_brute(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return np.array([len(set(a[i, :k]) & set(b[i, :k])) / len(set(a[i, :k]) | set(b[i, :k]))
                     for i in range(a.shape[0])])


def nntp_brute(graphs: list[np.ndarray], k: int, alpha: int) -> np.ndarray:
    """Per-pair loop over dense presence matrices."""
    n, L = graphs[0].shape[0], len(graphs)
    present = np.zeros((L, n, n), dtype=bool)
    for v, g in enumerate(graphs):
        for i in range(n):
            for j in g[i, :k]:
                present[v, i, j] = present[v, j, i] = True
    table = np.zeros((L, L), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            runs: list[list[int]] = []
            for v in range(L):
                if not present[v, i, j]:
                    continue
                if runs and v - runs[-1][1] - 1 <= alpha:  # gap of ≤ alpha absent hooks
                    runs[-1][1] = v
                else:
                    runs.append([v, v])
            for f, last in runs:
                table[f, last] += 1
    return table


def class_response_brute(g: np.ndarray, y: np.ndarray, k: int):
    classes = sorted(set(y.tolist()))
    C = len(classes)
    P = np.zeros((C, C))
    votes_ok = []
    same = []
    for i in range(g.shape[0]):
        labs = [y[j] for j in g[i, :k]]
        ci = classes.index(y[i])
        for lab in labs:
            P[ci, classes.index(lab)] += 1.0 / k
        counts = Counter(labs)
        vote = max(counts, key=lambda lab: (counts[lab], -lab))
        votes_ok.append(vote == y[i])
        same.append(sum(lab == y[i] for lab in labs) / k)
    sizes = np.array([(y == c).sum() for c in classes])
    P /= sizes[:, None]
    per_class = np.array([np.mean([ok for ok, yi in zip(votes_ok, y) if yi == c])
                          for c in classes])
    return P, float(np.mean(np.diag(P))), float(np.mean(same)), float(np.mean(votes_ok)), per_class


# ---------------------------------------------------------------- NNTS

# Hand fixture, n = 5, k = 2 (labels [0, 0, 1, 1, 1]):
#   row  A        B        m   J = m / (4 − m)
#   0    {1, 2}   {2, 1}   2   1
#   1    {0, 2}   {2, 3}   1   1/3
#   2    {3, 1}   {4, 0}   0   0
#   3    {4, 2}   {4, 2}   2   1
#   4    {3, 0}   {0, 1}   1   1/3
#   NNTS = (1 + 1/3 + 0 + 1 + 1/3) / 5 = 8/15; class 0: (1 + 1/3)/2 = 2/3, class 1: (0+1+1/3)/3 = 4/9
#   at k = 1 only row 3 agrees ({4} vs {4}, J = 1/(2 − 1) = 1): NNTS = 1/5
HAND_A = np.array([[1, 2], [0, 2], [3, 1], [4, 2], [3, 0]])
HAND_B = np.array([[2, 1], [2, 3], [4, 0], [4, 2], [0, 1]])
HAND_Y = np.array([0, 0, 1, 1, 1])


def test_nnts_hand_fixture():
    np.testing.assert_allclose(jaccard_per_row(HAND_A, HAND_B), [1, 1 / 3, 0, 1, 1 / 3],
                               rtol=0, atol=TOL)
    assert abs(nnts(HAND_A, HAND_B) - 8 / 15) < TOL
    assert abs(nnts(HAND_A, HAND_B, k=1) - 1 / 5) < TOL
    by_class = nnts_by_class(HAND_A, HAND_B, HAND_Y)
    assert set(by_class) == {0, 1}
    assert abs(by_class[0] - 2 / 3) < TOL and abs(by_class[1] - 4 / 9) < TOL
    M = nnts_matrix([HAND_A, HAND_B, HAND_A])
    expected = np.array([[1, 8 / 15, 1], [8 / 15, 1, 8 / 15], [1, 8 / 15, 1]])
    np.testing.assert_allclose(M, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", range(4))
def test_nnts_random_vs_brute(seed):
    rng = np.random.default_rng(seed)
    n, k_max, L = 14, 5, 4
    graphs = [random_graph(rng, n, k_max) for _ in range(L)]
    labels = rng.integers(0, 3, n)
    for k in (1, 3, k_max):
        for a in range(L):
            for b in range(L):
                ref = jaccard_brute(graphs[a], graphs[b], k)
                np.testing.assert_allclose(jaccard_per_row(graphs[a], graphs[b], k), ref,
                                           rtol=0, atol=TOL)
        M = nnts_matrix(graphs, k=k)
        ref_M = np.array([[jaccard_brute(ga, gb, k).mean() for gb in graphs] for ga in graphs])
        np.testing.assert_allclose(M, ref_M, rtol=0, atol=TOL)
        assert np.array_equal(M, M.T) and np.all(np.diag(M) == 1.0)
        by_class = nnts_by_class(graphs[0], graphs[1], labels, k)
        ref_j = jaccard_brute(graphs[0], graphs[1], k)
        for c in np.unique(labels):
            assert abs(by_class[int(c)] - ref_j[labels == c].mean()) < TOL


def test_nnts_identical_disjoint_and_full_k():
    rng = np.random.default_rng(1)
    g = random_graph(rng, 10, 4)
    assert nnts(g, g) == 1.0
    assert np.all(nnts_matrix([g, g.copy()]) == 1.0)
    n = 6  # A: the next two rows on a cycle, B: the two after those -> no shared neighbour
    A = np.array([[(i + 1) % n, (i + 2) % n] for i in range(n)])
    B = np.array([[(i + 3) % n, (i + 4) % n] for i in range(n)])
    assert nnts(A, B) == 0.0
    # k = n − 1: every row's neighbourhood is all other rows, whatever the order
    full_a, full_b = random_graph(rng, 9, 8), random_graph(rng, 9, 8)
    assert nnts(full_a, full_b) == 1.0
    assert np.all(nnts_matrix([full_a, full_b], k=8) == 1.0)


def test_nnts_duplicate_points_and_ties():
    # Duplicated and equidistant points: neighbour lists share rows and ties break by index.
    rng = np.random.default_rng(2)
    base = rng.integers(0, 3, size=(6, 2)).astype(float)
    x = np.concatenate([base, base, base[:3]])  # 15 rows, many exact duplicates
    y = x + rng.integers(0, 2, size=x.shape)    # a second "layer": shifted integer grid
    ga, gb = knn_brute(x, 5), knn_brute(y, 5)
    for k in (1, 2, 5):
        np.testing.assert_allclose(jaccard_per_row(ga, gb, k), jaccard_brute(ga, gb, k),
                                   rtol=0, atol=TOL)


def test_nnts_prefix_and_errors():
    rng = np.random.default_rng(3)
    a, b = random_graph(rng, 12, 6), random_graph(rng, 12, 4)
    # the graph at k is the prefix; k=None takes the smaller k_max
    np.testing.assert_array_equal(jaccard_per_row(a, b, 3), jaccard_per_row(a[:, :3], b[:, :3]))
    np.testing.assert_array_equal(jaccard_per_row(a, b), jaccard_per_row(a[:, :4], b))
    np.testing.assert_allclose(nnts_matrix([a, b])[0, 1], nnts(a, b, 4), rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="exceeds"):
        nnts(a, b, k=5)
    with pytest.raises(ValueError, match="exceeds"):
        nnts_matrix([a, b], k=5)
    with pytest.raises(ValueError, match="rows"):
        nnts(a, random_graph(rng, 13, 6))
    with pytest.raises(ValueError, match="rows"):
        nnts_matrix([a, a, random_graph(rng, 13, 6)])
    with pytest.raises(ValueError, match="at least 1"):
        nnts(a, b, k=0)
    with pytest.raises(ValueError, match="itself"):
        nnts(np.array([[0], [0]]), np.array([[1], [0]]))
    with pytest.raises(ValueError, match="more than once"):
        nnts(np.array([[1, 1], [0, 2], [0, 1]]), np.array([[1, 2], [0, 2], [0, 1]]))
    with pytest.raises(ValueError, match="labels"):
        nnts_by_class(a, b, np.zeros(11, dtype=int))
    with pytest.raises(ValueError, match="at least one"):
        nnts_matrix([])
    assert nnts_matrix([a]).tolist() == [[1.0]]


# ---------------------------------------------------------------- NNTP

# Hand chain, n = 4, k = 1 (row i -> its one neighbour), 5 hooks:
#   hook 0: 0→1 1→0 2→3 3→2  edges {01, 23}
#   hook 1: 0→1 1→0 2→0 3→0  edges {01, 02, 03}
#   hook 2: 0→2 1→3 2→0 3→1  edges {02, 13}
#   hook 3: 0→1 1→0 2→3 3→2  edges {01, 23}
#   hook 4: 0→1 1→2 2→1 3→2  edges {01, 12, 23}
# presence per pair over hooks 0..4:
#   01: 1 1 0 1 1   02: 0 1 1 0 0   03: 0 1 0 0 0   12: 0 0 0 0 1   13: 0 0 1 0 0   23: 1 0 0 1 1
# α = 0 runs: 01 [0,1] [3,4]; 02 [1,2]; 03 [1,1]; 12 [4,4]; 13 [2,2]; 23 [0,0] [3,4]
# α = 1: 01's one-hook gap is bridged -> [0,4]; 23's two-hook gap is not
# α = 2: 23 is bridged too -> [0,4]
HAND_CHAIN = [np.array(r).reshape(4, 1) for r in
              ([1, 0, 3, 2], [1, 0, 0, 0], [2, 3, 0, 1], [1, 0, 3, 2], [1, 2, 1, 2])]
HAND_T = {
    0: {(0, 0): 1, (0, 1): 1, (1, 1): 1, (1, 2): 1, (2, 2): 1, (3, 4): 2, (4, 4): 1},
    1: {(0, 0): 1, (0, 4): 1, (1, 1): 1, (1, 2): 1, (2, 2): 1, (3, 4): 1, (4, 4): 1},
    2: {(0, 4): 2, (1, 1): 1, (1, 2): 1, (2, 2): 1, (4, 4): 1},
}


@pytest.mark.parametrize("alpha", [0, 1, 2])
def test_nntp_hand_chain(alpha):
    expected = np.zeros((5, 5), dtype=np.int64)
    for (f, last), count in HAND_T[alpha].items():
        expected[f, last] = count
    res = nntp(HAND_CHAIN, alpha=alpha)
    np.testing.assert_array_equal(res.table, expected)
    np.testing.assert_array_equal(res.edge_totals, [2, 3, 2, 2, 3])
    assert res.persistent_all == {0: 0, 1: 1, 2: 2}[alpha]
    assert (res.n, res.k, res.alpha) == (4, 1, alpha)
    assert res.table.dtype == np.int64


@pytest.mark.parametrize("seed,L", [(0, 1), (1, 2), (2, 3), (3, 5), (4, 8), (5, 9)])
def test_nntp_random_vs_brute(seed, L):
    rng = np.random.default_rng(seed)
    n, k_max = 11, 3
    graphs = [random_graph(rng, n, k_max) for _ in range(L)]
    for k in (1, k_max):
        for alpha in (0, 1, 2):
            ref = nntp_brute(graphs, k, alpha)
            res = nntp(graphs, k=k, alpha=alpha)
            np.testing.assert_array_equal(res.table, ref)
            assert np.all(np.tril(res.table, -1) == 0)
            assert res.persistent_all == ref[0, L - 1]
            # every present (pair, hook) lies in exactly one run
            edges = [len({(min(i, j), max(i, j)) for i in range(n) for j in g[i, :k]})
                     for g in graphs]
            np.testing.assert_array_equal(res.edge_totals, edges)
            if alpha == 0:
                lengths = np.arange(L)[None, :] - np.arange(L)[:, None] + 1
                assert (res.table * lengths).sum() == sum(edges)


def test_undirected_edge_codes():
    # hook 4 of HAND_CHAIN: 0→1 1→2 2→1 3→2 -> pairs {0,1}, {1,2}, {2,3} -> codes 1, 6, 11 (n = 4)
    assert undirected_edge_codes(HAND_CHAIN[4]).tolist() == [1, 6, 11]
    assert sorted(undirected_edge_codes(HAND_CHAIN[4], unique=False).tolist()) == [1, 6, 6, 11]
    rng = np.random.default_rng(11)
    g = random_graph(rng, 13, 4).astype(np.int64)
    ref = sorted({min(i, j) * 13 + max(i, j) for i in range(13) for j in g[i]})
    assert undirected_edge_codes(g).tolist() == ref


def test_nntp_identical_chain_and_errors():
    rng = np.random.default_rng(7)
    g = random_graph(rng, 20, 4)
    res = nntp([g, g, g])
    # every edge persists through all three hooks
    assert res.persistent_all == res.edge_totals[0] == res.table.sum()
    wide = random_graph(rng, 20, 6)
    assert nntp([g, wide]).k == 4  # k=None: the smallest k_max
    with pytest.raises(ValueError, match="alpha"):
        nntp([g, g], alpha=-1)
    with pytest.raises(ValueError, match="exceeds"):
        nntp([g, g], k=5)
    with pytest.raises(ValueError, match="rows"):
        nntp([g, random_graph(rng, 21, 4)])


# ---------------------------------------------------------------- class response

# Hand fixture, n = 6, k = 2, labels y = [0, 0, 0, 1, 1, 2]:
#   row  K       neighbour labels  vote (ties -> smaller)  correct
#   0    [1, 3]  [0, 1]            0                       yes
#   1    [3, 4]  [1, 1]            1                       no
#   2    [0, 5]  [0, 2]            0                       yes
#   3    [4, 5]  [1, 2]            1                       yes
#   4    [5, 2]  [2, 0]            0                       no
#   5    [3, 4]  [1, 1]            1                       no
# P: class 0 (rows 0-2, 6 slots): c0 2, c1 3, c2 1 -> [1/3, 1/2, 1/6]
#    class 1 (rows 3-4, 4 slots): c0 1, c1 1, c2 2 -> [1/4, 1/4, 1/2]
#    class 2 (row 5, 2 slots):    c1 2           -> [0, 1, 0]
# purity = (1/3 + 1/4 + 0)/3 = 7/36; row-weighted = (1+0+1+1+0+0)/12 = 1/4
# vote accuracy = 3/6; per class [2/3, 1/2, 0]
CR_G = np.array([[1, 3], [3, 4], [0, 5], [4, 5], [5, 2], [3, 4]])
CR_Y = np.array([0, 0, 0, 1, 1, 2])


def test_class_response_hand_fixture():
    r = class_response(CR_G, CR_Y)
    P = np.array([[1 / 3, 1 / 2, 1 / 6], [1 / 4, 1 / 4, 1 / 2], [0, 1, 0]])
    np.testing.assert_array_equal(r.classes, [0, 1, 2])
    np.testing.assert_allclose(r.P, P, rtol=0, atol=TOL)
    np.testing.assert_array_equal(r.class_sizes, [3, 2, 1])
    assert abs(r.purity - 7 / 36) < TOL
    assert abs(r.row_weighted_purity - 1 / 4) < TOL
    assert r.vote_accuracy == 0.5
    np.testing.assert_allclose(r.vote_accuracy_per_class, [2 / 3, 1 / 2, 0], rtol=0, atol=TOL)
    assert r.k == 2
    # num_classes adds an empty class: a NaN row, summaries over the classes with rows
    r4 = class_response(CR_G, CR_Y, num_classes=4)
    np.testing.assert_array_equal(r4.classes, [0, 1, 2, 3])
    np.testing.assert_allclose(r4.P[:3, :3], P, rtol=0, atol=TOL)
    assert np.all(r4.P[:3, 3] == 0) and np.all(np.isnan(r4.P[3]))
    assert abs(r4.purity - 7 / 36) < TOL and np.isnan(r4.vote_accuracy_per_class[3])
    # k = 1: rows 0..5 vote [0, 1, 0, 1, 2, 1] -> correct rows 0, 2, 3
    r1 = class_response(CR_G, CR_Y, k=1)
    assert r1.vote_accuracy == 0.5 and r1.k == 1
    np.testing.assert_allclose(r1.P, [[2 / 3, 1 / 3, 0], [0, 1 / 2, 1 / 2], [0, 1, 0]],
                               rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", range(4))
def test_class_response_random_vs_brute(seed):
    rng = np.random.default_rng(seed)
    n = 16
    g = random_graph(rng, n, 6)
    y = rng.choice([1, 4, 5, 9], size=n)  # non-contiguous labels
    for k in (1, 2, 4, 6):  # even k makes vote ties frequent
        P, purity, row_purity, vote, per_class = class_response_brute(g, y, k)
        r = class_response(g, y, k)
        np.testing.assert_array_equal(r.classes, np.unique(y))
        np.testing.assert_allclose(r.P, P, rtol=0, atol=TOL)
        np.testing.assert_allclose(r.P.sum(axis=1), 1.0, rtol=0, atol=TOL)
        assert abs(r.purity - purity) < TOL and abs(r.row_weighted_purity - row_purity) < TOL
        assert abs(r.vote_accuracy - vote) < TOL
        np.testing.assert_allclose(r.vote_accuracy_per_class, per_class, rtol=0, atol=TOL)


def test_class_response_single_class_and_errors():
    rng = np.random.default_rng(5)
    g = random_graph(rng, 8, 3)
    r = class_response(g, np.full(8, 3))
    assert r.P.tolist() == [[1.0]] and r.purity == 1.0 and r.row_weighted_purity == 1.0
    assert r.vote_accuracy == 1.0 and r.classes.tolist() == [3]
    with pytest.raises(ValueError, match="labels"):
        class_response(g, np.zeros(7, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        class_response(g, np.zeros(8))
    with pytest.raises(ValueError, match="num_classes"):
        class_response(g, np.arange(8) % 3, num_classes=2)
    with pytest.raises(ValueError, match="exceeds"):
        class_response(g, np.zeros(8, dtype=int), k=4)


# ---------------------------------------------------------------- ClassRepSim

def test_classrepsim_hand_fixture():
    # Scales "1" = HAND_A, "full" = HAND_B, labels [0, 0, 1, 1, 1], k = 2.
    # S[c, 1, full]: class 0 (1 + 1/3)/2 = 2/3, class 1 (0 + 1 + 1/3)/3 = 4/9
    # class mean 5/9, spread (population std of two values) |2/3 − 4/9|/2 = 1/9
    # P_A: class 0 rows {1,2},{0,2} -> labels 0,1,0,1 -> [1/2, 1/2]; class 1 rows {3,1},{4,2},{3,0}
    #      -> 1,0,1,1,1,0 -> [1/3, 2/3]
    # P_B: class 0 rows {2,1},{2,3} -> 1,0,1,1 -> [1/4, 3/4]; class 1 rows {4,0},{4,2},{0,1}
    #      -> 1,0,1,1,0,0 -> [1/2, 1/2]
    # agreement: class 0 1 − ½(1/4 + 1/4) = 3/4; class 1 1 − ½(1/6 + 1/6) = 5/6
    r = classrepsim({"1": HAND_A, "full": HAND_B}, HAND_Y)
    assert r.scales == ("1", "full") and r.classes.tolist() == [0, 1] and r.k == 2
    np.testing.assert_allclose(r.S[:, 0, 1], [2 / 3, 4 / 9], rtol=0, atol=TOL)
    np.testing.assert_allclose(r.S[:, 1, 0], [2 / 3, 4 / 9], rtol=0, atol=TOL)
    assert np.all(r.S[:, 0, 0] == 1) and np.all(r.S[:, 1, 1] == 1)
    assert abs(r.class_mean[0, 1] - 5 / 9) < TOL and abs(r.class_spread[0, 1] - 1 / 9) < TOL
    np.testing.assert_allclose(r.agreement[:, 0, 1], [3 / 4, 5 / 6], rtol=0, atol=TOL)
    assert np.all(r.agreement[:, 0, 0] == 1)


@pytest.mark.parametrize("seed", range(3))
def test_classrepsim_random_vs_brute(seed):
    rng = np.random.default_rng(seed)
    n, scales = 15, ["1", "2", "4", "full"]
    graphs = {s: random_graph(rng, n, 5) for s in scales}
    y = rng.integers(0, 3, n)
    for k in (2, 5):
        r = classrepsim(graphs, y, k)
        classes = np.unique(y)
        P = {s: class_response_brute(graphs[s], y, k)[0] for s in scales}
        for ci, c in enumerate(classes):
            rows = np.flatnonzero(y == c)
            for a, s in enumerate(scales):
                for b, t in enumerate(scales):
                    ref = np.mean([len(set(graphs[s][i, :k]) & set(graphs[t][i, :k]))
                                   / len(set(graphs[s][i, :k]) | set(graphs[t][i, :k]))
                                   for i in rows])
                    assert abs(r.S[ci, a, b] - ref) < TOL
                    agree = 1 - 0.5 * np.abs(P[s][ci] - P[t][ci]).sum()
                    assert abs(r.agreement[ci, a, b] - agree) < TOL
        np.testing.assert_allclose(r.class_mean, r.S.mean(axis=0), rtol=0, atol=TOL)
        for a in range(4):
            for b in range(4):
                vals = r.S[:, a, b]
                ref_std = np.sqrt(np.mean((vals - vals.mean()) ** 2))
                assert abs(r.class_spread[a, b] - ref_std) < TOL


def test_classrepsim_errors_and_single_class():
    rng = np.random.default_rng(9)
    g = random_graph(rng, 10, 3)
    r = classrepsim({"2": g, "full": g}, np.zeros(10, dtype=int))
    assert isinstance(r, ClassRepSim) and r.S.shape == (1, 2, 2) and np.all(r.S == 1)
    assert np.all(r.agreement == 1) and np.all(r.class_spread == 0)
    with pytest.raises(ValueError, match="at least one scale"):
        classrepsim({}, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="scale full"):
        classrepsim({"2": g, "full": random_graph(rng, 11, 3)}, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        classrepsim({"2": g}, np.zeros(9, dtype=int))


# ---------------------------------------------------------------- STAC scale choice

def test_choose_stac_scale():
    c = choose_stac_scale({4: 0.8, 1: 0.3, 2: 0.55})
    assert (c.scale, c.qualified, c.tau) == (2, True, 0.5)
    assert list(c.evidence) == [1, 2, 4]
    assert choose_stac_scale({1: 0.5, 2: 0.9}).scale == 1  # S == tau qualifies
    assert choose_stac_scale({1: 0.3, 2: 0.55}, tau=0.0).scale == 1
    none = choose_stac_scale({1: 0.1, 4: 0.2, 2: 0.3}, tau=0.9)
    assert (none.scale, none.qualified) == (4, False)  # finest scale as the fallback
    assert choose_stac_scale({np.int64(2): np.float64(0.7)}).scale == 2
    with pytest.raises(ValueError, match="no candidate"):
        choose_stac_scale({})
    for tau in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            choose_stac_scale({1: 0.5}, tau=tau)
    for bad in ("full", 1.5, 0, True):
        with pytest.raises(ValueError, match="positive integer"):
            choose_stac_scale({bad: 0.5})
    with pytest.raises(ValueError, match="not in"):
        choose_stac_scale({1: float("nan")})


# --- large-n path: row blocks over memory-mapped graphs ---------------------------------------

def _shift_graph(n: int, k: int, seed: int) -> np.ndarray:
    """A valid graph without self or repeats: row i lists i + 1 + o (mod n), o distinct offsets."""
    offsets = np.random.default_rng(seed).choice(n - 1, size=k, replace=False)
    return ((np.arange(n)[:, None] + 1 + offsets[None, :]) % n).astype(np.int32)


def test_all_pairs_jaccard_does_not_depend_on_the_block_size():
    from rra.metrics.nnts import jaccard_rows_all_pairs

    rng = np.random.default_rng(3)
    graphs = [np.stack([rng.permutation(np.delete(np.arange(40), i))[:6] for i in range(40)])
              for _ in range(3)]
    whole = {(a, b): j for a, b, j in jaccard_rows_all_pairs(graphs, 5)}
    small = {(a, b): j for a, b, j in jaccard_rows_all_pairs(graphs, 5, max_elements=3 * 5 * 7)}
    assert whole.keys() == small.keys() == {(0, 1), (0, 2), (1, 2)}
    for pair in whole:
        np.testing.assert_array_equal(whole[pair], small[pair])
        ref = [len(set(x[:5]) & set(y[:5])) / len(set(x[:5]) | set(y[:5]))
               for x, y in zip(graphs[pair[0]], graphs[pair[1]])]
        np.testing.assert_allclose(whole[pair], ref, atol=1e-12)
    bad = graphs[1].copy()
    bad[33, 2] = 33  # row 33 lists itself: found in a later block, named by its global row
    with pytest.raises(ValueError, match="row 33 lists itself"):
        list(jaccard_rows_all_pairs([graphs[0], bad], 5, max_elements=2 * 5 * 7))


def test_all_pairs_nnts_memory_is_bounded_on_memory_mapped_graphs(tmp_path):
    """4 graphs of 20,000 × 1,000 (80 MB each as int32, 640 MB as int64 copies): the row-blocked
    NNTS must stay far below holding them in memory."""
    import subprocess
    import sys

    n, k = 20_000, 1_000
    for h in range(4):
        np.save(tmp_path / f"g{h}.npy", _shift_graph(n, k, h))
    code = f"""
import resource, numpy as np
from rra.metrics.nnts import nnts_matrix
graphs = [np.load(r"{tmp_path}/g%d.npy" % h, mmap_mode="r") for h in range(4)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = nnts_matrix(graphs, {k})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, m[0, 1], m[2, 3])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mb, m01, m23 = map(float, out.stdout.split())
    assert grown_mb < 350, f"peak RSS grew by {grown_mb:.0f} MB"
    # shifted graphs: row sets are offset sets; J is the same for every row
    o = [set(np.random.default_rng(h).choice(n - 1, size=k, replace=False)) for h in range(4)]
    assert m01 == pytest.approx(len(o[0] & o[1]) / len(o[0] | o[1]), abs=1e-12)
    assert m23 == pytest.approx(len(o[2] & o[3]) / len(o[2] | o[3]), abs=1e-12)


def test_frame_refuses_unknown_keys_and_old_tables_read_with_the_new_columns(tmp_path):
    """``frame`` names a key that is not a column (it used to drop it); tables written before
    the layer columns existed read back with those columns null, beside new ones."""
    import polars as pl

    from rra.metrics.tables import SCHEMA, frame, load_tables

    with pytest.raises(ValueError, match=r"\['dz'\]"):
        frame([dict(measure="m", value=1.0, dz=3)], {"model": "x"})
    with pytest.raises(ValueError, match=r"\['run'\]"):
        frame([dict(measure="m", value=1.0)], {"run": "x"})
    new = frame([dict(measure="translation_cosine", dx=-1, dy=2, value=0.5)], {"seed": 0})
    assert list(new.columns) == list(SCHEMA) and new.row(0, named=True)["dx"] == -1
    old_dir = tmp_path / "ds" / "run-a" / "metrics" / "p" / "euclidean-auto"
    new_dir = tmp_path / "ds" / "run-b" / "metrics" / "p" / "euclidean-auto"
    for d in (old_dir, new_dir):
        d.mkdir(parents=True)
    old_columns = [c for c in SCHEMA if c not in ("dx", "dy", "radius", "quantile", "pca_k")]
    new.select(old_columns).with_columns(measure=pl.lit("nnts")).write_parquet(
        old_dir / "nnts.parquet")
    new.write_parquet(new_dir / "nnts.parquet")
    both = load_tables(tmp_path, "nnts")
    assert both.height == 2 and both["dx"].to_list() == [None, -1]
