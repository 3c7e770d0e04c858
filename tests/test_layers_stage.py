"""The layers stage (rra.layers.stage, ``python -m rra layers``): each analysis family on a
LeNet-5 trained for one short epoch on the embedded MNIST subset, against the analysis
functions called directly on the same images; tables, maps, manifests and the CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from rra.io import read_json, sha256_file
from rra.layers.stage import ANALYSES, first_per_class, grid_rows, layer_run
from rra.metrics.tables import SCHEMA

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = {"dataset": "mnist5k", "model": "lenet5", "attention": "none", "augmentation": "none",
       "seed": 0, "probe": "test-n3-s0"}
SETTINGS = {
    "translation": {"batch_size": 64, "max_shift": 1, "scales": [1, "full"]},
    "patterns": {"batch_size": 64, "seed": 0, "tree": {"max_depth": 4}, "train": "train-n3-s0"},
    "margins": {"batch_size": 64, "quantiles": [0.25, 0.5, 0.75], "pca_k": [1, 5, "full"],
                "deepfool_per_class": 1, "max_iter": 10, "overshoot": 0.02, "candidates": 10,
                "train": "train-n3-s0"},
    "saliency": {"batch_size": 64, "images": 4, "top": 0.05},
    "fragmentation": {"batch_size": 64, "resolution": 6, "triplets": 1,
                      "kinds": ["same_class", "mixed"], "extend": 0.5, "seed": 0},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Prepared mnist5k, two probes (test 3 per class, train 3 per class) and a LeNet-5 run
    trained for one epoch on 20 images per class."""
    from rra.data import prepare_dataset, select_probe
    from rra.train import train

    root = tmp_path_factory.mktemp("layers-stage")
    data = root / "data" / "mnist5k"
    prepare_dataset("mnist5k", data)
    select_probe(data / "test", 3, 0, data / "probe" / "test-n3-s0.npy")
    select_probe(data / "train", 3, 0, data / "probe" / "train-n3-s0.npy")
    spec = {"dataset": "mnist5k", "model": "lenet5", "attention": "none",
            "augmentation": "none", "seed": 0, "epochs": 1, "batch_size": 25,
            "max_train_per_class": 20, "lr": 0.05}
    train(spec, data, root / "run", device="cpu", progress=False)
    return root, data


def run_stage(study, analysis, out=None, **kw):
    root, data = study
    out = out or root / "out" / analysis
    manifest = layer_run(analysis, root / "run", data, data / "probe" / "test-n3-s0.npy", out,
                         settings=SETTINGS[analysis], run=RUN,
                         train_path=data / "probe" / "train-n3-s0.npy", device="cpu", **kw)
    return manifest, pl.read_parquet(out / f"{analysis}.parquet"), out


def probe_inputs(study, name="test-n3-s0"):
    from rra.data import load_split, normalise

    _, data = study
    sidecar = read_json(data / "probe" / f"{name}.json")
    split = load_split(data / sidecar["split"])
    rows = np.load(data / "probe" / f"{name}.npy")
    return (torch.from_numpy(normalise(np.asarray(split.images[rows]), split.info)),
            np.asarray(split.labels[rows]), split)


def model_of(study):
    from rra.train import load_trained

    return load_trained(study[0] / "run")


def test_helpers_first_per_class_and_grid_rows():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert first_per_class(labels, 2).tolist() == [0, 1, 3, 4, 5]
    assert first_per_class(labels, "all").tolist() == list(range(6))
    assert grid_rows(labels, 5).tolist() == [0, 3, 5, 1, 4]
    assert grid_rows(labels, 20).tolist() == [0, 3, 5, 1, 4, 2]


def test_translation_stage(study):
    from rra.layers.translation import black_fill, translation_sensitivity

    manifest, df, out = run_stage(study, "translation")
    model = model_of(study)
    assert manifest["hooks"] == ["input", *model.hook_names]  # LeNet-5 analyses its input
    assert manifest["checkpoint_sha256"] == sha256_file(study[0] / "run" / "model.pt")
    assert manifest["n"] == 30 and manifest["split"] == "test" and manifest["device"] == "cpu"
    assert manifest["config"] == SETTINGS["translation"]
    assert list(df.columns) == list(SCHEMA) and (out / "translation.csv").is_file()
    assert df.select(*RUN).unique().rows(named=True) == [RUN]
    centre = df.filter((pl.col("measure") == "translation_cosine") & (pl.col("dx") == 0)
                       & (pl.col("dy") == 0))
    assert centre.height == df.select("hook_a", "scale_a").unique().height
    np.testing.assert_allclose(centre["value"].to_numpy(), 1.0, atol=1e-5)
    x, y, split = probe_inputs(study)
    ref = translation_sensitivity(model, x, ["input", *model.hook_names],
                                  fill=black_fill(split.info), max_shift=1, scales=[1, "full"],
                                  device="cpu", batch_size=64, labels=y)
    got = {(r["measure"], r["hook_a"], r["scale_a"], r["dx"], r["dy"], r["radius"]): r
           for r in df.iter_rows(named=True)}
    for r in ref:
        key = (r["measure"], r["hook_a"], r["scale_a"], r.get("dx"), r.get("dy"), r.get("radius"))
        assert got[key]["value"] == pytest.approx(r["value"], rel=1e-4, abs=1e-6)  # float32 sums
        for c in ("lo", "hi", "null", "p"):  # the defaults of metrics.bootstrap (B = 200)
            if r[c] is None:  # zero-norm share: no chance level
                assert got[key][c] is None
            else:
                assert got[key][c] == pytest.approx(r[c], rel=1e-4, abs=1e-5)
    cells = df.filter(pl.col("measure") == "translation_cosine")
    assert cells.select("lo", "hi", "null", "p").null_count().row(0) == (0,) * 4
    assert read_json(out / "manifest.json") == manifest


def test_patterns_stage(study):
    from rra.layers.patterns import activation_patterns

    manifest, df, _ = run_stage(study, "patterns")
    model = model_of(study)
    relus = [h for h in model.hook_names if h.startswith("relu")]
    assert manifest["hooks"] == relus and manifest["n_train"] == 30
    spars = df.filter(pl.col("measure").str.ends_with("sparsity"))["value"]
    assert spars.min() >= 0 and spars.max() <= 1
    x, y, _ = probe_inputs(study)
    xt, _, _ = probe_inputs(study, "train-n3-s0")
    pos = {h: i for i, h in enumerate(["input", *model.hook_names])}
    ref = activation_patterns(model, x, y, relus, train=xt, seed=0, tree_kwargs={"max_depth": 4},
                              device="cpu", positions=pos, batch_size=64)
    got = {(r["measure"], r["hook_a"]): (r["value"], r["pos_a"]) for r in df.iter_rows(named=True)}
    assert len(got) == len(ref)
    for r in ref:
        assert got[(r["measure"], r["hook_a"])] == (pytest.approx(r["value"]), r["pos_a"])


def test_patterns_reports_a_resnet_relu_under_its_hook(tmp_path):
    """ResNet hooks are blocks whose output is their final ReLU's: rows carry the hook's name."""
    from rra.layers.stage import _patterns
    from rra.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8nobn", in_channels=1, num_classes=10, image_size=8).eval()
    probe = type("P", (), {"inputs": torch.randn(12, 1, 8, 8).numpy(),
                           "labels": np.arange(12) % 3})()
    rows, _, used = _patterns(model, probe, probe, model.hook_names,
                              {"seed": 0, "tree": {}, "batch_size": 6}, torch.device("cpu"))
    assert used == ["stem", "layer1.0", "layer2.0", "layer3.0"]
    assert {r["hook_a"] for r in rows} == set(used)
    assert {r["pos_a"] for r in rows} == {0, 1, 2, 3}


def test_margins_stage(study):
    manifest, df, _ = run_stage(study, "margins")
    model = model_of(study)
    hidden = df.filter(pl.col("measure") == "hidden_margin")
    assert set(hidden["hook_a"]) == {"input", *model.hook_names}
    assert sorted(set(hidden["quantile"])) == [0.25, 0.5, 0.75]
    inputs = df.filter(pl.col("hook_a").eq("input") & pl.col("pca_k").is_not_null())
    assert sorted(set(inputs["pca_k"])) == [1, 5, 784]  # full = D = 28 · 28
    x, y, _ = probe_inputs(study)
    take = first_per_class(y, 1)
    with torch.no_grad():
        correct = int((model(x[take]).argmax(1).numpy() == y[take]).sum())
    n = inputs.filter(pl.col("measure") == "input_margin_n")["value"].to_list()
    assert n == [correct] * 3
    means = inputs.filter(pl.col("measure") == "input_margin_mean").sort("pca_k")["value"]
    finite = [v for v in means.to_list() if np.isfinite(v)]
    assert all(v > 0 for v in finite)
    # intervals for the hidden-margin quantiles and means with rows, never a chance level
    rated = df.filter(pl.col("measure").is_in(["hidden_margin", "hidden_margin_mean"])
                      & pl.col("value").is_not_nan())
    assert rated.height > 0 and rated["lo"].null_count() == 0 and rated["hi"].null_count() == 0
    assert df["null"].null_count() == df["p"].null_count() == df.height
    counts = df.filter(pl.col("measure").str.ends_with("_n"))
    assert counts["lo"].null_count() == counts.height


def test_saliency_stage(study):
    from rra.layers.saliency import first_layer_filters, saliency_maps

    manifest, df, out = run_stage(study, "saliency")
    assert manifest["tables"]["maps"]["files"] == ["maps.npz"]
    maps = np.load(out / "maps.npz")
    x, y, split = probe_inputs(study)
    rows = grid_rows(y, 4)
    np.testing.assert_array_equal(maps["rows"], rows)
    probe_rows = np.load(study[1] / "probe" / "test-n3-s0.npy")
    np.testing.assert_array_equal(maps["images"], np.asarray(split.images[probe_rows[rows]]))
    model = model_of(study)
    ref = saliency_maps(model, x, y, device="cpu", batch_size=64)
    np.testing.assert_allclose(maps["true"], ref.true[rows], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps["pred"], ref.pred[rows], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(maps["filters"], first_layer_filters(model))
    share = df.filter(pl.col("class").is_null())
    assert set(share["measure"]) == {"saliency_top5pct_share_true", "saliency_top5pct_share_pred"}
    assert all(0.05 <= v <= 1 for v in share["value"])
    assert share["null"].to_list() == pytest.approx([40 / 784] * 2)  # ⌈0.05 · 784⌉ / 784
    assert share["lo"].null_count() == 0 and share["p"].null_count() == share.height


def test_bootstrap_off_leaves_the_four_columns_null(study, tmp_path):
    """metrics.bootstrap.B = 0 in the stage's settings: the same values, null lo, hi, null, p."""
    root, data = study
    for analysis in ("translation", "saliency"):
        tables = {}
        for B in (0, 20):
            out = tmp_path / f"{analysis}-{B}"
            layer_run(analysis, root / "run", data, data / "probe" / "test-n3-s0.npy", out,
                      settings={**SETTINGS[analysis], "bootstrap": {"B": B}}, run=RUN,
                      device="cpu")
            tables[B] = pl.read_parquet(out / f"{analysis}.parquet")
        off, on = tables[0], tables[20]
        assert on["lo"].null_count() < on.height
        assert off.select("lo", "hi", "null", "p").null_count().row(0) == (off.height,) * 4
        np.testing.assert_array_equal(off["value"].to_numpy(), on["value"].to_numpy())


def test_fragmentation_stage(study):
    manifest, df, _ = run_stage(study, "fragmentation")
    model = model_of(study)
    assert manifest["hooks"] == ["input", *model.hook_names]
    means = df.filter(pl.col("measure").is_in(["fragmentation_same_class",
                                               "fragmentation_mixed"]))
    assert means.height == 2 * len(manifest["hooks"])
    assert all(v >= 1 for v in means["value"] if np.isfinite(v))


def test_stage_errors_and_cli(study, tmp_path):
    from rra.cli import main

    root, data = study
    with pytest.raises(ValueError, match="unknown layer analysis"):
        layer_run("bogus", root / "run", data, data / "probe" / "test-n3-s0.npy", tmp_path,
                  settings={}, run=RUN)
    with pytest.raises(ValueError, match="needs a training subset"):
        layer_run("margins", root / "run", data, data / "probe" / "test-n3-s0.npy", tmp_path,
                  settings=SETTINGS["margins"], run=RUN)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        layer_run("saliency", tmp_path, data, data / "probe" / "test-n3-s0.npy", tmp_path,
                  settings=SETTINGS["saliency"], run=RUN)
    out = tmp_path / "cli"
    status = main(["layers", "--analysis", "saliency", "--run-dir", str(root / "run"),
                   "--data-dir", str(data), "--probe", str(data / "probe" / "test-n3-s0.npy"),
                   "--out", str(out), "--settings", json.dumps(SETTINGS["saliency"]),
                   "--run", json.dumps(RUN), "--device", "cpu", "--input", "false"])
    assert status == 0 and (out / "manifest.json").is_file()
    assert set(ANALYSES) == set(SETTINGS)
