"""The published E1 path on the real MNIST files (../shared/data): the README's command with the
6,000-image stratified subset overlay (config/published-mnist-subset.yaml), end to end — real
IDX loader, training, 12 hooks with the input, stored graphs, the large-k sweep, NNTS and NNTP
tables, figures — checked against direct computations on the stored embeddings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_workflow import ROOT, snakemake

pytestmark = pytest.mark.slow
DATA = Path(os.environ.get("RRA_SHARED_DATA", ROOT.parent / "shared" / "data"))
HOOKS = ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "fc1",
         "relu4", "fc2"]


@pytest.fixture(scope="module")
def e1(tmp_path_factory) -> Path:
    if not (DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"the real MNIST is not at {DATA / 'MNIST' / 'raw'} (set RRA_SHARED_DATA)")
    out = tmp_path_factory.mktemp("e1")
    snakemake(out, "--config", f"data_dir={DATA}", f"results_dir={out / 'results'}",
              f"reports_dir={out / 'reports'}",
              configfiles=(ROOT / "config" / "published-mnist.yaml",
                           ROOT / "config" / "published-mnist-subset.yaml"))
    return out


def run_dir(e1: Path) -> Path:
    return e1 / "results" / "mnist" / "lenet5-none-none-s0"


def test_probe_training_and_graphs(e1):
    run = run_dir(e1)
    labels = np.load(run / "embed" / "train-n600-s0" / "labels.npy")
    assert np.bincount(labels).tolist() == [600] * 10  # stratified subset of the real files
    assert json.loads((run / "metrics.json").read_text())["eval_acc"] > 0.8
    knn = json.loads((run / "knn" / "train-n600-s0" / "euclidean-exact" / "manifest.json")
                     .read_text())
    assert knn["hooks"] == HOOKS
    assert (knn["k_max"], knn["nnts_k"]) == (100, [600, 1200])
    assert {e["backend"] for e in knn["entries"]} == {"exact"}
    assert sorted(o["k"] for o in knn["overlaps"]) == [600, 1200]


def test_nnts_and_nntp_tables(e1):
    import polars as pl

    from rra.knn import knn_exact
    from rra.knn.sets import overlap_counts
    from rra.metrics.nnts import jaccard_from_overlap

    metrics = run_dir(e1) / "metrics" / "train-n600-s0" / "euclidean-exact"
    nnts = pl.read_parquet(metrics / "nnts.parquet").filter(pl.col("measure") == "nnts")
    assert sorted(nnts["k"].unique()) == [15, 100, 600, 1200]
    for k in (15, 100, 600, 1200):
        m = nnts.filter(pl.col("k") == k).pivot(on="hook_b", index="hook_a", values="value")
        assert m["hook_a"].to_list() == HOOKS or sorted(m["hook_a"]) == sorted(HOOKS)
        mat = m.select(m["hook_a"].to_list()).to_numpy()
        assert mat.shape == (12, 12)
        np.testing.assert_allclose(mat, mat.T)
        np.testing.assert_array_equal(np.diag(mat), 1.0)
        assert (mat > 0).all() and (mat <= 1).all()
    assert nnts.filter(pl.col("hook_a") == "input")["pos_a"].unique().to_list() == [0]
    # the sweep's values (k = 600, 1200) against graphs built directly on the stored embeddings
    embed = run_dir(e1) / "embed" / "train-n600-s0"
    graphs = {h: knn_exact(np.load(embed / f"{h}@full.npy", mmap_mode="r"), 1200,
                           progress=False)[0] for h in ("input", "pool2", "fc2")}
    for a, b in (("input", "pool2"), ("pool2", "fc2"), ("input", "fc2")):
        for k in (15, 600, 1200):
            want = jaccard_from_overlap(overlap_counts(graphs[a][:, :k], graphs[b][:, :k]), k)
            got = nnts.filter((pl.col("hook_a") == a) & (pl.col("hook_b") == b)
                              & (pl.col("k") == k))["value"].item()
            assert got == pytest.approx(want.mean(), abs=1e-12), (a, b, k)
    nntp = pl.read_parquet(metrics / "nntp.parquet")
    edges = nntp.filter(pl.col("measure") == "nntp_edges")
    assert edges["k"].unique().to_list() == [15] and edges["alpha"].unique().to_list() == [0]
    assert edges.sort("pos_a")["hook_a"].to_list() == HOOKS
    assert (edges["value"] >= 6000 * 15 / 2).all()  # at least n k / 2 undirected pairs per hook


def test_figures(e1):
    index = (e1 / "reports" / "index.html").read_text()
    assert "NNTS" in index
    figures = {p.name for p in (e1 / "reports" / "figures").rglob("*.png")}
    assert {"nnts-lenet5.png", "nntp-lenet5-none-none.png"} <= figures, figures
