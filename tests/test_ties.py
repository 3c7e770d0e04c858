"""Mathematically equal distances that round differently in float64 (collinear rows under
cosine, permuted coordinates under euclidean) are ordered by the exact distance, then the index,
by every exact path: both searches, the per-block search, the sweep's graphs and its large-k
sets. The reference is brute force in rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from rra.knn import knn_exact
from rra.knn.common import prepare_points
from rra.knn.exact import exact_neighbours
from rra.knn.sweep import sweep
from rra.knn.ties import exact_keys, near_pairs, sqdist_bound


def exact_order(x: np.ndarray, distance: str) -> np.ndarray:
    """Row i: every j ≠ i sorted by (exact distance, j), in Fractions."""
    key = (x.tobytes(), x.shape, distance)
    if key not in _ORDERS:
        _ORDERS[key] = _exact_order(x, distance)
    return _ORDERS[key]


_ORDERS: dict = {}


def _exact_order(x: np.ndarray, distance: str) -> np.ndarray:
    rows = [[Fraction(float(v)) for v in r] for r in np.asarray(x)]
    n = len(rows)
    out = np.empty((n, n - 1), dtype=np.int64)
    for i, xi in enumerate(rows):
        def key(j):
            xj = rows[j]
            if distance == "cosine":  # 1 − cos ascending ⇔ sign(p) p² / ‖x_j‖² descending
                p = sum(a * b for a, b in zip(xi, xj))
                return (-(1 if p > 0 else -1) * p * p / sum(b * b for b in xj), j)
            return (sum((a - b) ** 2 for a, b in zip(xi, xj)), j)
        out[i] = sorted((j for j in range(n) if j != i), key=key)
    return out


def float64_order(x: np.ndarray, distance: str) -> np.ndarray:
    """The same by numpy float64 values (the order the issue compared with)."""
    z = np.asarray(x, dtype=np.float64)
    if distance == "cosine":
        z = z / np.linalg.norm(z, axis=1)[:, None]
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1)
    n = len(z)
    out = np.empty((n, n - 1), dtype=np.int64)
    for i in range(n):
        order = np.lexsort((np.arange(n), d2[i]))
        out[i] = order[order != i]
    return out


def collinear(seed=0):
    """Five directions, each as 9 exact float32 multiples (integers, so the rows are exactly
    collinear): every row's 8 nearest are at distance 0."""
    rng = np.random.default_rng(seed)
    dirs = rng.integers(-9, 10, size=(5, 6))
    scales = np.stack([rng.choice(np.arange(1, 40), 9, replace=False) for _ in range(5)]) * 0.25
    x = (dirs[:, None, :] * scales[:, :, None]).reshape(-1, 6).astype(np.float32)
    return x[rng.permutation(len(x))]


def permuted(seed=0):
    """Permutations of one float32 vector, and rows whose distance to every permutation is the
    same (constant rows): permuted sums round differently."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=12).astype(np.float32)
    perms = np.stack([v[rng.permutation(12)] for _ in range(30)])
    centres = np.repeat(rng.normal(size=(10, 1)), 12, axis=1).astype(np.float32)
    x = np.concatenate([perms, centres])
    return x[rng.permutation(len(x))]


CASES = [("cosine", collinear), ("euclidean", permuted)]


def with_duplicates(make):
    """``make``'s rows and exact copies of a third of them, shuffled: duplicates sit inside the
    near-tie groups (a copy of a row next to rows at exactly the same distance that round
    differently), where they must take part in the exact re-ordering."""
    def made(seed=0):
        rng = np.random.default_rng(seed + 100)
        x = make(seed)
        x = np.concatenate([x, x[rng.choice(len(x), len(x) // 3, replace=False)]])
        return x[rng.permutation(len(x))]
    made.__name__ = f"{make.__name__}_with_duplicates"
    return made


def integer_rows(seed=0):
    """Small random integers (no zero row): many duplicates and, under cosine, many rows
    pointing the same way (exactly equal distances)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(70, 3))
    x[(x == 0).all(axis=1), 0] = 1
    return x.astype(np.float32)


#: duplicate rows next to near ties (rra.knn.ties once cut a group at a pair of identical rows)
DUPLICATE_CASES = [("cosine", with_duplicates(collinear)), ("cosine", integer_rows),
                   ("euclidean", with_duplicates(permuted))]


@pytest.mark.parametrize("distance, make", CASES)
def test_cases_are_near_ties_float64_gets_wrong(distance, make):
    """The stress data: float64 brute force orders some rows differently from exact arithmetic,
    at the k-th place too, so the tests below could fail."""
    x = make()
    ex, fl = exact_order(x, distance), float64_order(x, distance)
    assert (ex != fl).any(axis=1).sum() >= 5
    k = 5
    assert sum(set(ex[i, :k]) != set(fl[i, :k]) for i in range(len(x))) >= 1


@pytest.mark.parametrize("distance, make", CASES + DUPLICATE_CASES)
@pytest.mark.parametrize("k", [1, 5, 12])
@pytest.mark.parametrize("search", ["symmetric", "heaps", "per block"])
def test_exact_search_orders_near_ties_exactly(distance, make, k, search, monkeypatch):
    import rra.knn.exact as exact

    x = make()
    ref = exact_order(x, distance)[:, :k]
    if search == "heaps":
        monkeypatch.setattr(exact, "HEAP_MIN_D", 1)
    if search == "per block":
        idx, _, stats = exact_neighbours(prepare_points(x, distance), k,
                                         queries=np.arange(len(x)), block_rows=7, progress=False)
        assert stats["search"] == "per block"
    else:
        idx, _ = knn_exact(x, k, distance, block_rows=8, progress=False)
    np.testing.assert_array_equal(idx, ref)


@pytest.mark.parametrize("distance, make", CASES + DUPLICATE_CASES)
def test_exact_search_k_is_n_minus_1(distance, make):
    x = make()
    idx, dist = knn_exact(x, len(x) - 1, distance, progress=False)
    np.testing.assert_array_equal(idx, exact_order(x, distance))


@pytest.mark.parametrize("distance, make", CASES + DUPLICATE_CASES)
def test_sweep_graphs_and_large_k_sets_exact(distance, make):
    x = make()
    y = make(seed=3)[: len(x)]  # a second hook with its own ties
    points = [prepare_points(x, distance), prepare_points(y, distance)]
    ks = [5, 9, 20]
    res = sweep(points, 4, ks, block_rows=6, progress=False)
    ref = [exact_order(a, distance) for a in (x, y)]
    for (g_idx, _), r in zip(res.graphs, ref):
        np.testing.assert_array_equal(g_idx, r[:, :4])
    for k in ks:
        want = [len(set(ref[0][i, :k]) & set(ref[1][i, :k])) for i in range(len(x))]
        np.testing.assert_array_equal(res.overlaps[k][:, 0], want)
    assert sum(s["rows_tie_resolved"] + s["sets_tie_resolved"] for s in res.stats) > 0


def test_bound_covers_the_float64_error():
    """B(ê) is at least the actual rounding error on the stress data (exact distances in
    Fractions), and near ties are flagged while identical rows are not."""
    from rra.knn.kernels import sqdist_pairs

    for distance, make in CASES:
        x = make()
        pts = prepare_points(x, distance)
        n = len(x)
        cols = np.array([[j for j in range(n) if j != i] for i in range(n)])
        got = np.empty(cols.shape)
        sqdist_pairs(np.asarray(pts.x), pts.kernel_norms, np.arange(n), cols, got)
        bound = sqdist_bound(got, pts.d, distance)
        rows = [[Fraction(float(v)) for v in r] for r in x]
        for i in range(0, n, 5):
            for t, j in enumerate(cols[i][:12]):
                if distance == "cosine":
                    p = sum(a * b for a, b in zip(rows[i], rows[j]))
                    ni = sum(a * a for a in rows[i])
                    nj = sum(b * b for b in rows[j])
                    true = 2 - 2 * float(p) / (float(ni) ** 0.5 * float(nj) ** 0.5)
                    err = abs(got[i, t] - true)
                    assert err <= bound[i, t] + 1e-15  # true itself rounded once or twice
                else:
                    true = sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
                    assert abs(Fraction(got[i, t]) - true) <= Fraction(bound[i, t])
    from rra.knn.ties import identical_rows

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(50, 2)).astype(np.float32)  # many duplicates
    a, b = rng.integers(0, 50, 2000), rng.integers(0, 50, 2000)
    want = (x[a] == x[b]).all(axis=1)
    np.testing.assert_array_equal(identical_rows(x, a, b), want)  # digests
    np.testing.assert_array_equal(identical_rows(x, a[:100], b[:100]), want[:100])  # direct
    x = np.array([[1, 2], [1, 2], [3, 4]], dtype=np.float32)
    pts = prepare_points(x, "euclidean")
    near = near_pairs(pts, np.array([[0, 1, 2]]), np.array([[0.0, 0.0, 8.0]]))
    assert not near.any()  # identical rows 0 and 1: already in index order


def test_exact_keys_order():
    x = np.array([[1, 0], [2, 0], [0.5, 0], [1, 1], [-1, 0]], dtype=np.float32)
    pts = prepare_points(x, "cosine")
    keys = exact_keys(pts, 0, np.array([1, 2, 3, 4]))
    assert keys[0] == keys[1] < keys[2] < keys[3]  # collinear equal, then 45°, then opposite
    pts = prepare_points(x, "euclidean")
    assert exact_keys(pts, 0, np.array([1, 2, 3]))[0] > exact_keys(pts, 0, np.array([2]))[0]


def duplicates_next_to_collinear_rows():
    """Two small cases under cosine, rows at exactly equal distance from the last row: (a) a
    duplicate pair r, r next to 2.5 r (float64 puts 2.5 r between the copies' group and the
    next), exact order [3, 0, 1, 2]; (b) 2.5 r, r, r with 2.5 r rounded farther than the copies,
    k = 1: the copies fill the k + 1 searched columns, and row 0 beyond them is the exact first."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal(4).astype(np.float32).astype(np.float64)
    a = np.stack([r, r, 2.5 * r, -r, rng.standard_normal(4)])
    rng = np.random.default_rng(12)
    r = rng.standard_normal(4).astype(np.float32).astype(np.float64)
    b = np.stack([2.5 * r, r, r, rng.standard_normal(4)])
    return a, b


@pytest.mark.parametrize("search", ["symmetric", "heaps", "per block", "cross"])
def test_duplicates_inside_a_near_tie_group(search, monkeypatch):
    """A near-tie group is re-ordered whole, identical rows included (they were once cut out of
    it), and a group of identical rows at the k-th place is followed past the searched columns."""
    import rra.knn.exact as exact
    from rra.knn.cross import cross_neighbours

    a, b = duplicates_next_to_collinear_rows()
    assert list(exact_order(a, "cosine")[4]) == [3, 0, 1, 2]
    assert exact_order(b, "cosine")[3][0] == 0
    pts = prepare_points(b, "cosine")
    ê = pts.sqdist(np.array([3]), np.array([[0, 1, 2]]))[0]
    assert ê[0] > ê[1] == ê[2]  # float64 alone would answer row 1
    for x, k in ((a, 4), (b, 1)):
        n = len(x)
        if search == "cross":
            idx = cross_neighbours(x[:n - 1], x[n - 1:], k, "cosine")[0][0]
        elif search == "per block":
            idx = exact_neighbours(prepare_points(x, "cosine"), k, queries=np.arange(n),
                                   progress=False)[0][n - 1]
        else:
            monkeypatch.setattr(exact, "HEAP_MIN_D", 1 if search == "heaps" else 10 ** 9)
            idx = knn_exact(x, k, "cosine", progress=False)[0][n - 1]
        np.testing.assert_array_equal(idx, exact_order(x, "cosine")[n - 1, :k])


def test_near_pairs_joins_groups_through_identical_rows():
    x = np.array([[1, 2], [1, 2], [3, 4], [5, 6]], dtype=np.float32)
    pts = prepare_points(x, "euclidean")
    # rows 0, 1 identical, 2 within the bounds of their value: one group of three
    near = near_pairs(pts, np.array([[0, 1, 2, 3]]), np.array([[8.0, 8.0, 8.0, 50.0]]))
    np.testing.assert_array_equal(near, [[True, True, False]])
    # identical rows alone: not a group, unless they reach the last of the searched columns
    cols, sqd = np.array([[2, 0, 1]]), np.array([[1.0, 8.0, 8.0]])
    np.testing.assert_array_equal(near_pairs(pts, cols, sqd, open_end=False), [[False, False]])
    np.testing.assert_array_equal(near_pairs(pts, cols, sqd), [[False, True]])
