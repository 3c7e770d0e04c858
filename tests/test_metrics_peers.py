"""Peer measures (rra.metrics.peers) and linear CKA (rra.metrics.cka) against brute force.

References here are deliberately naive: Python loops over rows, sets, list.index, dense n × n
distance and Gram matrices.
"""

from __future__ import annotations

import numpy as np
import pytest

from rra.metrics import MEASURES, measures_in
from rra.metrics import cka as cka_mod
from rra.metrics import peers
from rra.metrics.cka import linear_cka
from rra.metrics.peers import cycle_knn, mutual_knn, rank_similarity, second_order_cosine

TOL = 1e-6


# ------------------------------------------------------------------------------------------
# brute-force graph builders and references


def brute_knn(x: np.ndarray, k: int, distance: str = "euclidean") -> np.ndarray:
    """Exact kNN: dense distances, sorted by (distance, index), self excluded."""
    x = np.asarray(x, dtype=np.float64)
    if distance == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = x.shape[0]
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        order = np.lexsort((others, dist[i, others]))      # primary: distance, then index
        out[i] = others[order[:k]]
    return out


def random_graph(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        out[i] = rng.permutation(others)[:k]
    return out


def ref_mutual(a, b):
    return np.mean([len(set(a[i]) & set(b[i])) / a.shape[1] for i in range(len(a))])


def ref_cycle(a, b):
    hits = []
    for i in range(len(a)):
        reach = set()
        for j in b[i]:
            reach |= set(a[j])
        hits.append(1.0 if i in reach else 0.0)
    return np.mean(hits)


def ref_rank_rows(a, b):
    out = []
    for i in range(len(a)):
        la, lb = list(a[i]), list(b[i])
        shared = set(la) & set(lb)
        if not shared:
            out.append(0.0)
            continue
        v = sum(1.0 / l for l in range(1, len(shared) + 1))
        s = 0.0
        for j in shared:
            ra, rb = la.index(j) + 1, lb.index(j) + 1
            s += 2.0 / ((1 + abs(ra - rb)) * (ra + rb))
        out.append(s / v)
    return np.array(out)


def dense_dist(x, distance):
    x = np.asarray(x, dtype=np.float64)
    if distance == "cosine":
        g = x @ x.T
        nrm = np.sqrt(np.diag(g))
        cos = g / np.outer(nrm, nrm)
        return np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def ref_second_order_rows(a, b, xa, xb, distance="euclidean"):
    da, db = dense_dist(xa, distance), dense_dist(xb, distance)
    out = []
    for i in range(len(a)):
        u = sorted(set(a[i]) | set(b[i]))
        va, vb = da[i, u], db[i, u]
        na, nb = np.linalg.norm(va), np.linalg.norm(vb)
        if na == 0 and nb == 0:
            out.append(1.0)
        elif na == 0 or nb == 0:
            out.append(0.0)
        else:
            out.append(float(va @ vb / (na * nb)))
    return np.array(out)


def ref_hsic_biased(x, y):
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_unbiased(x, y):
    """Song et al. 2012, eq. 5, on raw (uncentred) linear kernels."""
    n = x.shape[0]
    kt, lt = x @ x.T, y @ y.T
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    val = (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * (one @ kt @ lt @ one))
    return val / (n * (n - 3))


def ref_cka(x, y, debiased):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    h = ref_hsic_unbiased if debiased else ref_hsic_biased
    return h(x, y) / np.sqrt(h(x, x) * h(y, y))


def graph_pairs():
    """(a, b, x_a, x_b) cases: random graphs, real kNN of random points, ties/duplicates."""
    rng = np.random.default_rng(0)
    cases = []
    n, k = 40, 6
    cases.append((random_graph(n, k, rng), random_graph(n, k, rng), None, None))
    xa = rng.normal(size=(n, 5))
    xb = xa @ rng.normal(size=(5, 7)) + 0.5 * rng.normal(size=(n, 7))
    cases.append((brute_knn(xa, k), brute_knn(xb, k), xa, xb))
    # integer grid with duplicate points: many exact ties, zero distances
    xa = rng.integers(0, 3, size=(n, 2)).astype(np.float64)
    xb = rng.integers(0, 2, size=(n, 3)).astype(np.float64)
    cases.append((brute_knn(xa, k), brute_knn(xb, k), xa, xb))
    return cases


CASES = graph_pairs()


# ------------------------------------------------------------------------------------------
# hand-computed fixture
#
#   a = [[1,2],[0,2],[1,3],[4,2],[3,2]]     b = [[2,1],[2,3],[1,4],[4,0],[0,1]]   (n = 5, k = 2)
#   m_i = 2, 1, 1, 1, 0  -> mutual = (1 + .5 + .5 + .5 + 0) / 5 = 0.5
#   rank: row 0: j=1 (r_a 1, r_b 2) -> 2/(2·3) = 1/3, j=2 (2, 1) -> 1/3; v = 1 + 1/2 -> s = 4/9
#         row 1: j=2 (2, 1) -> 1/3, v = 1 -> 1/3;   row 2: j=1 (1, 1) -> 2/(1·2) = 1
#         row 3: j=4 (1, 1) -> 1;                   row 4: no shared -> 0
#         mean = (4/9 + 3/9 + 9/9 + 9/9 + 0) / 5 = 5/9
#   cycle(a, b): row 0: a[2] ∪ a[1] = {0,1,2,3} ∋ 0; row 1: a[2] ∪ a[3] ∋ 1; row 2: a[1] ∪ a[4]
#         = {0,2,3} ∋ 2; row 3: a[4] ∪ a[0] ∋ 3; row 4: a[0] ∪ a[1] = {0,1,2} ∌ 4  -> 4/5
#   cycle(b, a): row 0: b[1] ∪ b[2] = {1,2,3,4} ∌ 0; row 1: b[0] ∪ b[2] ∋ 1; row 2: b[1] ∪ b[3]
#         ∋ 2; row 3: b[4] ∪ b[2] = {0,1,4} ∌ 3; row 4: b[3] ∪ b[2] ∋ 4  -> 3/5

HAND_A = np.array([[1, 2], [0, 2], [1, 3], [4, 2], [3, 2]])
HAND_B = np.array([[2, 1], [2, 3], [1, 4], [4, 0], [0, 1]])


def test_hand_fixture():
    assert mutual_knn(HAND_A, HAND_B) == pytest.approx(0.5, abs=1e-12)
    assert rank_similarity(HAND_A, HAND_B) == pytest.approx(5 / 9, abs=1e-12)
    assert rank_similarity(HAND_B, HAND_A) == pytest.approx(5 / 9, abs=1e-12)
    assert cycle_knn(HAND_A, HAND_B) == pytest.approx(0.8, abs=1e-12)
    assert cycle_knn(HAND_B, HAND_A) == pytest.approx(0.6, abs=1e-12)   # not symmetric
    np.testing.assert_allclose(peers._rank_similarity_rows(HAND_A, HAND_B),
                               [4 / 9, 1 / 3, 1, 1, 0], atol=1e-12)


def test_second_order_hand_fixture():
    # 1-D points, euclidean. x_a = 0, 1, 3, 6; x_b = 0, 2, 3, 7.
    # k = 1: K_a = 1, 0, 1, 2; K_b = 1, 2, 1, 2.
    #   row 0: U = {1}: (1) vs (2) -> 1;  row 1: U = {0, 2}: (1, 2) vs (2, 1) -> 4/5
    #   row 2: U = {1}: 1;  row 3: U = {2}: 1;  mean = 3.8 / 4 = 0.95
    # k = 2 (row 2 of a has a tie d(2,0) = d(2,3) = 3, broken to the smaller index 0):
    #   K_a = [1,2],[0,2],[1,0],[2,1];  K_b = [1,2],[2,0],[1,0],[2,1]
    #   row 0: (1,3)·(2,3) = 11 / sqrt(10·13);  row 1: U = {0,2}: (1,2)·(2,1) -> 4/5
    #   row 2: U = {0,1}: (3,2)·(3,1) = 11 / sqrt(13·10)
    #   row 3: U = {1,2}: (5,3)·(5,4) = 37 / sqrt(34·41)
    xa = np.array([[0.0], [1.0], [3.0], [6.0]])
    xb = np.array([[0.0], [2.0], [3.0], [7.0]])
    ka, kb = brute_knn(xa, 2), brute_knn(xb, 2)
    np.testing.assert_array_equal(ka, [[1, 2], [0, 2], [1, 0], [2, 1]])
    np.testing.assert_array_equal(kb, [[1, 2], [2, 0], [1, 0], [2, 1]])
    assert second_order_cosine(ka, kb, xa, xb, k=1) == pytest.approx(0.95, abs=1e-12)
    expected = [11 / np.sqrt(130), 0.8, 11 / np.sqrt(130), 37 / np.sqrt(34 * 41)]
    assert second_order_cosine(ka, kb, xa, xb) == pytest.approx(np.mean(expected), abs=1e-12)


# ------------------------------------------------------------------------------------------
# brute-force agreement


@pytest.mark.parametrize("case", range(len(CASES)))
def test_knn_measures_match_brute_force(case):
    a, b, _, _ = CASES[case]
    for k in (None, 1, 3):
        ak, bk = (a, b) if k is None else (a[:, :k], b[:, :k])
        assert abs(mutual_knn(a, b, k) - ref_mutual(ak, bk)) <= TOL
        assert abs(cycle_knn(a, b, k) - ref_cycle(ak, bk)) <= TOL
        assert abs(cycle_knn(b, a, k) - ref_cycle(bk, ak)) <= TOL
        assert abs(rank_similarity(a, b, k) - ref_rank_rows(ak, bk).mean()) <= TOL
    np.testing.assert_allclose(peers._rank_similarity_rows(a, b), ref_rank_rows(a, b), atol=TOL)
    # small blocks exercise the blocked paths (block remainders included)
    np.testing.assert_allclose(peers._rank_similarity_rows(a, b, block_rows=7),
                               ref_rank_rows(a, b), atol=TOL)
    assert abs(peers._cycle_knn_rows(a, b, max_elements=5 * 36).mean() - ref_cycle(a, b)) <= TOL


@pytest.mark.parametrize("case", [1, 2])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_second_order_matches_brute_force(case, distance):
    _, _, xa, xb = CASES[case]
    if distance == "cosine":
        xa, xb = xa + 0.25, xb + 0.25          # no zero-norm rows; duplicates still present
    a, b = brute_knn(xa, 6, distance), brute_knn(xb, 6, distance)
    ref = ref_second_order_rows(a, b, xa, xb, distance)
    assert abs(second_order_cosine(a, b, xa, xb, distance=distance) - ref.mean()) <= TOL
    # both distance paths; small max_elements: blocks with remainders, Gram rows re-read in tiles
    for method in ("gather", "gram"):
        for max_el in (2**23, 3 * 12 * 7):
            rows = peers._second_order_cosine_rows(a, b, xa, xb, distance, max_elements=max_el,
                                                   method=method)
            np.testing.assert_allclose(rows, ref, atol=TOL, err_msg=f"{method} {max_el}")
    ref2 = ref_second_order_rows(a[:, :2], b[:, :2], xa, xb, distance)
    assert abs(second_order_cosine(a, b, xa, xb, k=2, distance=distance) - ref2.mean()) <= TOL


def test_second_order_on_random_graph_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    a, b = random_graph(30, 5, rng), random_graph(30, 5, rng)
    xa = rng.normal(size=(30, 4)).astype(np.float32)
    xb = rng.normal(size=(30, 9)).astype(np.float32)
    np.save(tmp_path / "xa.npy", xa)
    np.save(tmp_path / "xb.npy", xb)
    ma = np.load(tmp_path / "xa.npy", mmap_mode="r")
    mb = np.load(tmp_path / "xb.npy", mmap_mode="r")
    ref = ref_second_order_rows(a, b, xa, xb).mean()
    assert abs(second_order_cosine(a, b, ma, mb) - ref) <= TOL
    assert second_order_cosine(a, b, ma, mb) == second_order_cosine(a, b, xa, xb)


# ------------------------------------------------------------------------------------------
# edge cases


def test_identical_graphs():
    for a, _, xa, _ in CASES:
        assert mutual_knn(a, a) == 1.0
        assert rank_similarity(a, a) == pytest.approx(1.0, abs=1e-12)
        assert cycle_knn(a, a) == pytest.approx(ref_cycle(a, a), abs=1e-12)
        if xa is not None:
            # same embedding up to isotropic scaling: identical distance vectors up to scale
            assert second_order_cosine(a, a, xa, 3.0 * xa) == pytest.approx(1.0, abs=1e-12)


def test_disjoint_neighbour_sets():
    n = 6
    a = np.array([[(i + 1) % n, (i + 2) % n] for i in range(n)])
    b = np.array([[(i + 3) % n, (i + 4) % n] for i in range(n)])
    assert mutual_knn(a, b) == 0.0
    assert rank_similarity(a, b) == 0.0
    # a[i + 3] ∪ a[i + 4] = {i + 4, i + 5, i + 6 = i}: every row returns to itself
    assert cycle_knn(a, b) == 1.0 == ref_cycle(a, b)
    # b[i + 1] ∪ b[i + 2] = {i + 4, i + 5, i + 6 = i}: also 1
    assert cycle_knn(b, a) == ref_cycle(b, a)


def test_k_equals_n_minus_one():
    rng = np.random.default_rng(2)
    n = 9
    xa, xb = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    a, b = brute_knn(xa, n - 1), brute_knn(xb, n - 1)
    assert mutual_knn(a, b) == 1.0
    assert cycle_knn(a, b) == 1.0
    r = rank_similarity(a, b)
    assert abs(r - ref_rank_rows(a, b).mean()) <= TOL and 0.0 < r <= 1.0
    ref = ref_second_order_rows(a, b, xa, xb).mean()
    assert abs(second_order_cosine(a, b, xa, xb) - ref) <= TOL


@pytest.mark.parametrize("method", ["gather", "gram"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_second_order_zero_vectors(method, offset):
    # rows 0, 1, 2 coincide in a; row 0's two neighbours are 1 and 2 at distance 0 (u_0 = 0).
    # A large offset makes ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j cancel: the Gram path must still give
    # exactly 0 for equal rows and the brute-force values for the others.
    rng = np.random.default_rng(4)
    base = np.array([[0.0], [0.0], [0.0], [5.0], [6.0], [7.5]])
    rot = rng.normal(size=(1, 3))
    xa = base @ rot + offset
    a = brute_knn(xa, 2)
    rows = peers._second_order_cosine_rows(a, a, xa, xa, "euclidean", method=method)
    assert rows[0] == 1.0 and rows[1] == 1.0 and rows[2] == 1.0          # both zero -> 1
    xb = np.array([[0.0], [1.0], [2.0], [5.0], [6.0], [7.5]]) @ rot + offset
    b = brute_knn(xb, 2)
    np.testing.assert_array_equal(a[0], [1, 2])
    np.testing.assert_array_equal(b[0], [1, 2])
    rows = peers._second_order_cosine_rows(a, b, xa, xb, "euclidean", method=method)
    assert rows[0] == 0.0                                                 # only u_0 zero -> 0
    np.testing.assert_allclose(rows, ref_second_order_rows(a, b, xa, xb), atol=TOL)
    dist = peers.pairwise_distances(xa)
    assert dist[0, 1] == dist[1, 2] == 0.0 and np.all(np.diagonal(dist) == 0.0)
    np.testing.assert_allclose(dist[3:, 3:], dense_dist(xa, "euclidean")[3:, 3:], rtol=1e-9)


def test_second_order_paths_agree():
    """Gram and gather paths: the same per-row values up to rounding, and "auto" picks by
    n ≤ GRAM_GATHER_RATIO · 2k."""
    rng = np.random.default_rng(5)
    n = 60
    xa = rng.normal(size=(n, 7)).astype(np.float32) + 3.0
    xb = (xa[:, :3] @ rng.normal(size=(3, 11)) + 0.3 * rng.normal(size=(n, 11))).astype(np.float32)
    xb[7] = xb[3]                                          # an exact duplicate pair
    for distance in ("euclidean", "cosine"):
        a, b = brute_knn(xa, 8, distance), brute_knn(xb, 8, distance)
        for k in (1, 3, 8):
            rows = {m: peers._second_order_cosine_rows(a[:, :k], b[:, :k], xa, xb, distance,
                                                       method=m)
                    for m in ("gather", "gram")}
            np.testing.assert_allclose(rows["gram"], rows["gather"], atol=1e-9, rtol=0)
            np.testing.assert_allclose(rows["gram"], ref_second_order_rows(
                a[:, :k], b[:, :k], xa, xb, distance), atol=TOL)
            auto = peers._second_order_cosine_rows(a[:, :k], b[:, :k], xa, xb, distance)
            expect = "gram" if n <= peers.GRAM_GATHER_RATIO * 2 * k else "gather"
            np.testing.assert_array_equal(auto, rows[expect])
    # with n > ratio · 2k, auto takes the gather path
    assert 2 * peers.GRAM_GATHER_RATIO * 2 < 300
    big = rng.normal(size=(300, 4))
    ga, gb = random_graph(300, 2, rng), random_graph(300, 2, rng)
    np.testing.assert_array_equal(
        peers._second_order_cosine_rows(ga, gb, big, big[::-1], "euclidean"),
        peers._second_order_cosine_rows(ga, gb, big, big[::-1], "euclidean", method="gather"))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_pairwise_distances_and_from_distances(distance, tmp_path):
    _, _, xa, xb = CASES[2]                                 # integer grid: duplicates, ties
    xa, xb = xa + 0.25, xb + 0.25
    ref = dense_dist(xa, distance)
    for max_el in (2**23, 5):                               # in memory / tiles of 2 rows
        got = peers.pairwise_distances(xa, distance, max_elements=max_el)
        # the cosine reference sqrt(2 − 2 cos θ) is itself off by ~1e-8 near 0
        np.testing.assert_allclose(got, ref, atol=1e-12 if distance == "euclidean" else 1e-7)
        assert np.all(np.diagonal(got) == 0.0) and np.all(got >= 0.0)
        same = np.all(xa[:, None] == xa[None, :], axis=-1)
        assert np.all(got[same] == 0.0)                     # equal rows: exactly 0
        if distance == "euclidean":
            assert np.all(got[~same] > 0.0)
    np.save(tmp_path / "xa.npy", xa.astype(np.float32))
    mm = np.load(tmp_path / "xa.npy", mmap_mode="r")
    np.testing.assert_array_equal(peers.pairwise_distances(mm, distance),
                                  peers.pairwise_distances(xa.astype(np.float32), distance))
    a, b = brute_knn(xa, 6, distance), brute_knn(xb, 6, distance)
    da, db = peers.pairwise_distances(xa, distance), peers.pairwise_distances(xb, distance)
    for k in (None, 2):
        direct = second_order_cosine(a, b, xa, xb, k, distance)
        assert abs(peers.second_order_cosine_from_distances(a, b, da, db, k) - direct) <= 1e-12
    ak = a[:, :2]
    assert abs(peers.second_order_cosine_from_distances(a, b, da, db, 2)
               - ref_second_order_rows(ak, b[:, :2], xa, xb, distance).mean()) <= TOL
    with pytest.raises(ValueError, match="dist_b must be an n × n distance matrix with n = 40"):
        peers.second_order_cosine_from_distances(a, b, da, db[:-1, :-1])
    with pytest.raises(ValueError, match="distance"):
        peers.pairwise_distances(xa, "manhattan")


def test_prefix_and_default_k():
    a, b, _, _ = CASES[1]
    # default k = the smaller stored k; explicit k uses the first k columns of both
    assert mutual_knn(a, b[:, :4]) == mutual_knn(a[:, :4], b[:, :4]) == mutual_knn(a, b, 4)
    assert rank_similarity(a, b, 4) == rank_similarity(a[:, :4], b[:, :4])


def test_measures_are_deterministic_and_symmetric_where_declared():
    a, b, xa, xb = CASES[1]
    for name, fn, args in [("mutual_knn", mutual_knn, ()), ("rank_similarity", rank_similarity, ()),
                           ("cycle_knn", cycle_knn, ()),
                           ("second_order_cosine", second_order_cosine, None)]:
        ab = fn(a, b, xa, xb) if args is None else fn(a, b)
        ba = fn(b, a, xb, xa) if args is None else fn(b, a)
        assert ab == (fn(a, b, xa, xb) if args is None else fn(a, b))
        if MEASURES[name].symmetric:
            assert ab == pytest.approx(ba, abs=1e-12)
    assert cycle_knn(HAND_A, HAND_B) != cycle_knn(HAND_B, HAND_A)
    assert {m.name for m in measures_in("peers")} == {"mutual_knn", "cycle_knn", "rank_similarity",
                                                      "second_order_cosine"}


def test_peer_errors():
    a, b, xa, xb = CASES[1]
    with pytest.raises(ValueError, match="graph a has 40 rows but graph b has 39"):
        mutual_knn(a, random_graph(39, 6, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="exceeds"):
        rank_similarity(a, b, k=7)
    with pytest.raises(ValueError, match="distance"):
        second_order_cosine(a, b, xa, xb, distance="manhattan")
    with pytest.raises(ValueError, match="x_b has 39 rows"):
        second_order_cosine(a, b, xa, xb[:-1])
    bad = xa.copy()
    bad[int(a[0, 0])] = np.nan
    with pytest.raises(ValueError, match="x_a: row .* NaN"):
        second_order_cosine(a, b, bad, xb)
    z = xa.copy()
    z[int(a[0, 0])] = 0.0
    with pytest.raises(ValueError, match="zero norm"):
        second_order_cosine(a, b, z, xb, distance="cosine")
    for method in ("gather", "gram"):
        with pytest.raises(ValueError, match="x_a: row .* NaN"):
            peers._second_order_cosine_rows(a, b, bad, xb, "euclidean", method=method)
        with pytest.raises(ValueError, match="x_a: row .* zero norm"):
            peers._second_order_cosine_rows(a, b, z, xb, "cosine", method=method)
    with pytest.raises(ValueError, match="method must be one of"):
        peers._second_order_cosine_rows(a, b, xa, xb, "euclidean", method="dense")


# ------------------------------------------------------------------------------------------
# linear CKA


def _rand(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(30, 5, 40), (25, 60, 3), (12, 2, 2)])
def test_cka_matches_dense_hsic(debiased, shape):
    n, p, q = shape
    x = _rand(n, p, 3) + 2.0                    # an offset: centring must be handled
    y = x[:, :1] * 0.5 + _rand(n, q, 4)        # partly related
    ref = ref_cka(x, y, debiased)
    for method in ("feature", "gram", "auto"):
        for block_rows, max_el in ((4096, 2**25), (7, 2 * q + 1)):
            got = linear_cka(x, y, debiased, method=method, block_rows=block_rows,
                             max_elements=max_el)
            assert abs(got - ref) <= TOL, (method, block_rows, got, ref)


def test_cka_paths_agree_and_known_values():
    # x = 1,2,3,4 and y = 1,3,2,4 (one feature each): centred (-1.5,-.5,.5,1.5), (-1.5,.5,-.5,1.5)
    # biased CKA = (x_cᵀy_c)² / (‖x_c‖²‖y_c‖²) = 4² / (5·5) = 0.64 (= squared correlation)
    # debiased: a = b = (2.25, .25, .25, 2.25); a·b = 10.25, Σa = Σb = 5, n = 4
    #   n(n-3)·HSIC_1(x, y) = (16 - 10.25) + 25/6 - 2·10.25/2 = -1/3
    #   n(n-3)·HSIC_1(x, x) = (25 - 10.25) + 25/6 - 10.25 = 26/3  ->  CKA_1 = (-1/3)/(26/3) = -1/26
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [3.0], [2.0], [4.0]])
    for method in ("feature", "gram"):
        assert linear_cka(x, y, method=method) == pytest.approx(0.64, abs=1e-12)
        assert linear_cka(x, y, True, method=method) == pytest.approx(-1 / 26, abs=1e-12)
    assert ref_cka(x, y, True) == pytest.approx(-1 / 26, abs=1e-12)
    x, y = _rand(50, 8, 5), _rand(50, 11, 6)
    for debiased in (False, True):
        f = linear_cka(x, y, debiased, method="feature")
        g = linear_cka(x, y, debiased, method="gram", block_rows=16)
        assert abs(f - g) <= 1e-10


def test_cka_invariances_and_identity():
    rng = np.random.default_rng(7)
    x, y = _rand(40, 6, 8), _rand(40, 9, 9)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    for debiased in (False, True):
        base = linear_cka(x, y, debiased)
        assert linear_cka(x @ q, y, debiased) == pytest.approx(base, abs=1e-10)
        assert linear_cka(4.5 * x, 0.1 * y, debiased) == pytest.approx(base, abs=1e-10)
        assert linear_cka(x + 3.0, y - 7.0, debiased) == pytest.approx(base, abs=1e-9)
        assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(x, 2.0 * x @ q, debiased) == pytest.approx(1.0, abs=1e-10)
        assert linear_cka(y, x, debiased) == pytest.approx(base, abs=1e-12)
    # unrelated data: biased CKA is clearly positive at small n, debiased is near 0
    assert linear_cka(x, y) > 0.1 and abs(linear_cka(x, y, True)) < linear_cka(x, y)


def test_cka_memmap_and_constant_columns(tmp_path):
    x = _rand(33, 5, 10).astype(np.float32)
    y = _rand(33, 7, 11).astype(np.float32)
    y[:, 2] = 0.1                                   # a constant column contributes nothing
    np.save(tmp_path / "x.npy", x)
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    for debiased in (False, True):
        ref = ref_cka(x, y, debiased)
        assert abs(linear_cka(mx, y, debiased, block_rows=8) - ref) <= TOL
        assert abs(linear_cka(x, np.delete(y, 2, axis=1), debiased) - ref) <= TOL


def test_constant_columns_centre_to_exact_zero():
    # 0.1 + 0.1 + 0.1 = 0.30000000000000004, / 3 != 0.1: the naive mean would leave residue
    x = np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 4.0]])
    mean = cka_mod._column_means(x, "x", block_rows=2)
    assert np.all(x[:, 0] - mean[0] == 0.0)
    assert mean[1] == pytest.approx(7 / 3, abs=1e-15)


def test_cka_method_choice():
    assert cka_mod._choose_method(60000, 20000, 20000) == "feature"
    assert cka_mod._choose_method(500, 20000, 20000) == "gram"
    assert cka_mod._choose_method(60000, 10, 64) == "feature"


def test_cka_errors():
    x, y = _rand(20, 3, 12), _rand(20, 4, 13)
    with pytest.raises(ValueError, match="x has 20 rows but y has 19"):
        linear_cka(x, y[:-1])
    with pytest.raises(ValueError, match="^y: .*constant"):
        linear_cka(x, np.full((20, 4), 0.1))
    with pytest.raises(ValueError, match="^x: .*constant"):
        linear_cka(np.ones((20, 3)), y, debiased=True)
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="x: .*NaN or inf"):
        linear_cka(bad, y)
    with pytest.raises(ValueError, match="at least 4 rows"):
        linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[:, 0], y)
    with pytest.raises(ValueError, match="method"):
        linear_cka(x, y, method="svd")


@pytest.mark.parametrize("shape", [(30, 5, 40), (25, 60, 3), (12, 2, 2), (4, 3, 1)])
def test_cka_gram_stats_match_linear_cka(shape, tmp_path):
    n, p, q = shape
    x = _rand(n, p, 14) + 5.0
    y = x[:, :1] * 0.5 + _rand(n, q, 15) - 2.0
    sx, sy = cka_mod.cka_gram(x), cka_mod.cka_gram(y, "y")
    np.testing.assert_allclose(sx.gram, (x - x.mean(0)) @ (x - x.mean(0)).T, atol=1e-10)
    # tiled Gram (blocks of 3 rows), a memory-mapped float32 input
    tiled = cka_mod.cka_gram(x, block_rows=3)
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    my = cka_mod.cka_gram(np.load(tmp_path / "y.npy", mmap_mode="r"), "y", max_elements=2 * q)
    for debiased in (False, True):
        direct = linear_cka(x, y, debiased)
        got = cka_mod.cka_from_stats(sx, sy, debiased)
        assert abs(got - direct) <= 1e-10, (debiased, got, direct)
        assert abs(got - ref_cka(x, y, debiased)) <= TOL
        assert abs(cka_mod.cka_from_stats(sy, sx, debiased) - got) <= 1e-12
        assert abs(cka_mod.cka_from_stats(tiled, sy, debiased) - direct) <= 1e-10
        assert abs(cka_mod.cka_from_stats(sx, my, debiased)
                   - linear_cka(x, y.astype(np.float32), debiased)) <= 1e-10
        assert cka_mod.cka_from_stats(sx, sx, debiased) == pytest.approx(1.0, abs=1e-12)


def test_cka_gram_stats_errors():
    x, y = _rand(20, 3, 16), _rand(20, 4, 17)
    sx = cka_mod.cka_gram(x)
    with pytest.raises(ValueError, match="at least 4 rows"):
        cka_mod.cka_from_stats(cka_mod.cka_gram(x[:3]), cka_mod.cka_gram(y[:3]), debiased=True)
    assert abs(cka_mod.cka_from_stats(cka_mod.cka_gram(x[:3]), cka_mod.cka_gram(y[:3]))
               - linear_cka(x[:3], y[:3])) <= 1e-10
    with pytest.raises(ValueError, match="x has 20 rows but y has 19"):
        cka_mod.cka_from_stats(sx, cka_mod.cka_gram(y[:-1], "y"))
    with pytest.raises(ValueError, match="exceeds max_rows = 10"):
        cka_mod.cka_gram(x, max_rows=10)
    with pytest.raises(ValueError, match="^layer1: .*constant"):
        cka_mod.cka_gram(np.full((20, 4), 0.1), "layer1")
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="x: .*NaN or inf"):
        cka_mod.cka_gram(bad)
    with pytest.raises(ValueError, match="at least 2 rows"):
        cka_mod.cka_gram(x[:1])


# ------------------------------------------------------------------------------------------
# metric tables: the dense per-hook path (n ≤ DENSE_MAX_ROWS) equals the per-pair functions


class _StubRun:
    """The parts of tables.RunGraphs that _pair_rows uses: 3 hooks at scale "full", 2 at "1"."""

    def __init__(self, distance: str):
        rng = np.random.default_rng(18)
        n = 30
        self.labels = np.arange(n) % 3
        self.distance = distance
        self.scales = ["1", "full"]
        self.pos = {"h0": 0, "h1": 1, "h2": 2}
        base = rng.normal(size=(n, 4))
        self.emb = {(h, s): (base @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)) + 1.0)
                    .astype(np.float32) for h, s, d in
                    [("h0", "full", 6), ("h1", "full", 9), ("h2", "full", 3), ("h0", "1", 2),
                     ("h2", "1", 5)]}
        self.graphs = {key: brute_knn(x, 5, distance) for key, x in self.emb.items()}

    def hooks_at(self, scale):
        return [h for h in self.pos if (h, scale) in self.emb]

    def graph(self, hook, scale):
        return self.graphs[(hook, scale)]

    def embedding(self, hook, scale):
        return self.emb[(hook, scale)]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_table_dense_path_matches_per_pair(distance, monkeypatch):
    from rra.metrics import MEASURES
    from rra.metrics import tables

    g = _StubRun(distance)
    so = [MEASURES["second_order_cosine"]]
    dense = tables._pair_rows(g, so, [2, 5]) + tables.cka_rows(g)
    monkeypatch.setattr(tables, "DENSE_MAX_ROWS", 0)
    plain = tables._pair_rows(g, so, [2, 5]) + tables.cka_rows(g)
    assert len(dense) == len(plain) == (3 + 1) * 2 * (2 + 2)   # 4 pairs, both orders, 2 k + 2 CKA
    for r, s in zip(dense, plain):
        assert {k: v for k, v in r.items() if k != "value"} == {k: v for k, v in s.items()
                                                                 if k != "value"}
        assert abs(r["value"] - s["value"]) <= 1e-10, r
        x, y = g.embedding(r["hook_a"], r["scale_a"]), g.embedding(r["hook_b"], r["scale_a"])
        if r["measure"] == "second_order_cosine":
            ga, gb = g.graph(r["hook_a"], r["scale_a"]), g.graph(r["hook_b"], r["scale_a"])
            k = r["k"]
            ref = ref_second_order_rows(ga[:, :k], gb[:, :k], x, y, distance).mean()
        else:
            assert r["k"] is None
            ref = ref_cka(x, y, r["measure"] == "linear_cka_debiased")
        assert abs(r["value"] - ref) <= TOL, r
