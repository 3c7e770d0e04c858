"""The kNN sweep (rra.knn.sweep): stored graphs and large-k overlaps in one pass, against brute
force and against the stored-graph path (exact graphs at k, then overlap counts)."""

from __future__ import annotations

import numpy as np
import pytest

from rra.knn import knn_exact
from rra.knn.common import prepare_points
from rra.knn.sweep import hook_pairs, sweep
from rra.knn.sets import overlap_counts
from knn_reference import assert_sweep_matches_brute_force, brute_force, brute_overlaps


def hooks_data(n=300, seed=0):
    """Embeddings of one probe set at several 'hooks', with the hard cases: integer grids (many
    exactly tied distances), duplicated rows, a near-constant hook, a 1-D hook."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8))
    grid = rng.integers(0, 3, size=(n, 5)).astype(np.float32)  # ties everywhere
    dup = base[:, :4].copy()
    dup[n // 2:] = dup[: n - n // 2]  # every row of the second half duplicates one of the first
    wide = np.maximum(base @ rng.normal(size=(8, 96)), 0)  # ReLU-like, many zeros
    flat = np.ones((n, 3)) + 1e-4 * rng.normal(size=(n, 3))  # large mean, tiny spread
    line = rng.integers(0, 20, size=(n, 1))  # 1-D, ties
    return [np.asarray(a, dtype=np.float32) for a in (base, grid, dup, wide, flat, line)]


def test_sweep_matches_brute_force(one_thread):
    xs = hooks_data()
    n = xs[0].shape[0]
    ks = [1, 7, 60, 150, n - 2, n - 1]
    res = sweep([prepare_points(x, "euclidean") for x in xs], 12, ks, block_rows=37,
                progress=False)
    assert res.pairs == hook_pairs(len(xs))
    assert_sweep_matches_brute_force(xs, res, 12, ks)
    assert res.overlaps[n - 1].min() == n - 1  # every other row, in every set


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_sweep_equals_stored_graph_path(distance):
    """Same graphs and sets as knn_exact (the stored-graph path) at every k, any block size
    (cosine too, where collinear rows tie mathematically: both paths order by the same float64
    distances)."""
    xs = [x + 0.5 for x in hooks_data(n=500, seed=3)]  # + 0.5: no zero rows under cosine
    ks = [40, 250]
    graphs = [knn_exact(x, max(ks), distance, progress=False) for x in xs]
    for block_rows in (1, 64, None):
        res = sweep([prepare_points(x, distance) for x in xs], 9, ks, block_rows=block_rows,
                    progress=False)
        for (idx, dist), (ref_idx, ref_dist) in zip(res.graphs, graphs):
            np.testing.assert_array_equal(idx, ref_idx[:, :9])
            np.testing.assert_array_equal(dist, ref_dist[:, :9])
        for k in ks:
            ref = np.stack([overlap_counts(graphs[a][0][:, :k], graphs[b][0][:, :k])
                            for a, b in res.pairs], axis=1)
            np.testing.assert_array_equal(res.overlaps[k], ref)


def test_sweep_checks_inputs():
    xs = hooks_data(n=50)
    pts = [prepare_points(x, "euclidean") for x in xs]
    with pytest.raises(ValueError, match="must be smaller than the number of rows"):
        sweep(pts, None, [50], progress=False)
    with pytest.raises(ValueError, match="same probe rows"):
        sweep([pts[0], prepare_points(xs[1][:40], "euclidean")], None, [5], progress=False)
    with pytest.raises(ValueError, match="at least one"):
        sweep([], None, [5], progress=False)


def test_stage_sweep_and_tables_match_stored_graphs(tmp_path, one_thread):
    """The knn stage with nnts_k writes the same graphs as the stored-graph path, and the NNTS
    table at a k above the stored k equals the table computed from graphs stored at that k."""
    import json

    import polars as pl

    from rra.io import save_npy
    from rra.knn import build_graphs
    from rra.metrics.tables import run_tables

    xs = hooks_data(n=240, seed=5)
    emb = tmp_path / "embed"
    emb.mkdir()
    entries = []
    for h, x in enumerate(xs):
        save_npy(emb / f"h{h}@full.npy", x)
        entries.append({"hook": f"h{h}", "scale": "full", "file": f"h{h}@full.npy",
                        "shape": list(x.shape)})
    save_npy(emb / "labels.npy", np.arange(240) % 3)
    (emb / "manifest.json").write_text(json.dumps(
        {"hooks": [e["hook"] for e in entries], "scales": ["full"], "entries": entries}))
    run = {"dataset": "t", "model": "m", "attention": "none", "augmentation": "none", "seed": 0,
           "probe": "p"}
    swept = build_graphs(emb, tmp_path / "sweep", k=8, distance="euclidean", backend="auto",
                         nnts_k=[30, 200], progress=False)
    stored = build_graphs(emb, tmp_path / "stored", k=200, distance="euclidean",
                          backend="exact", progress=False)
    assert swept["nnts_k"] == [30, 200] and len(swept["overlaps"]) == 2
    assert all(e["backend"] == "exact" for e in swept["entries"])
    for e in swept["entries"]:
        a = np.load(tmp_path / "sweep" / e["files"]["idx"])
        b = np.load(tmp_path / "stored" / e["files"]["idx"])
        np.testing.assert_array_equal(a, b[:, :8])
    run_tables(emb, tmp_path / "sweep", tmp_path / "m1", ks=[8, 30, 200], alphas=[0], run=run,
               tables=["nnts", "nntp"], nntp_ks=[8])
    run_tables(emb, tmp_path / "stored", tmp_path / "m2", ks=[8, 30, 200], alphas=[0], run=run,
               tables=["nnts", "nntp"], nntp_ks=[8])
    for name in ("nnts", "nntp"):
        t1 = pl.read_parquet(tmp_path / "m1" / f"{name}.parquet").drop("backend")
        t2 = pl.read_parquet(tmp_path / "m2" / f"{name}.parquet").drop("backend")
        assert t1.height > 0
        assert t1.equals(t2), name
    with pytest.raises(ValueError, match="among the NNTS k of the kNN sweep"):
        run_tables(emb, tmp_path / "sweep", tmp_path / "m3", ks=[8, 100], alphas=[0], run=run)
    with pytest.raises(ValueError, match="exact sweep"):
        build_graphs(emb, tmp_path / "x", k=8, distance="euclidean", backend="annoy",
                     nnts_k=[30], progress=False)


def test_sweep_chunked_products_and_overfull_bands(monkeypatch, one_thread):
    """Products summed over feature chunks (a tighter error bound) and bands too large for the
    column-ordered pass (redone row by row) give the same exact sets."""
    import rra.knn.sweep as sweep_module

    xs = [x for x in hooks_data(n=200, seed=7) if x.shape[1] > 4]
    ks = [9, 50, 120]
    graphs = [brute_force(x, max(ks))[0] for x in xs]
    for chunk, cap in ((7, sweep_module.BAND_CAP), (1024, 1)):
        monkeypatch.setattr(sweep_module, "CHUNK_FEATURES", chunk)
        monkeypatch.setattr(sweep_module, "PANEL_COLUMNS", 64)  # 4 panels, the last one short
        monkeypatch.setattr(sweep_module, "BAND_CAP", cap)
        res = sweep([prepare_points(x, "euclidean") for x in xs], 5, ks, block_rows=50,
                    progress=False)
        for x, (idx, _) in zip(xs, res.graphs):
            np.testing.assert_array_equal(idx, brute_force(x, 5)[0])
        for k in ks:
            want = np.stack([overlap_counts(graphs[a][:, :k], graphs[b][:, :k])
                             for a, b in res.pairs], axis=1)
            np.testing.assert_array_equal(res.overlaps[k], want, err_msg=f"chunk {chunk}, k {k}")


def test_sweep_rechecks_cancellation_rows():
    """Rows the float32 values cannot certify (tiny spreads far from the origin) are re-checked
    against every row (the stored graph) and still get exact large-k sets."""
    rng = np.random.default_rng(4)
    xs = []
    for d in (6, 3):
        x = rng.normal(scale=1e-3, size=(120, d))
        x[:60, 0] += 1e3
        x[60:, 0] -= 1e3
        xs.append(x)
    res = sweep([prepare_points(x, "euclidean") for x in xs], 5, [40], block_rows=50,
                progress=False)
    assert all(s["rows_rechecked"] > 0 for s in res.stats)
    for x, (idx, _) in zip(xs, res.graphs):
        np.testing.assert_array_equal(idx, brute_force(x, 5)[0])
    np.testing.assert_array_equal(res.overlaps[40], brute_overlaps(xs, 40))


def test_void_error_bound_is_refused_and_far_from_the_sweep():
    """(length + 2) u ≥ ½ voids the products' error bound (γ would be ≥ 1 or negative):
    ``error_gamma`` refuses it; the sweep's chunked length at u = 2⁻²⁴ stays far below it even
    for a billion features, so the sweep needs no check of its own."""
    from rra.knn.exact import error_gamma
    from rra.knn.sweep import UNIT_ROUNDOFF, _chunks

    u = UNIT_ROUNDOFF
    with pytest.raises(ValueError, match="void"):
        error_gamma(2 ** 23 - 2, u)
    assert 0 < error_gamma(2 ** 23 - 3, u) < 3
    assert _chunks(10 ** 9)[1] < 2 ** 20
