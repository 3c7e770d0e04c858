"""rra.report: charts from small fixed tables, saving (HTML inline / PNG / SVG), the index page,
build_report on a hand-made results directory, and (slow) a headless Chromium check.

Hook names are chosen so that alphabetical order differs from forward order; the axis-order
tests read the rendered scenegraph (vl-convert), not just the spec.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import altair as alt
import polars as pl
import pytest
import vl_convert as vlc

from rra.io import sha256_file, write_json
from rra.metrics.tables import frame
from rra.report import FigureRecord, build_index, build_report, charts, frames
from rra.report.build import report_options
from rra.report.save import external_references, save_chart

HOOKS = ["stem", "layer1.0", "layer1.1", "layer2.0", "fc"]  # forward order ≠ alphabetical
SCALES = {"stem": ["1", "2", "full"], "layer1.0": ["1", "2", "full"],
          "layer1.1": ["1", "2", "full"], "layer2.0": ["1", "full"], "fc": ["full"]}
KS, ALPHAS, CLASSES = [3, 5], [0, 1], [0, 1, 2]
PROBE = "test-n4-s0"


def run_id(augmentation: str, seed: int) -> dict:
    return {"dataset": "toy", "model": "resnet8", "attention": "none",
            "augmentation": augmentation, "seed": seed, "probe": PROBE}


def nnts_value(a: str, b: str, k: int, seed: int) -> float:
    pa, pb = HOOKS.index(a), HOOKS.index(b)
    return 1.0 if a == b else 0.5 + 0.1 * seed - 0.05 * abs(pa - pb) + 0.01 * k


def metric_rows(seed: int) -> dict[str, list[dict]]:
    """Hand-made rows of the four tables the report reads, for one run."""
    pos = {h: i for i, h in enumerate(HOOKS)}
    out: dict[str, list[dict]] = {"nnts": [], "nntp": [], "class_response": [], "classrepsim": []}
    for scale in ("1", "2", "full"):
        hooks = [h for h in HOOKS if scale in SCALES[h]]
        for k in KS:
            for a in hooks:
                for b in hooks:
                    out["nnts"].append(dict(measure="nnts", hook_a=a, hook_b=b, pos_a=pos[a],
                                            pos_b=pos[b], scale_a=scale, scale_b=scale, k=k,
                                            value=nnts_value(a, b, k, seed)))
            for alpha in ALPHAS:
                common = dict(scale_a=scale, scale_b=scale, k=k, alpha=alpha)
                for f, a in enumerate(hooks):
                    out["nntp"].append(dict(common, measure="nntp_edges", hook_a=a, pos_a=pos[a],
                                            value=100.0 + 10 * f + seed))
                    for b in hooks[f:]:
                        out["nntp"].append(dict(common, measure="nntp_runs", hook_a=a, hook_b=b,
                                                pos_a=pos[a], pos_b=pos[b],
                                                value=float(10 * pos[a] + pos[b] + seed)))
                out["nntp"].append(dict(common, measure="nntp_persistent_all", hook_a=hooks[0],
                                        hook_b=hooks[-1], value=7.0 + seed))
    for h in HOOKS:
        for scale in SCALES[h]:
            for k in KS:
                common = dict(hook_a=h, pos_a=pos[h], scale_a=scale, k=k)
                out["class_response"].append(dict(common, measure="knn_purity",
                                                  value=0.1 * pos[h] + 0.1 * seed))
                out["class_response"].append(dict(common, measure="knn_vote_accuracy",
                                                  value=0.2 + 0.1 * pos[h]))
        if len(SCALES[h]) >= 2:
            for k in KS:
                for s in SCALES[h]:
                    for t in SCALES[h]:
                        common = dict(hook_a=h, hook_b=h, pos_a=pos[h], pos_b=pos[h], scale_a=s,
                                      scale_b=t, k=k)
                        v = 1.0 if s == t else 0.3 + 0.1 * seed
                        out["classrepsim"].append(dict(common, measure="classrepsim_mean", value=v))
                        for c in CLASSES:
                            out["classrepsim"].append(dict(common, measure="classrepsim",
                                                           **{"class": c}, value=v))
    return out


def write_run(results: Path, augmentation: str, seed: int, *, eval_acc: float) -> Path:
    run = run_id(augmentation, seed)
    run_dir = results / "toy" / f"resnet8-none-{augmentation}-s{seed}"
    mdir = run_dir / "metrics" / PROBE / "euclidean-auto"
    mdir.mkdir(parents=True)
    for name, rows in metric_rows(seed).items():
        frame(rows, dict(run, distance="euclidean", backend="auto")).write_parquet(
            mdir / f"{name}.parquet")
    write_json(mdir / "manifest.json", {"run": run, "ks": KS, "alphas": ALPHAS})
    layers = ["stem.conv", "layer1.0.conv1", "fc"]
    write_json(run_dir / "train_log.json", {
        "spec": {}, "weight_change_layers": layers,
        "epochs": [{"epoch": e, "weight_change": {
            layer: {"l1": 0.1 / e * (i + 1) + 0.01 * seed, "elementwise": 0.2 / e}
            for i, layer in enumerate(layers)}} for e in (1, 2, 3)]})
    write_json(run_dir / "metrics.json", {"eval_acc": eval_acc, "complete": True})
    return run_dir


def write_knn(run_dir: Path, backend: str, seconds: float, recall: float) -> Path:
    entries = [{"hook": h, "scale": s, "n": 40, "d": 8, "backend": backend,
                "recall": recall if backend == "annoy" else 1.0,
                "search_k": 400 if backend == "annoy" else None, "seconds": seconds}
               for h in HOOKS for s in SCALES[h]]
    return write_json(run_dir / "knn" / PROBE / f"euclidean-{backend}" / "manifest.json", {
        "k_max": 5, "distance": "euclidean", "backend": backend, "hooks": HOOKS,
        "scales": ["1", "2", "full"], "options": {"n_trees": 10}, "entries": entries})


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("study") / "results"
    for aug, accs in (("none", (0.9, 0.8)), ("standard", (0.7, 0.6))):
        for seed, acc in enumerate(accs):
            run_dir = write_run(results, aug, seed, eval_acc=acc)
    write_knn(run_dir, "exact", 0.5, 1.0)
    write_knn(run_dir, "annoy", 0.05, 0.9)
    pl.DataFrame({"model": ["resnet8"], "attention": ["none"], "params": [1000],
                  "flops": [5000]}).write_parquet(results / "toy" / "cost.parquet")
    (results / "data" / "toy").mkdir(parents=True)  # prepared data: not a dataset of runs
    return results


@pytest.fixture(scope="module")
def tables(results) -> dict[str, pl.DataFrame]:
    dirs = frames.metric_dirs(results)
    return {name: frames.read_tables(dirs, name)
            for name in ("nnts", "nntp", "class_response", "classrepsim")}


def datasets_of(chart) -> list[list[dict]]:
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    return list(spec.get("datasets", {}).values())


def only_dataset(chart) -> list[dict]:
    data = datasets_of(chart)
    assert len(data) == 1, f"expected one inline dataset, got {len(data)}"
    return data[0]


def axis_labels(chart, orient: str) -> list[list[str]]:
    """Label texts of every labelled axis with ``orient`` in the rendered scenegraph, in screen
    order."""
    out: list[list[str]] = []

    def labels_in(node, acc):
        if isinstance(node, dict):
            if node.get("role") == "axis-label":
                acc.extend(node["items"])
            for v in node.values():
                labels_in(v, acc)
        elif isinstance(node, list):
            for v in node:
                labels_in(v, acc)

    def walk(node):
        if isinstance(node, dict):
            if node.get("orient") == orient and "items" in node:
                acc: list[dict] = []
                labels_in(node, acc)
                key = "x" if orient in ("top", "bottom") else "y"
                if acc:  # axes without labels (grid lines) are skipped
                    out.append([str(a["text"]) for a in sorted(acc, key=lambda a: a[key])])
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(vlc.vegalite_to_scenegraph(chart.to_dict())["scenegraph"])
    return out


# --------------------------------------------------------------------------- aggregation helpers

def test_aggregate_mean_sd_min_max_over_seeds():
    df = pl.DataFrame({"hook_a": ["a", "a", "b"], "seed": [0, 1, 0], "scale_a": ["1"] * 3,
                       "value": [0.2, 0.4, 0.7]})
    agg = charts.aggregate(df, ["hook_a"], "t")
    a = agg.row(0, named=True)
    assert a["mean"] == pytest.approx(0.3) and a["sd"] == pytest.approx(math.sqrt(0.02))
    assert (a["min"], a["max"], a["n"]) == (0.2, 0.4, 2)
    b = agg.row(1, named=True)
    assert (b["mean"], b["sd"], b["n"]) == (0.7, 0.0, 1)  # one seed: sd 0, not null
    nan = charts.aggregate(df.with_columns(value=pl.Series([float("nan"), 0.4, 0.7])),
                           ["hook_a"], "t")
    assert (nan["mean"][0], nan["n"][0]) == (0.4, 1)  # NaN is missing, not a poisoned mean


def test_aggregate_refuses_to_average_over_a_hidden_column():
    df = pl.DataFrame({"hook_a": ["a", "a"], "seed": [0, 0], "scale_a": ["1", "full"],
                       "value": [0.2, 0.4]})
    with pytest.raises(ValueError, match="'scale_a'"):
        charts.aggregate(df, ["hook_a"], "t")
    with pytest.raises(ValueError, match="lacks column"):
        charts.aggregate(df, ["hook_b"], "t")


def test_scale_order_is_numeric_then_full():
    assert charts.scale_order(["full", "10", "2", "1", 4]) == ["1", "2", "4", "10", "full"]


def test_stage_last_hooks():
    assert frames.stage_last_hooks(HOOKS) == ["stem", "layer1.1", "layer2.0", "fc"]
    assert frames.stage_last_hooks(["conv1", "relu1"]) == ["conv1", "relu1"]


def test_parse_run():
    assert frames.parse_run("resnet20-stac-auto-standard-s3") == {
        "model": "resnet20", "attention": "stac-auto", "augmentation": "standard", "seed": 3}
    assert frames.parse_run("stac_scales") is None


# --------------------------------------------------------------------------------------- charts

def test_nnts_heatmap_spec_values_and_forward_axis_order(tables):
    df = charts.add_variant(tables["nnts"].filter((pl.col("scale_a") == "full")
                                                  & (pl.col("measure") == "nnts")))
    chart = charts.nnts_heatmap(df, row="variant", column="k")
    spec = chart.to_dict()
    enc = spec["spec"]["encoding"]
    assert enc["x"]["field"] == "hook_b" and enc["x"]["sort"] == {"field": "pos_b", "op": "min",
                                                                   "order": "ascending"}
    assert enc["y"]["field"] == "hook_a" and enc["color"]["field"] == "mean"
    assert spec["facet"]["row"]["field"] == "variant" and spec["facet"]["column"]["field"] == "k"
    rows = only_dataset(chart)
    assert len(rows) == 2 * len(KS) * len(HOOKS) ** 2  # variants × k × hook pairs; seeds averaged
    cell = next(r for r in rows if r["variant"] == "none · none" and r["k"] == 3
                and r["hook_a"] == "stem" and r["hook_b"] == "layer2.0")
    assert cell["mean"] == pytest.approx((nnts_value("stem", "layer2.0", 3, 0)
                                          + nnts_value("stem", "layer2.0", 3, 1)) / 2)
    assert cell["n"] == 2
    assert axis_labels(chart, "bottom") == [HOOKS] * 4
    assert axis_labels(chart, "left") == [HOOKS] * 4


def test_nnts_heatmap_hook_order_per_model_facet():
    """Two models with different hooks share a chart: each facet has its own forward order."""
    rows = [{"model": m, "hook_a": a, "pos_a": i, "hook_b": b, "pos_b": j, "seed": 0, "k": 3,
             "value": 0.5}
            for m, hooks in (("m1", ["z", "a", "m"]), ("m2", ["m", "z"]))
            for i, a in enumerate(hooks) for j, b in enumerate(hooks)]
    chart = charts.nnts_heatmap(pl.DataFrame(rows), row="model", column=None)
    assert len(only_dataset(chart)) == 9 + 4
    assert axis_labels(chart, "bottom") == [["z", "a", "m"], ["m", "z"]]


def test_nnts_heatmap_row_limit_is_an_error_not_a_silent_sample():
    hooks = [f"h{i}" for i in range(75)]  # 5625 cells > Altair's 5000-row limit
    df = pl.DataFrame([{"hook_a": a, "pos_a": i, "hook_b": b, "pos_b": j, "seed": 0, "k": 3,
                        "value": 0.5} for i, a in enumerate(hooks) for j, b in enumerate(hooks)])
    with pytest.raises(ValueError, match="exceed Altair's limit"):
        charts.nnts_heatmap(df)


def test_nntp_heatmap_table_and_edge_totals(tables):
    df = tables["nntp"].filter((pl.col("scale_a") == "full") & (pl.col("k") == 3)
                               & (pl.col("alpha") == 0) & (pl.col("augmentation") == "none"))
    chart = charts.nntp_heatmap(df)
    spec = chart.to_dict()
    assert len(spec["hconcat"]) == 2
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
             for layer in spec["hconcat"][0]["layer"]]
    assert marks == ["rect", "text"]
    runs, edges = sorted(datasets_of(chart), key=len, reverse=True)
    n = len(HOOKS)
    assert len(runs) == n * (n + 1) // 2 and len(edges) == n
    t = next(r for r in runs if r["hook_a"] == "layer1.0" and r["hook_b"] == "fc")
    assert t["mean"] == pytest.approx(10 * 1 + 4 + 0.5)  # seeds 0 and 1
    e = {r["hook_a"]: r["mean"] for r in edges}
    assert e == {h: pytest.approx(100 + 10 * f + 0.5) for f, h in enumerate(HOOKS)}
    assert "pairs present at every hook: 7.5" in spec["title"]["subtitle"][0]
    assert axis_labels(chart, "bottom")[1] == HOOKS  # the bar chart of edge totals


def test_hook_curves_bands(tables):
    df = tables["class_response"].filter((pl.col("scale_a") == "full") & (pl.col("k") == 3)
                                         & (pl.col("measure") == "knn_purity"))
    for band in ("minmax", "sd"):
        chart = charts.hook_curves(df, color="augmentation", band=band)
        spec = chart.to_dict()
        layers = spec["spec"]["layer"]
        assert layers[0]["encoding"]["y"]["field"] == "lo"
        assert layers[1]["encoding"]["y"]["field"] == "mean"
        assert layers[1]["encoding"]["order"]["field"] == "pos_a"  # lines join hooks in order
        assert layers[1]["encoding"]["color"]["field"] == "augmentation"
        rows = only_dataset(chart)
        assert len(rows) == 2 * len(HOOKS)
        r = next(r for r in rows if r["augmentation"] == "none" and r["hook_a"] == "layer1.0")
        # knn_purity = 0.1·pos + 0.1·seed at seeds 0 and 1 → 0.1 and 0.2
        assert r["mean"] == pytest.approx(0.15)
        if band == "minmax":
            assert (r["lo"], r["hi"]) == (pytest.approx(0.1), pytest.approx(0.2))
        else:
            sd = math.sqrt(0.005)
            assert (r["lo"], r["hi"]) == (pytest.approx(0.15 - sd), pytest.approx(0.15 + sd))
    assert axis_labels(chart, "bottom") == [HOOKS]
    with pytest.raises(ValueError, match="band"):
        charts.hook_curves(df, band="iqr")


def test_nnts_to_logits_takes_the_last_hook(tables):
    out = frames.nnts_to_logits(tables["nnts"])
    assert set(out["measure"]) == {"nnts_to_logits"}
    last = out.group_by("scale_a").agg(pl.col("hook_b").unique())
    assert {r["scale_a"]: r["hook_b"] for r in last.iter_rows(named=True)} == {
        "1": ["layer2.0"], "2": ["layer1.1"], "full": ["fc"]}
    row = out.filter((pl.col("scale_a") == "full") & (pl.col("k") == 5) & (pl.col("seed") == 1)
                     & (pl.col("hook_a") == "stem") & (pl.col("augmentation") == "none"))
    assert row["value"].to_list() == [pytest.approx(nnts_value("stem", "fc", 5, 1))]


def test_classrepsim_heatmaps_class_mean_and_per_class(tables):
    crs = tables["classrepsim"].filter((pl.col("k") == 3) & (pl.col("augmentation") == "none"))
    mean = charts.classrepsim_heatmaps(crs.filter(pl.col("measure") == "classrepsim_mean"))
    spec = mean.to_dict()
    assert spec["facet"]["field"] == "hook_a"
    assert spec["facet"]["sort"] == ["stem", "layer1.0", "layer1.1", "layer2.0"]
    assert spec["spec"]["layer"][0]["encoding"]["x"]["sort"] == ["1", "2", "full"]
    rows = only_dataset(mean)
    assert len(rows) == 3 * 9 + 4
    off = next(r for r in rows if r["hook_a"] == "stem" and r["scale_a"] == "1"
               and r["scale_b"] == "full")
    assert off["mean"] == pytest.approx(0.35)
    per_class = charts.classrepsim_heatmaps(crs.filter(pl.col("measure") == "classrepsim"))
    spec = per_class.to_dict()
    assert spec["facet"]["row"]["field"] == "class"
    assert len(only_dataset(per_class)) == len(CLASSES) * (3 * 9 + 4)


def test_accuracy_cost_frame_and_chart():
    acc = pl.DataFrame({"model": ["r"] * 5, "attention": ["none"] * 3 + ["se"] * 2,
                        "augmentation": ["standard"] * 5, "seed": [0, 1, 2, 0, 1],
                        "eval_acc": [0.9, 0.8, 0.7, 0.95, 0.85]})
    cost = pl.DataFrame({"model": ["r", "r"], "attention": ["se", "none"],
                         "params": [1500, 1000], "flops": [5100, 5000]})
    df = frames.accuracy_cost_frame(acc, cost)
    # baseline first
    assert df["variant"].to_list() == ["r · none · standard", "r · se · standard"]
    base, se = df.row(0, named=True), df.row(1, named=True)
    assert base["acc_mean"] == pytest.approx(0.8) and base["acc_sd"] == pytest.approx(0.1)
    assert base["n_seeds"] == 3 and se["n_seeds"] == 2
    assert se["params_ratio"] == pytest.approx(1.5) and se["flops_ratio"] == pytest.approx(1.02)
    given = frames.accuracy_cost_frame(acc, cost.with_columns(params_ratio=pl.lit(9.0),
                                                              flops_ratio=pl.lit(8.0)))
    assert given["params_ratio"].to_list() == [9.0, 9.0]  # the cost table's own ratios are used
    chart = charts.accuracy_cost(df)
    spec = chart.to_dict()
    assert len(spec["vconcat"]) == 2
    table, scatter = sorted(datasets_of(chart), key=lambda d: "text" in d[0])[::-1]
    assert len(table) == 2 * 6 and len(scatter) == 2 * 2
    assert {r["text"] for r in table if r["column"] == "top-1 acc % (mean ± sd)"} == {
        "80.00 ± 10.00", "90.00 ± 7.07"}
    assert {r["text"] for r in table if r["column"] == "params"} == {"1,000", "1,500"}
    only_acc = charts.accuracy_cost(frames.accuracy_cost_frame(acc))
    assert len(only_acc.to_dict()["vconcat"]) == 1 and len(only_dataset(only_acc)) == 2 * 2


def test_weight_change_frame_order_and_chart(results, tmp_path):
    wc = frames.weight_change_frame(results)
    assert wc.height == 4 * 3 * 3 * 2  # runs × epochs × layers × variants
    order = wc.select("layer", "pos").unique().sort("pos")["layer"].to_list()
    assert order == ["stem.conv", "layer1.0.conv1", "fc"]  # the log's own layer list
    v = wc.filter((pl.col("measure") == "weight_change_l1") & (pl.col("layer") == "layer1.0.conv1")
                  & (pl.col("epoch") == 2) & (pl.col("seed") == 1))
    assert v["value"].to_list() == [pytest.approx(0.1 / 2 * 2 + 0.01)] * 2
    df = charts.add_variant(wc.filter(pl.col("measure") == "weight_change_l1"),
                            ("model", "attention", "augmentation"))
    chart = charts.weight_change_heatmap(df)
    assert len(only_dataset(chart)) == 2 * 3 * 3
    assert axis_labels(chart, "left") == [order, order]
    assert len(only_dataset(charts.weight_change_curves(df))) == 2 * 3 * 3
    # Without a layer list, the order comes from the model rebuilt from metrics.json.
    run = tmp_path / "results" / "toy" / "resnet8-none-none-s0"
    run.mkdir(parents=True)
    layers = ["fc", "layer1.0.conv1", "layer1.0.conv2", "stem.conv"]
    write_json(run / "train_log.json", {"epochs": [{"epoch": 1, "weight_change": {
        layer: {"l1": 0.1, "elementwise": 0.2} for layer in layers}}]})
    write_json(run / "metrics.json", {"model_args": {
        "name": "resnet8", "in_channels": 1, "num_classes": 10, "image_size": 28,
        "attention": "none", "attention_kwargs": {}, "kwargs": {}}})
    got = frames.weight_change_frame(tmp_path / "results").sort("pos")
    assert got["layer"].unique(maintain_order=True).to_list()[:2] == ["stem.conv",
                                                                      "layer1.0.conv1"]
    assert got["layer"].unique(maintain_order=True).to_list()[-1] == "fc"


def test_knn_graph_frame_and_recall_chart(results):
    df = frames.knn_graph_frame(frames.knn_manifests(results))
    n_graphs = sum(len(s) for s in SCALES.values())
    assert df.height == 2 * n_graphs
    assert set(df["backend_label"]) == {"exact", "annoy (n_trees=10)"}
    annoy = df.filter(pl.col("backend_used") == "annoy")
    assert set(annoy["recall"]) == {0.9} and set(annoy["search_k"]) == {400}
    assert df.filter(pl.col("backend_used") == "exact")["n_trees"].null_count() == n_graphs
    chart = charts.knn_recall(df)
    assert len(chart.to_dict()["hconcat"]) == 2
    rows = only_dataset(chart)
    assert len(rows) == 2 * n_graphs
    r = next(r for r in rows if r["backend_label"] == "exact" and r["hook_a"] == "fc")
    assert (r["recall"], r["seconds"]) == (1.0, 0.5)


# -------------------------------------------------------------------------------- save + index

def test_save_chart_files_offline_and_deterministic(tmp_path):
    chart = alt.Chart(pl.DataFrame({"a": ["x", "y"], "b": [1.0, 2.0]})).mark_bar().encode(
        x="a:N", y="b:Q")
    first = save_chart(chart, tmp_path / "one" / "fig")
    assert sorted(p.name for p in first) == ["fig.html", "fig.png", "fig.svg"]
    for path, digest in first.items():
        assert path.stat().st_size > 0 and sha256_file(path) == digest
    png = (tmp_path / "one" / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "one" / "fig.svg").read_text()
    assert svg.lstrip().startswith("<svg") and svg.rstrip().endswith("</svg>")
    page = (tmp_path / "one" / "fig.html").read_text()
    assert external_references(page) == [] and "vega-embed" in page and "<script" in page
    second = save_chart(chart, tmp_path / "two" / "fig")
    assert sorted(first.values()) == sorted(second.values())  # byte-identical outputs
    assert not list((tmp_path / "one").glob(".*tmp*"))  # no temporary files left behind


def test_external_references():
    page = ('<html><head><script src="https://cdn.jsdelivr.net/npm/vega@6"></script>'
            '<link rel="stylesheet" href="//example.org/x.css">'
            '<style>@import url("http://a.b/c.css")</style></head><body><svg xmlns="http://www.w3.org/2000/svg"></svg>'
            '<script>const s = "https://vega.github.io/schema/x.json";</script></body></html>')
    assert external_references(page) == ["https://cdn.jsdelivr.net/npm/vega@6",
                                          "//example.org/x.css", "http://a.b/c.css"]


def test_build_index_links_every_figure(tmp_path):
    recs = [FigureRecord(id=f"f{i}", title=f"Figure <{i}>", caption="c & d", group="g",
                         files={f"sub/f{i}.html": "1" * 64, f"sub/f{i}.png": "2" * 64,
                                f"sub/f{i}.svg": "3" * 64},
                         config={"k": 3, "knn": {"k": [3, 5]}}, inputs={"results/x.json": "a" * 64})
            for i in range(2)]
    out = build_index(recs, tmp_path / "index.html")
    page = out.read_text()
    for i in range(2):
        for ext in ("html", "png", "svg"):
            assert f'href="sub/f{i}.{ext}"' in page
        assert f'<img src="sub/f{i}.png"' in page and f"Figure &lt;{i}&gt;" in page
    assert "a" * 64 in page and "results/x.json" in page and "c &amp; d" in page
    assert external_references(page) == [] and "<script" not in page
    assert json.loads((tmp_path / "index.json").read_text())["figures"][1]["id"] == "f1"
    with pytest.raises(ValueError, match="duplicated figure ids"):
        build_index(recs + recs[:1], tmp_path / "index.html")


# --------------------------------------------------------------------------------- build_report

@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> tuple[Path, list[FigureRecord]]:
    reports = tmp_path_factory.mktemp("reports")
    config = {"dataset": "toy", "knn": {"k": KS}, "training": {"epochs": 3},
              "report": {"band": "sd"}}
    return reports, build_report(results, reports, config=config)


def test_build_report_figures_files_and_hashes(results, report):
    reports, recs = report
    prefix = f"toy-{PROBE}-euclidean-auto"
    expected = {f"{prefix}-{name}" for name in (
        "nnts-resnet8", "curves-resnet8", "nntp-resnet8-none-none", "nntp-resnet8-none-standard",
        "classrepsim-resnet8-none-none", "classrepsim-resnet8-none-standard",
        "classrepsim-class-resnet8-none-none", "classrepsim-class-resnet8-none-standard")}
    expected |= {"toy-accuracy", f"toy-knn-{PROBE}-euclidean"}
    expected |= {f"toy-weight-change-{v}-{kind}" for v in ("l1", "elementwise")
                 for kind in ("heatmap", "curves")}
    assert {r.id for r in recs} == expected
    page = (reports / "index.html").read_text()
    assert external_references(page) == []
    for rec in recs:
        assert sorted(Path(f).suffix for f in rec.files) == [".html", ".png", ".svg"]
        for f, digest in rec.files.items():
            assert sha256_file(reports / f) == digest
            assert f'href="{f}"' in page
        assert f'<img src="{rec.file("png")}"' in page
        for shown, digest in rec.inputs.items():
            assert shown.startswith("results/toy/")
            assert sha256_file(results.parent / shown) == digest
    by_id = {r.id: r for r in recs}
    nntp = by_id[f"{prefix}-nntp-resnet8-none-none"]
    assert nntp.config["k"] == 3 and nntp.config["alpha"] == 0 and nntp.config["seeds"] == [0, 1]
    assert nntp.config["config.knn"] == {"k": KS} and "config.training" not in nntp.config
    assert set(nntp.inputs) == {f"results/toy/resnet8-none-none-s{s}/metrics/{PROBE}/"
                                f"euclidean-auto/manifest.json" for s in (0, 1)}
    assert by_id[f"{prefix}-curves-resnet8"].config["band"] == "sd"
    acc = by_id["toy-accuracy"]
    assert "results/toy/cost.parquet" in acc.inputs
    assert acc.config["config.training"] == {"epochs": 3}
    assert len(json.loads((reports / "index.json").read_text())["figures"]) == len(recs)


def test_build_report_skips_absent_inputs_and_checks_options(tmp_path):
    results = tmp_path / "results"
    run_dir = write_run(results, "none", 0, eval_acc=0.5)
    (run_dir / "train_log.json").unlink()
    shutil.rmtree(run_dir / "metrics")
    recs = build_report(results, tmp_path / "reports")
    assert [r.id for r in recs] == ["toy-accuracy"]  # no metrics, logs, kNN or cost
    assert recs[0].inputs == {"results/toy/resnet8-none-none-s0/metrics.json":
                              sha256_file(results / "toy/resnet8-none-none-s0/metrics.json")}
    assert (tmp_path / "reports" / "index.html").is_file()
    with pytest.raises(ValueError, match="unknown key"):
        report_options({"report": {"scales": "full"}})
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nowhere", tmp_path / "reports")


# ------------------------------------------------------------------------ headless browser (slow)

def chromium_executable() -> str:
    """Debian's chromium; installed with apt-get when missing (skip only if apt is impossible)."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and cannot be installed (needs apt-get as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"apt-get install chromium failed: {done.stderr[-500:]}")
    return shutil.which("chromium")


class DevTools:
    """Chromium in headless mode driven over ``--remote-debugging-pipe`` (the DevTools protocol
    as NUL-separated JSON on fds 3 and 4): no websocket library needed. Networking is off: every
    connection goes to a dead proxy and no host name resolves."""

    def __init__(self, exe: str, user_dir: str):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        # A Python trampoline maps the child's ends onto fds 3 and 4, so they must not be 3/4.
        to_chrome, from_chrome = (self._above_4(fd) for fd in (to_chrome, from_chrome))
        trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                      "os.execv(sys.argv[3], sys.argv[3:])")
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={user_dir}", "--proxy-server=127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(to_chrome), str(from_chrome), *args],
            pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id, self.events = b"", 0, []

    @staticmethod
    def _above_4(fd: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return moved

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if "method" in reply:
                self.events.append(reply)
            elif reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, session: str, expression: str):
        got = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                        session=session)
        return got["result"].get("value")

    def open(self, url: str, ready_js: str, timeout: float = 30) -> str | None:
        """Load ``url`` in a new tab; poll ``ready_js`` until true; the tab's session id, or
        None if ``ready_js`` stayed false for ``timeout`` seconds."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(session, ready_js) is True:
                time.sleep(0.5)  # let late errors arrive
                self.evaluate(session, "0")
                return session
            time.sleep(0.2)
        return None

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions, failed loads and network requests."""
        out = []
        for e in self.events:
            p, m = e.get("params", {}), e["method"]
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {json.dumps(p['exceptionDetails'])[:400]}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {json.dumps(p['args'])[:400]}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"load failed: {p['errorText']}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(("file:", "data:", "about:", "blob:")):
                    out.append(f"network request: {url}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.mark.slow
def test_browser_renders_index_and_a_figure_offline(report):
    reports, recs = report
    exe = chromium_executable()
    figure = reports / next(r for r in recs if r.id.endswith("nnts-resnet8")).file("html")
    with tempfile.TemporaryDirectory() as user_dir:
        browser = DevTools(exe, user_dir)
        try:
            page = browser.open(figure.resolve().as_uri(),
                                "!!document.querySelector('.vega-embed svg.marks, "
                                ".vega-embed canvas.marks')")
            assert page, "vega-embed drew no SVG/canvas in the figure page"
            cells = browser.evaluate(page, "document.querySelectorAll('.vega-embed svg.marks "
                                           "path, .vega-embed svg.marks rect').length")
            assert cells > len(HOOKS) ** 2  # the heat map's cells were drawn
            index = browser.open((reports / "index.html").resolve().as_uri(),
                                 "document.readyState === 'complete' && "
                                 "[...document.images].every(i => i.complete)")
            assert index, "index.html did not finish loading"
            broken = browser.evaluate(index, "[...document.images].filter(i => "
                                             "i.naturalWidth === 0).length + '/' + "
                                             "document.images.length")
            assert broken == f"0/{len(recs)}"
            assert browser.problems() == []
        finally:
            browser.close()
