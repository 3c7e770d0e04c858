"""Tests of the common kNN model (rra.knn) against brute-force float64 references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rra.knn import (build_graphs, choose_backend, knn, knn_annoy, knn_exact, load_graph,
                     load_manifest, recall_at_k)
from rra.knn.annoy_backend import RecallMissError, RecallMissWarning, recall_by_k, recall_rows
from rra.knn.common import prepare_points
from rra.knn.exact import exact_neighbours
from knn_reference import brute_force


def assert_matches_reference(x, k, distance="euclidean", **opts):
    idx, dist = knn_exact(x, k, distance, progress=False, **opts)
    ref_idx, ref_dist = brute_force(x, k, distance)
    assert idx.dtype == np.int32 and dist.dtype == np.float32
    assert idx.shape == dist.shape == (len(x), k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-6, atol=1e-7)
    return idx, dist


def blobs(n=3000, d=32, centres=20, seed=0, spread=4.0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * spread
    return (c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))).astype(np.float32)


# --------------------------------------------------------------------------- exact backend

@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("block_rows", [None, 37, 1])
def test_exact_random_matches_brute_force(distance, block_rows):
    x = np.random.default_rng(1).normal(size=(203, 12)).astype(np.float32)
    assert_matches_reference(x, 7, distance, block_rows=block_rows)


def test_exact_ties_at_kth_boundary_keep_smallest_indices():
    # 2-D integer grid: many equal distances, also at the k-th place (k = 6: 4 at 1, then 4 at √2)
    g = np.stack(np.meshgrid(np.arange(9), np.arange(7), indexing="ij"), -1).reshape(-1, 2)
    x = g.astype(np.float32)
    idx, dist = assert_matches_reference(x, 6, block_rows=10)
    centre = 4 * 7 + 3  # grid point (4, 3): at 1 rows 24, 30, 32, 38; at √2 rows 23, 25, 37, 39
    np.testing.assert_array_equal(idx[centre], [24, 30, 32, 38, 23, 25])
    np.testing.assert_allclose(dist[centre], [1, 1, 1, 1, np.sqrt(2), np.sqrt(2)], rtol=1e-7)


def test_exact_duplicates_ordered_by_index():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, size=(150, 3)).astype(np.float32)  # 27 distinct points: many duplicates
    idx, dist = assert_matches_reference(x, 9, block_rows=16)
    _, _, stats = exact_neighbours(prepare_points(x, "euclidean"), 9, progress=False)
    assert stats["rows_widened"] > 0  # ties at the threshold: it had to be lowered
    dup = np.flatnonzero((x == x[0]).all(axis=1))[1:]
    n0 = min(9, dup.size)
    np.testing.assert_array_equal(idx[0, :n0], dup[:n0])
    assert (dist[0, :n0] == 0).all()


def test_exact_k_is_n_minus_1_and_float64_int_memmap_inputs(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    assert_matches_reference(x, 39, block_rows=6)                       # float64 input, k = n − 1
    assert_matches_reference(rng.integers(-5, 5, size=(60, 4)), 11)    # integer input
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert_matches_reference(mm, 8, "cosine", block_rows=9)


@pytest.mark.parametrize("d, search", [(6, "symmetric, group maxima"),
                                       (140, "symmetric, group maxima"),
                                       (6, "symmetric, heaps"), (6, "per block")])
def test_exact_certification_rechecks_cancellation_rows(d, search, monkeypatch):
    # Two clusters far apart with tiny spread: after centring ‖c‖² ≈ 1e6 while neighbour
    # distances² ≈ 1e-6·d, far below float32 resolution, so candidates alone cannot be trusted.
    rng = np.random.default_rng(4)
    x = rng.normal(scale=1e-3, size=(120, d))
    x[:60, 0] += 1e3
    x[60:, 0] -= 1e3
    from rra.knn import exact

    monkeypatch.setattr(exact, "HEAP_MIN_D", 1 if search.endswith("heaps") else 10 ** 9)
    queries = None if search.startswith("symmetric") else np.arange(120)
    idx, sqd, stats = exact_neighbours(prepare_points(x, "euclidean"), 5, queries=queries,
                                       block_rows=50, progress=False)
    ref_idx, ref_dist = brute_force(x, 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(np.sqrt(sqd), ref_dist, rtol=1e-6)
    assert stats["search"] == search and stats["rows_rechecked"] > 0
    if search.endswith("group maxima"):  # each row lowered its threshold before the re-check
        assert stats["rows_widened"] >= stats["rows_rechecked"]


def test_exact_stays_exact_under_coarse_matmul_precision():
    # A coarser float32 matmul setting widens the error bound: more rows are re-checked, the
    # answer stays exact; when the bound is void the products switch to float64 with a warning.
    import torch

    previous = torch.get_float32_matmul_precision()
    try:
        x = blobs(n=150, d=12, seed=13)
        _, _, fine = exact_neighbours(prepare_points(x, "euclidean"), 6, progress=False)
        torch.set_float32_matmul_precision("medium")
        assert_matches_reference(x, 6, block_rows=40)
        _, _, coarse = exact_neighbours(prepare_points(x, "euclidean"), 6, progress=False)
        assert coarse["exact_pairs"] > fine["exact_pairs"]
        assert coarse["rows_widened"] + coarse["rows_rechecked"] > 0
        with pytest.warns(UserWarning, match="too coarse"):
            assert_matches_reference(blobs(n=80, d=200, seed=14), 4, "cosine")
    finally:
        torch.set_float32_matmul_precision(previous)


def test_exact_float64_products_and_queries_subset():
    x = blobs(n=300, d=10, seed=5)
    ref_idx, ref_dist = brute_force(x, 4)
    idx, dist = knn_exact(x, 4, dtype="float64", progress=False)
    np.testing.assert_array_equal(idx, ref_idx)
    rows = np.array([0, 17, 299, 5])
    sub, sqd, _ = exact_neighbours(prepare_points(x, "euclidean"), 4, queries=rows, block_rows=3,
                                   progress=False)
    np.testing.assert_array_equal(sub, ref_idx[rows])
    np.testing.assert_allclose(np.sqrt(sqd), ref_dist[rows], rtol=1e-12)


def test_exact_prefix_property_and_sorted_rows():
    x = np.random.default_rng(6).integers(0, 4, size=(90, 2)).astype(np.float32)  # heavy ties
    idx10, dist10 = knn_exact(x, 10, block_rows=13, progress=False)
    for k in (1, 3, 7):
        idx, dist = knn_exact(x, k, block_rows=29, progress=False)
        np.testing.assert_array_equal(idx, idx10[:, :k])
        np.testing.assert_array_equal(dist, dist10[:, :k])
    assert (np.diff(dist10, axis=1) >= 0).all()
    assert (idx10 != np.arange(90)[:, None]).all()
    tie = (np.diff(dist10, axis=1) == 0)
    assert (np.diff(idx10, axis=1)[tie] > 0).all()


def test_exact_deterministic():
    x = blobs(n=500, d=16, seed=7)
    a = knn_exact(x, 6, block_rows=77, progress=False)
    b = knn_exact(x, 6, progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_exact_large_k_and_thread_count_do_not_change_the_graph():
    # k = 60 takes 75 candidates per row: the merge-sort paths of the kernels; the graph is the
    # same with 1 and 2 threads and with other block sizes (each row is one sequential loop)
    import torch

    x = blobs(n=400, d=9, seed=15)
    ref = assert_matches_reference(x, 60, block_rows=128)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn_exact(x, 60, block_rows=33, progress=False)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one[0], ref[0])
    np.testing.assert_array_equal(one[1], ref[1])


def test_exact_grouped_selection_is_used_and_exact():
    x = blobs(n=1500, d=8, seed=16, spread=1.0)
    x[700:720] = x[699]  # a run of duplicates: ties inside and across groups
    _, _, stats = exact_neighbours(prepare_points(x, "euclidean"), 5, progress=False)
    assert stats["group"] > 1
    assert_matches_reference(x, 5)
    assert_matches_reference(x, 5, "cosine", block_rows=256)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("d, block_rows", [(9, None), (9, 37), (131, None), (131, 1)])
@pytest.mark.parametrize("heaps", [False, True])
def test_exact_symmetric_search_matches_brute_force(distance, d, block_rows, heaps, monkeypatch):
    # every product computed once; rows fed from their blocks and through later blocks' columns,
    # selected by group maxima or (from HEAP_MIN_D on; here lowered) by heaps
    from rra.knn import exact

    monkeypatch.setattr(exact, "HEAP_MIN_D", 1 if heaps else 10 ** 9)
    rng = np.random.default_rng(18)
    x = blobs(n=260, d=d, seed=18, spread=1.5)
    x[100:104] = x[50]  # duplicates: ties at distance 0
    x[200:230, :] = 0  # a 2-D integer grid in the first two features: ties at every place
    x[200:230, :2] = rng.integers(0, 4, size=(30, 2))
    x[200:230, 2] = 10.0  # (non-zero rows, for cosine)
    _, _, stats = exact_neighbours(prepare_points(x, distance), 7, block_rows=block_rows,
                                   progress=False)
    assert stats["symmetric"]
    if heaps:
        assert stats["search"] == "symmetric, heaps" and stats["group"] is None
    else:
        assert stats["search"] == "symmetric, group maxima" and stats["group"] >= 1
        assert stats["block_rows"] % stats["group"] == 0 or stats["block_rows"] == 260
    assert_matches_reference(x, 7, distance, block_rows=block_rows)
    # and the same graph as the per-block search (queries given: no symmetric search)
    idx, sqd, rows_stats = exact_neighbours(prepare_points(x, distance), 7,
                                            queries=np.arange(260), progress=False)
    assert not rows_stats["symmetric"]
    np.testing.assert_array_equal(knn_exact(x, 7, distance, progress=False)[0], idx)


@pytest.mark.parametrize("group", [1, 2, 5])
@pytest.mark.parametrize("p", [1, 4, 29])
def test_select_row_kernel_against_sorting(group, p):
    from rra.knn import kernels

    rng = np.random.default_rng(p * 10 + group)
    o = rng.integers(-6, 6, size=(7, 30)).astype(np.float32)  # heavy ties
    o[np.arange(7), rng.integers(0, 30, 7)] = -np.inf  # the excluded self column
    o[3] = rng.normal(size=30).astype(np.float32)
    k = max(1, p // 2)
    ng, full = kernels._strided_groups(30, p, group)
    for r in range(7):
        vals, cols = np.empty(30, np.float32), np.empty(30, np.int64)
        c, tau, v_k = kernels._select_row(o[r], p, k, ng, full, np.empty(ng, np.float32),
                                          np.empty(30, np.int32), np.empty(64, np.float32),
                                          vals, cols)
        vals, cols = vals[:c], cols[:c]
        assert c >= p and np.unique(cols).size == c
        np.testing.assert_array_equal(o[r, cols], vals)
        left_out = np.delete(o[r], cols)
        assert (vals >= tau).all() and (left_out < tau).all()
        top = -np.sort(-o[r])
        np.testing.assert_array_equal(-np.sort(-vals)[:p], top[:p])  # the p largest are in
        assert (vals >= v_k).sum() >= k and top[k - 1] >= v_k >= top[k]


def test_kernel_helpers_against_numpy():
    from rra.knn import kernels

    v = np.array([-np.inf, -3e38, -1.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, 3e38, np.inf], np.float32)
    keys = np.empty(v.size, np.int32)
    kernels._int_keys(v, keys)
    keys = keys.astype(np.int64)
    assert (np.diff(keys[[0, 1, 2, 3, 5, 6, 7, 8, 9]]) > 0).all()  # −0.0 and 0.0 compare equal
    assert all(kernels._unkey(kk) == t for kk, t in zip(keys, v))
    rng = np.random.default_rng(17)
    es = rng.integers(0, 5, 130).astype(np.float64)
    js = rng.permutation(130).astype(np.int64)
    order = np.lexsort((js, es))
    for m in (130, 40):  # merge sort and insertion sort
        e, j = es[:m].copy(), js[:m].copy()
        kernels._sort_pairs(e, j)
        ref = np.lexsort((js[:m], es[:m]))
        np.testing.assert_array_equal(j, js[:m][ref])
        np.testing.assert_array_equal(e, es[:m][ref])
    assert order.size == 130
    x = rng.normal(size=(20, 7))
    norms = np.linalg.norm(x, axis=1)
    mean = (x / norms[:, None]).mean(axis=0)
    keys32 = np.empty((20, 8), np.float32)
    sq = np.empty(20)
    kernels.centred_keys(x, norms, mean, keys32, sq)
    c = (x / norms[:, None] - mean).astype(np.float32)
    np.testing.assert_array_equal(keys32[:, :7], c)
    np.testing.assert_allclose(sq, (c.astype(np.float64) ** 2).sum(axis=1), rtol=1e-15)
    np.testing.assert_allclose(keys32[:, 7], -0.5 * sq, rtol=1e-7)


def test_exact_errors():
    x = np.random.default_rng(8).normal(size=(20, 3))
    with pytest.raises(ValueError, match="smaller than the number of rows"):
        knn_exact(x, 20)
    with pytest.raises(ValueError, match="at least 1"):
        knn_exact(x, 0)
    with pytest.raises(ValueError, match="integer"):
        knn_exact(x, 2.5)
    with pytest.raises(ValueError, match="2-D"):
        knn_exact(x[0], 2)
    with pytest.raises(ValueError, match="2-D"):
        knn_exact(x[None], 2)
    with pytest.raises(ValueError, match="unknown distance"):
        knn_exact(x, 2, "manhattan")
    with pytest.raises(ValueError, match="block_rows"):
        knn_exact(x, 2, block_rows=0)
    bad = x.copy()
    bad[7, 1] = np.nan
    bad[12, 0] = np.inf
    with pytest.raises(ValueError, match="row 7 contains NaN or inf"):
        knn_exact(bad, 2)
    bad = x.copy()
    bad[[3, 11]] = 0
    with pytest.raises(ValueError, match=r"2 row\(s\) have zero norm.*rows 3, 11"):
        knn_exact(bad, 2, "cosine")
    knn_exact(bad, 2, "euclidean", progress=False)  # zero rows are fine under euclidean


# --------------------------------------------------------------------------- annoy backend

def sample_rows(n, size, seed):
    """The documented recall samples: one seeded draw of 2m distinct rows, m = min(size, n // 2);
    the first m (sorted) tune search_k, the other m (sorted) are held out."""
    m = min(size, n // 2)
    draw = np.random.default_rng(seed).choice(n, size=2 * m, replace=False)
    return np.sort(draw[:m]), np.sort(draw[m:])


@pytest.fixture(scope="module")
def clustered():
    x = blobs()
    return x, knn_exact(x, 10, progress=False)


def test_annoy_auto_meets_recall_target_truthfully(clustered, tmp_path):
    x, (exact_idx, exact_dist) = clustered
    idx, dist, info = knn_annoy(x, 10, "euclidean", n_trees=10, search_k="auto", seed=0,
                                index_path=tmp_path / "g.annoy", progress=False)
    assert idx.shape == (3000, 10) and idx.dtype == np.int32 and dist.dtype == np.float32
    assert info["recall"] >= 0.95 and info["recall_target_met"] is True
    tune, held = sample_rows(3000, 500, 0)
    assert info["recall_sample"] == 500 and info["tuning_sample"] == 500
    # the reported recall is that of the held-out rows of the final graph
    assert info["recall"] == pytest.approx(recall_at_k(idx[held], exact_idx[held]), abs=1e-12)
    assert info["recall_at_k"] == {"10": info["recall"]}
    # trajectory: doubling from n_trees·(k+1); only the last step meets the target, measured on
    # the tuning rows (Annoy's search is deterministic: the final graph's tuning rows give it)
    steps = [s for s, _ in info["tuning"]]
    assert steps[0] == 10 * 11 and all(b == 2 * a for a, b in zip(steps, steps[1:]))
    assert info["search_k"] == steps[-1]
    assert info["tuning"][-1][1] == pytest.approx(recall_at_k(idx[tune], exact_idx[tune]),
                                                  abs=1e-12)
    assert all(r < 0.95 for _, r in info["tuning"][:-1])
    # whole-graph recall agrees with the sample estimate
    assert recall_at_k(idx, exact_idx) == pytest.approx(info["recall"], abs=0.03)
    # rows are sorted by (distance, index) with exact distances
    assert (np.diff(dist, axis=1) >= 0).all() and (idx != np.arange(3000)[:, None]).all()
    z = x.astype(np.float64)
    np.testing.assert_allclose(dist, np.linalg.norm(z[idx] - z[:, None], axis=-1), rtol=1e-6)
    assert (tmp_path / "g.annoy").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.annoy")]


def test_annoy_deterministic_graph_and_index_file(clustered, tmp_path):
    x, _ = clustered
    x = x[:1500]
    runs = [knn_annoy(x, 10, "cosine", n_trees=5, search_k=200, seed=3,
                      index_path=tmp_path / f"{r}.annoy", progress=False) for r in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert (tmp_path / "0.annoy").read_bytes() == (tmp_path / "1.annoy").read_bytes()
    info = runs[0][2]
    assert info["tuning"] == [] and info["search_k"] == 200 and info["metric"] == "angular"
    assert info["tuning_sample"] == 0
    exact_idx, _ = knn_exact(x, 10, "cosine", progress=False)
    _, held = sample_rows(1500, 500, 3)
    assert info["recall"] == pytest.approx(recall_at_k(runs[0][0][held], exact_idx[held]))


def test_annoy_short_rows_fall_back_to_exact():
    x = np.random.default_rng(9).normal(size=(300, 6)).astype(np.float32)
    idx, dist, info = knn_annoy(x, 8, "euclidean", n_trees=2, search_k=1, recall_sample=50,
                                progress=False)
    # search_k = 1 visits a single leaf (fewer than k + 1 rows): every row falls back to exact
    assert info["rows_exact_fallback"] == 300
    np.testing.assert_array_equal(idx, brute_force(x, 8)[0])
    assert info["recall"] == 1.0


def test_annoy_errors():
    x = np.random.default_rng(10).normal(size=(30, 3))
    for kwargs, msg in [({"n_trees": 0}, "n_trees"), ({"search_k": "fast"}, "search_k"),
                        ({"search_k": 0}, "search_k"), ({"recall_target": 1.5}, "recall_target"),
                        ({"recall_sample": 0}, "recall_sample")]:
        with pytest.raises(ValueError, match=msg):
            knn_annoy(x, 3, "euclidean", progress=False, **kwargs)
    with pytest.raises(ValueError, match="smaller than the number of rows"):
        knn_annoy(x, 30, "euclidean", progress=False)


def test_recall_at_k():
    a = np.array([[1, 2, 3], [0, 2, 3]])
    e = np.array([[3, 2, 0], [1, 2, 3]])
    assert recall_at_k(a, e) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert recall_at_k(e, e) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        recall_at_k(a, e[:, :2])


# --------------------------------------------------------------------------- knn dispatcher

def test_knn_auto_backend_by_cost_model():
    x = blobs(n=200, d=8, seed=11)
    assert choose_backend(200, 8, 5, "auto", n_trees=4)["backend"] == "exact"
    idx, dist, info = knn(x, 5, backend="auto", n_trees=4, progress=False)
    assert info["backend"] == "exact" and info["recall"] == 1.0 and info["search_k"] is None
    assert info["backend_reason"].startswith("auto: exact predicted")
    assert set(info["predicted_seconds"]) >= {"exact", "annoy"}
    np.testing.assert_array_equal(idx, brute_force(x, 5)[0])
    # a (made-up) exact search ~10⁹ times slower than measured: Annoy is predicted faster
    slow = {"pair_seconds": 1.0}
    assert choose_backend(200, 8, 5, "auto", n_trees=4, cost=slow)["backend"] == "annoy"
    _, _, info = knn(x, 5, backend="auto", cost=slow, n_trees=4, block_rows=7, progress=False)
    assert info["backend"] == "annoy" and info["backend_requested"] == "auto"
    assert info["n_trees"] == 4 and info["backend_reason"].startswith("auto: Annoy predicted")
    _, _, info = knn(x, 5, backend="exact", cost=slow, progress=False)
    assert info["backend_reason"] == "requested exact" and info["predicted_seconds"] is None
    with pytest.raises(ValueError, match="unknown kNN option"):
        knn(x, 5, backend="exact", n_tree=4)
    with pytest.raises(ValueError, match="unknown kNN backend"):
        knn(x, 5, backend="faiss")


# --------------------------------------------------------------------------- stage

def write_embed_dir(root: Path, shapes: dict[tuple[str, str], tuple[int, int]]) -> Path:
    rng = np.random.default_rng(12)
    entries = []
    for (hook, scale), shape in shapes.items():
        name = f"{hook}@{scale}.npy"
        np.save(root / name, rng.normal(size=shape).astype(np.float32))
        entries.append({"hook": hook, "scale": scale, "file": name, "shape": list(shape)})
    hooks = list(dict.fromkeys(h for h, _ in shapes))
    scales = list(dict.fromkeys(s for _, s in shapes))
    (root / "manifest.json").write_text(json.dumps({"entries": entries, "hooks": hooks,
                                                    "scales": scales}))
    return root


@pytest.fixture()
def embed_dir(tmp_path):
    root = tmp_path / "embed"
    root.mkdir()
    return write_embed_dir(root, {("layer1.0", "1"): (80, 16), ("layer1.0", "full"): (80, 64),
                                  ("fc", "full"): (80, 10)})


def test_build_graphs_load_graph_round_trip(embed_dir, tmp_path):
    out = tmp_path / "knn" / "euclidean-exact"
    manifest = build_graphs(embed_dir, out, k=6, distance="euclidean", backend="exact",
                            options={"block_rows": 11}, progress=False)
    assert manifest == load_manifest(out)
    assert manifest["k_max"] == 6 and manifest["backend"] == "exact"
    assert [(e["hook"], e["scale"]) for e in manifest["entries"]] == \
        [("layer1.0", "1"), ("layer1.0", "full"), ("fc", "full")]
    assert manifest["hooks"] == ["layer1.0", "fc"]
    for entry in manifest["entries"]:
        x = np.load(embed_dir / f"{entry['hook']}@{entry['scale']}.npy")
        ref_idx, ref_dist = brute_force(x, 6)
        idx, dist = load_graph(out, entry["hook"], entry["scale"])
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-6)
        idx3, dist3 = load_graph(out, entry["hook"], entry["scale"], k=3)
        np.testing.assert_array_equal(idx3, ref_idx[:, :3])
        np.testing.assert_array_equal(idx3, knn_exact(x, 3, progress=False)[0])
        side = json.loads((out / f"{entry['hook']}@{entry['scale']}.json").read_text())
        assert side["backend"] == "exact" and side["k"] == 6 and side["info"]["recall"] == 1.0
        assert side["embedding"]["sha256"] == entry["embedding_sha256"]
        assert "versions" in side["provenance"]
        assert entry["recall"] == 1.0 and entry["search_k"] is None
        assert entry["backend_reason"] == side["backend_reason"] == "requested exact"
        assert entry["predicted_seconds"] is None
    assert not list(out.glob("*.annoy"))
    assert not list(out.glob(".*tmp*"))
    assert load_graph(out, "fc", "full")[0].dtype == np.int32


def test_build_graphs_annoy_writes_index_and_recall(embed_dir, tmp_path):
    out = tmp_path / "knn" / "cosine-annoy"
    manifest = build_graphs(embed_dir, out, k=5, distance="cosine", backend="annoy",
                            options={"n_trees": 4, "seed": 1, "recall_sample": 40},
                            progress=False)
    for entry in manifest["entries"]:
        stem = f"{entry['hook']}@{entry['scale']}"
        assert (out / f"{stem}.annoy").is_file() and entry["files"]["annoy"] == f"{stem}.annoy"
        assert entry["backend"] == "annoy" and 0 < entry["recall"] <= 1
        side = json.loads((out / f"{stem}.json").read_text())
        assert side["info"]["search_k"] == entry["search_k"] and side["info"]["seed"] == 1
        assert side["provenance"]["seed"] == 1
        assert entry["backend_reason"] == side["backend_reason"] == "requested annoy"


def test_build_graphs_auto_records_why(embed_dir, tmp_path):
    out = tmp_path / "knn" / "euclidean-auto"
    manifest = build_graphs(embed_dir, out, k=4, distance="euclidean", backend="auto",
                            progress=False)
    for entry in manifest["entries"]:
        side = json.loads((out / f"{entry['hook']}@{entry['scale']}.json").read_text())
        assert entry["backend"] == "exact" and side["backend_requested"] == "auto"
        assert entry["backend_reason"] == side["backend_reason"]
        assert entry["backend_reason"].startswith("auto: exact predicted")
        assert entry["predicted_seconds"] == side["predicted_seconds"]
        assert set(entry["predicted_seconds"]) >= {"exact", "annoy"}


def test_stage_errors(embed_dir, tmp_path):
    out = tmp_path / "knn" / "euclidean-exact"
    build_graphs(embed_dir, out, k=4, distance="euclidean", backend="exact", options={},
                 progress=False)
    with pytest.raises(ValueError, match=r"no graph for hook 'conv9'.*available: layer1.0@1, "
                                         r"layer1.0@full, fc@full"):
        load_graph(out, "conv9", "full")
    with pytest.raises(ValueError, match="k_max = 4"):
        load_graph(out, "fc", "full", k=5)
    with pytest.raises(FileNotFoundError, match="missing kNN manifest"):
        load_graph(tmp_path / "nowhere", "fc", "full")
    # a failing rebuild leaves no manifest behind (its presence means complete graphs)
    (embed_dir / "fc@full.npy").unlink()
    with pytest.raises(FileNotFoundError, match="fc@full.npy"):
        build_graphs(embed_dir, out, k=4, distance="euclidean", backend="exact", options={},
                     progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match=r"layer1.0@1.*smaller than the number of rows"):
        build_graphs(embed_dir, out, k=80, distance="euclidean", backend="exact", options={},
                     progress=False)
    with pytest.raises(ValueError, match="unknown kNN backend"):
        build_graphs(embed_dir, out, k=4, distance="euclidean", backend="hnsw", options={})
    with pytest.raises(FileNotFoundError, match="missing JSON file"):
        build_graphs(tmp_path, out, k=4, distance="euclidean", backend="exact", options={})
    shape_bad = tmp_path / "bad"
    shape_bad.mkdir()
    write_embed_dir(shape_bad, {("fc", "full"): (30, 4)})
    manifest = json.loads((shape_bad / "manifest.json").read_text())
    manifest["entries"][0]["shape"] = [31, 4]
    (shape_bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="differs from the embed manifest"):
        build_graphs(shape_bad, out, k=4, distance="euclidean", backend="exact", options={})


# --------------------------------------------------------------------------- recall misses

def gaussian(n=1000, d=64, seed=5):
    """High-dimensional Gaussian rows: the worst case of Annoy's recall."""
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


LOW = {"n_trees": 2, "search_k": 11, "recall_sample": 100, "progress": False}


def test_recall_rows_are_seeded_disjoint_tuning_and_held_out():
    tune, held = recall_rows(3000, 500, 7)
    assert tune.size == held.size == 500 and np.intersect1d(tune, held).size == 0
    assert (np.diff(tune) > 0).all() and (np.diff(held) > 0).all()
    again = recall_rows(3000, 500, 7)
    np.testing.assert_array_equal(again[0], tune)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(recall_rows(3000, 500, 8)[1], held)
    tune, held = recall_rows(101, 500, 0)  # small n: half the rows each, at most
    assert tune.size == held.size == 50 and np.intersect1d(tune, held).size == 0
    tune, held = recall_rows(2, 500, 0)
    assert sorted([*tune, *held]) == [0, 1]


def test_recall_by_k_is_prefix_recall_at_every_k():
    a = np.array([[1, 2, 3], [0, 2, 3]])
    e = np.array([[3, 2, 0], [1, 2, 3]])
    # row 0: {1} vs {3}: 0; {1,2} vs {3,2}: 1/2; row 1: {0} vs {1}: 0; {0,2} vs {1,2}: 1/2
    assert recall_by_k(a, e, [1, 2, 3]) == {1: 0.0, 2: 0.5, 3: pytest.approx(2 / 3)}
    rng = np.random.default_rng(3)
    e = np.array([rng.choice(50, 12, replace=False) for _ in range(40)])
    a = np.where(rng.random(e.shape) < 0.6, e, e + 50)  # keep or replace each neighbour
    a = np.array([rng.permutation(r) for r in a])
    got = recall_by_k(a, e, range(1, 13))
    for kk in range(1, 13):
        assert got[kk] == pytest.approx(recall_at_k(a[:, :kk], e[:, :kk]), abs=1e-12)
    with pytest.raises(ValueError, match=r"outside \[1, 12\]"):
        recall_by_k(a, e, [13])


def test_annoy_fixed_low_search_k_is_an_error_naming_the_recall():
    x = gaussian()
    with pytest.raises(RecallMissError) as err:
        knn_annoy(x, 10, "euclidean", name="fc@full.npy (hook fc, scale full)", **LOW)
    message = str(err.value)
    # the same graph kept under warn gives the recall the message reports
    with pytest.warns(RecallMissWarning):
        _, _, info = knn_annoy(x, 10, "euclidean", on_recall_miss="warn", **LOW)
    assert info["recall"] < 0.5
    assert message.startswith("fc@full.npy (hook fc, scale full): ")
    assert f"recall@10 = {info['recall']:.3f} on 100 held-out rows" in message
    assert "recall_target = 0.95" in message and "fixed search_k = 11" in message
    for fix in ("raise knn.annoy.search_k", "knn.backend: exact", "knn.on_recall_miss: warn"):
        assert fix in message
    assert isinstance(err.value, ValueError)


def test_annoy_capped_auto_search_k_is_an_error():
    with pytest.raises(RecallMissError, match=r"recall@10 = 0\.\d+ on 100 held-out rows.*"
                                              r"search_k = 30 \(auto, capped at max_search_k\).*"
                                              r"raise knn.annoy.max_search_k \(now 30\)"):
        knn_annoy(gaussian(), 10, n_trees=2, search_k="auto", max_search_k=30,
                  recall_sample=100, progress=False)


def test_annoy_recall_miss_warn_keeps_the_graph_flagged():
    x = gaussian()
    with pytest.warns(RecallMissWarning, match="recall_target = 0.95"):
        idx, dist, info = knn_annoy(x, 10, "euclidean", on_recall_miss="warn",
                                    recall_k=[1, 5], **LOW)
    assert info["recall_target_met"] is False and info["on_recall_miss"] == "warn"
    assert idx.shape == (1000, 10) and (np.diff(dist, axis=1) >= 0).all()
    exact_idx, _ = knn_exact(x, 10, progress=False)
    _, held = sample_rows(1000, 100, 0)
    assert info["recall_sample"] == 100 and info["tuning_sample"] == 0
    assert set(info["recall_at_k"]) == {"1", "5", "10"}
    for kk in (1, 5, 10):  # recall at every analysed k, on the held-out rows
        assert info["recall_at_k"][str(kk)] == pytest.approx(
            recall_at_k(idx[held, :kk], exact_idx[held, :kk]), abs=1e-12)
    assert info["recall"] == info["recall_at_k"]["10"] < 0.95


def test_annoy_recall_checked_at_every_analysed_k():
    x = gaussian()
    opts = dict(n_trees=4, search_k=40, recall_sample=100, progress=False)
    with pytest.warns(RecallMissWarning):
        _, _, info = knn_annoy(x, 10, on_recall_miss="warn", recall_k=[5], **opts)
    r5, r10 = info["recall_at_k"]["5"], info["recall_at_k"]["10"]
    assert r5 < r10  # this seeded graph recalls worse at k = 5 than at its k = 10
    target = (r5 + r10) / 2
    _, _, info = knn_annoy(x, 10, recall_target=target, **opts)  # only k = 10 analysed: met
    assert info["recall_target_met"] is True
    with pytest.raises(RecallMissError, match=rf"recall@5 = {r5:.3f} on") as err:
        knn_annoy(x, 10, recall_target=target, recall_k=[5], **opts)
    assert "recall@10" not in str(err.value)


def test_annoy_recall_option_errors():
    x = gaussian(n=50, d=4)
    with pytest.raises(ValueError, match="on_recall_miss must be one of"):
        knn_annoy(x, 3, on_recall_miss="ignore", progress=False)
    with pytest.raises(ValueError, match=r"recall_k must be .* in \[1, k = 3\]"):
        knn_annoy(x, 3, recall_k=[4], progress=False)
    with pytest.raises(ValueError, match="on_recall_miss must be one of"):  # whatever backend
        knn(x, 3, backend="exact", on_recall_miss="ignore", progress=False)


def test_exact_recall_is_one_by_construction():
    x = gaussian(n=200, d=8)
    _, _, info = knn(x, 5, backend="exact", recall_k=[2, 5], progress=False)
    assert info["recall_target_met"] is True and info["recall_at_k"] == {"2": 1.0, "5": 1.0}


@pytest.fixture()
def hard_embed_dir(tmp_path):
    root = tmp_path / "hard"
    root.mkdir()
    return write_embed_dir(root, {("conv", "1"): (600, 8), ("fc", "full"): (600, 64)})


def test_build_graphs_recall_miss_stops_the_stage(hard_embed_dir, tmp_path):
    out = tmp_path / "knn" / "euclidean-annoy"
    options = {"n_trees": 1, "search_k": 6, "recall_sample": 100}
    with pytest.raises(RecallMissError) as err:
        build_graphs(hard_embed_dir, out, k=5, distance="euclidean", backend="annoy",
                     options=options, recall_k=[2, 5], progress=False)
    message = str(err.value)
    assert message.startswith(f"{hard_embed_dir / 'conv@1.npy'} (hook conv, scale 1): ")
    assert "recall@2 = " in message and "recall_target = 0.95" in message
    assert not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match="config key 'knn.on_recall_miss'"):  # before any graph
        build_graphs(hard_embed_dir, out, k=5, distance="euclidean", backend="annoy",
                     options={**options, "on_recall_miss": "skip"}, progress=False)
    with pytest.raises(ValueError, match=r"recall_k must be .* \[1, k = 5\]"):
        build_graphs(hard_embed_dir, out, k=5, distance="euclidean", backend="annoy",
                     options=options, recall_k=[6], progress=False)


def test_build_graphs_recall_miss_warn_records_the_flag(hard_embed_dir, tmp_path):
    out = tmp_path / "knn" / "euclidean-annoy"
    with pytest.warns(RecallMissWarning) as caught:
        manifest = build_graphs(hard_embed_dir, out, k=5, distance="euclidean",
                                backend="annoy", recall_k=[2, 5],
                                options={"n_trees": 1, "search_k": 6, "recall_sample": 100,
                                         "on_recall_miss": "warn"}, progress=False)
    assert manifest["recall_k"] == [2, 5]
    assert any(f"{hard_embed_dir / 'fc@full.npy'} (hook fc, scale full): Annoy kNN graph below"
               in str(w.message) for w in caught)
    flags = {}
    for entry in manifest["entries"]:
        side = json.loads((out / entry["files"]["json"]).read_text())
        assert set(entry["recall_at_k"]) == {"2", "5"}
        assert entry["recall_at_k"] == side["info"]["recall_at_k"]
        assert entry["recall"] == entry["recall_at_k"]["5"] and entry["recall_target"] == 0.95
        assert entry["recall_target_met"] == side["info"]["recall_target_met"] == (
            min(entry["recall_at_k"].values()) >= 0.95)
        flags[entry["hook"]] = entry["recall_target_met"]
    assert flags["fc"] is False  # d = 64 from one leaf of one tree
    exact = build_graphs(hard_embed_dir, tmp_path / "exact", k=5, distance="euclidean",
                         backend="exact", recall_k=[2], progress=False)
    assert all(e["recall_target_met"] is True and e["recall_at_k"] == {"2": 1.0, "5": 1.0}
               for e in exact["entries"])


def test_knn_table_recall_target_met_column():
    from types import SimpleNamespace

    from rra.metrics.tables import frame, knn_rows

    entries = [{"hook": "conv", "scale": "1", "backend": "annoy", "recall": 0.4,
                "search_k": 6, "recall_target_met": False},
               {"hook": "fc", "scale": "full", "backend": "exact", "recall": 1.0,
                "search_k": None, "recall_target_met": True},
               {"hook": "fc", "scale": "1", "backend": "exact", "recall": 1.0,
                "search_k": None}]  # a manifest older than the flag: exact is met anyway
    g = SimpleNamespace(knn={"entries": entries}, pos={"conv": 0, "fc": 1}, k_max=5)
    df = frame(knn_rows(g), {"distance": "euclidean", "backend": "auto"})
    assert str(df.schema["recall_target_met"]) == "Boolean"
    got = {(r["hook_a"], r["scale_a"], r["measure"]): r["recall_target_met"]
           for r in df.iter_rows(named=True)}
    assert got == {("conv", "1", "knn_recall"): False, ("conv", "1", "annoy_search_k"): False,
                   ("fc", "full", "knn_recall"): True, ("fc", "1", "knn_recall"): True}


def test_config_on_recall_miss_reaches_the_knn_stage():
    import copy

    import yaml

    from rra import config as rc

    root = Path(__file__).resolve().parent.parent
    cfg = rc.load_config(root / "config" / "config.yaml", root / "config" / "test.yaml")
    assert cfg["knn"]["on_recall_miss"] == "error"
    assert rc.parse_knn_spec(cfg, "euclidean-annoy")[2]["on_recall_miss"] == "error"
    a = rc.analyses(cfg)[0]
    params = rc.knn_params(cfg, a.run, a.probe, a.knn)
    assert params["recall_k"] == [v for v in sorted(cfg["knn"]["k"]) if v <= params["k"]]
    assert params["on_recall_miss"] == "error"
    bad = copy.deepcopy(yaml.safe_load((root / "config" / "config.yaml").read_text()))
    bad["knn"]["on_recall_miss"] = "ignore"
    with pytest.raises(rc.ConfigError, match=r"config key 'knn.on_recall_miss': 'ignore' is "
                                             r"not one of \['error', 'warn'\]"):
        rc.validate(bad)



def test_annoy_tuning_aims_above_the_target():
    """auto tunes to the target plus 3 standard errors of the held-out estimate (at most
    halfway to 1), so a held-out sample does not miss a target the tuning just reached."""
    from rra.knn.annoy_backend import tuning_aim

    assert tuning_aim(0.95, 100, 25) == pytest.approx(0.95 + 3 * (0.95 * 0.05 / 2500) ** 0.5)
    assert tuning_aim(0.95, 100, 1) == pytest.approx(0.975)  # capped halfway to 1
    x = np.random.default_rng(3).normal(size=(400, 24)).astype(np.float32)
    _, _, info = knn_annoy(x, 10, "euclidean", n_trees=5, search_k="auto", recall_sample=100,
                           seed=0, progress=False)
    aim = tuning_aim(0.95, 100, 10)
    assert info["tuning_aim"] == pytest.approx(aim) and aim > 0.95
    reached = [r for _, r in info["tuning"]]
    assert reached[-1] >= aim and all(r < aim for r in reached[:-1])
