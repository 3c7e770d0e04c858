"""Artifact I/O: provenance hashes cover content, not measured wall times."""

from __future__ import annotations

import json

import numpy as np

from rra.io import is_timing_key, save_npy, sha256_artifact, sha256_file, without_timings


def test_timing_keys():
    assert is_timing_key("seconds") and is_timing_key("build_seconds")
    assert is_timing_key("query_seconds")
    assert not is_timing_key("predicted_seconds")  # the cost model's output: content
    assert not is_timing_key("seconds_per_graph_target") and not is_timing_key("k")
    rec = {"a": 1, "seconds": 2.5, "entries": [{"hook": "c1", "build_seconds": 3.0,
                                                 "info": {"seconds": 1.0, "k": 5}}],
           "predicted_seconds": {"exact": 1.0}}
    assert without_timings(rec) == {"a": 1, "entries": [{"hook": "c1", "info": {"k": 5}}],
                                    "predicted_seconds": {"exact": 1.0}}


def test_manifest_hash_ignores_timings_only(tmp_path):
    base = {"entries": [{"hook": "c1", "seconds": 1.25, "recall": 0.97}], "k": 5}
    a, b, c, d = (tmp_path / f"{x}.json" for x in "abcd")
    a.write_text(json.dumps(base))
    b.write_text(json.dumps({"k": 5, "entries": [{"recall": 0.97, "hook": "c1", "seconds": 9.0}]},
                            indent=2))
    c.write_text(json.dumps({"entries": [{"hook": "c1", "seconds": 1.25, "recall": 0.96}], "k": 5}))
    d.write_text(json.dumps(dict(base, predicted_seconds=3.0)))
    assert sha256_file(a) != sha256_file(b)  # the bytes differ (timing, key order, spaces) ...
    assert sha256_artifact(a) == sha256_artifact(b)  # ... the content does not
    assert sha256_artifact(a) != sha256_artifact(c)  # content changes change the hash
    assert sha256_artifact(a) != sha256_artifact(d)
    npy = tmp_path / "x.npy"
    save_npy(npy, np.arange(4))
    assert sha256_artifact(npy) == sha256_file(npy)  # data files: their bytes


def test_identical_runs_record_identical_provenance_hashes(tmp_path):
    """Two kNN stages of the same embeddings differ in their measured seconds; the metrics
    manifests built on them record the same hashes (they differed before timings were left
    out)."""
    from rra.knn import build_graphs
    from rra.metrics.tables import run_tables

    rng = np.random.default_rng(0)
    emb = tmp_path / "embed"
    emb.mkdir()
    entries = []
    for h in range(2):
        x = rng.standard_normal((60, 5)).astype(np.float32)
        save_npy(emb / f"h{h}@full.npy", x)
        entries.append({"hook": f"h{h}", "scale": "full", "file": f"h{h}@full.npy",
                        "shape": list(x.shape)})
    save_npy(emb / "labels.npy", np.arange(60) % 3)
    (emb / "manifest.json").write_text(json.dumps(
        {"hooks": ["h0", "h1"], "scales": ["full"], "entries": entries}))
    run = {"dataset": "t", "model": "m", "attention": "none", "augmentation": "none", "seed": 0,
           "probe": "p"}
    recorded = []
    for rep in ("a", "b"):
        build_graphs(emb, tmp_path / f"knn-{rep}", k=5, distance="euclidean", backend="exact",
                     progress=False)
        knn_manifest = json.loads((tmp_path / f"knn-{rep}" / "manifest.json").read_text())
        assert knn_manifest["entries"][0]["seconds"] > 0  # a measured time is in the manifest
        m = run_tables(emb, tmp_path / f"knn-{rep}", tmp_path / f"m-{rep}", ks=[5], alphas=[0],
                       run=run, tables=["nnts"])
        recorded.append((m["knn_manifest_sha256"], m["embed_manifest_sha256"],
                         {name: t["sha256"] for name, t in m["tables"].items()}))
    assert recorded[0] == recorded[1]


def test_save_npz_is_loadable_and_byte_identical(tmp_path):
    import time

    from rra.io import save_npz

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2])}
    save_npz(tmp_path / "x.npz", arrays)
    time.sleep(2.1)  # zip timestamps have 2 s resolution: np.savez would differ now
    save_npz(tmp_path / "y.npz", arrays)
    assert (tmp_path / "x.npz").read_bytes() == (tmp_path / "y.npz").read_bytes()
    with np.load(tmp_path / "x.npz") as z:
        assert sorted(z.files) == ["a", "b"] and np.array_equal(z["a"], arrays["a"])
