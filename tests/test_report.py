"""rra.report: charts from small fixed tables, saving (HTML inline / PNG / SVG), the index page,
build_report on a hand-made results directory (its input list: :func:`listing`), the E2
guideline stage it draws, the Snakemake report's captions, and (slow) a headless Chromium check.

Hook names are chosen so that alphabetical order differs from forward order; the axis-order
tests read the rendered scenegraph (vl-convert), not just the spec.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
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

from rra.config import reference_analysis
from rra.io import read_json, sha256_artifact, sha256_file, write_json
from rra.metrics import hyperparams
from rra.metrics.folders import MetricFolder, read_tables
from rra.metrics.tables import frame
from rra.report import FigureRecord, ReportInputs, build_index, build_report, charts, frames
from rra.report.build import report_options
from rra.report.save import external_references, save_chart
from report_captions import check_family_captions, figure_caption


def listing(results: Path, *, without: str | None = None) -> ReportInputs:
    """The report's input list of a hand-made results folder: every file of each kind (the
    workflow lists the configured study's files instead, rules/common.smk), but those of the
    run ``without``."""
    def found(pattern: str) -> list[Path]:
        return [p for p in sorted(results.glob(pattern))
                if without is None or f"/{without}/" not in p.as_posix()]

    return ReportInputs.of(
        results, metrics=found("*/*/metrics/*/*/manifest.json"),
        knn=found("*/*/knn/*/*/manifest.json"), layers=found("*/*/layers/*/*/manifest.json"),
        training=found("*/*/train_log.json"),
        accuracy=found("*/accuracy.parquet") or found("*/*/metrics.json"),
        cost=found("*/cost.parquet"), stac_scales=found("*/stac_scales/*.json"),
        e2_guideline=found("*/e2_guideline/manifest.json"))


def metric_folders(results: Path) -> list[MetricFolder]:
    return [MetricFolder.of(p) for p in listing(results)["metrics"]]


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


def write_knn(run_dir: Path, backend: str, seconds: float, recall: float,
              reason: str | None = None) -> Path:
    entries = [{"hook": h, "scale": s, "n": 40, "d": 8, "backend": backend,
                "recall": recall if backend == "annoy" else 1.0,
                "search_k": 400 if backend == "annoy" else None, "seconds": seconds,
                **({"backend_reason": reason} if reason else {})}
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
    folders = metric_folders(results)
    return {name: read_tables(folders, name)
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


def test_hook_curves_band_is_one_area_per_curve_across_the_hooks(tables):
    """The seed band renders: one area per augmentation spanning every hook in forward order
    (an ``order`` channel on the area made Vega-Lite draw one zero-width area per hook)."""
    df = tables["class_response"].filter((pl.col("scale_a") == "full") & (pl.col("k") == 3)
                                         & (pl.col("measure") == "knn_purity"))
    chart = charts.hook_curves(df, color="augmentation")
    svg = vlc.vegalite_to_svg(chart.to_dict())
    paths = re.findall(r'aria-roledescription="area mark" d="([^"]*)"', svg)
    assert len(paths) == 2  # one band per augmentation, not one per hook
    for d in paths:
        xs = [float(x) for x in re.findall(r"[ML](-?[\d.]+),", d)]
        top = xs[:len(HOOKS)]  # the path runs along one edge, then back along the other
        assert len(xs) == 2 * len(HOOKS) and top == sorted(top) and len(set(top)) == len(HOOKS)


def test_nnts_to_logits_takes_the_last_hook(tables):
    out = hyperparams.nnts_to_logits(tables["nnts"])
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


def test_accuracy_cost_draws_the_wilson_interval_and_fades_chance():
    """The summary's interval columns reach the table (mean Wilson bounds over seeds), the
    scatter (a wide rule from acc_lo to acc_hi) and the fading (p ≥ 0.05 in some seed)."""
    acc = pl.DataFrame({"model": ["r"] * 3, "attention": ["none", "none", "se"],
                        "augmentation": ["standard"] * 3, "seed": [0, 1, 0],
                        "eval_acc": [0.9, 0.8, 0.12], "eval_acc_lo": [0.85, 0.75, 0.08],
                        "eval_acc_hi": [0.95, 0.85, 0.16], "eval_acc_null": [0.1] * 3,
                        "eval_acc_p": [0.0, 0.0, 0.3]})
    cost = pl.DataFrame({"model": ["r", "r"], "attention": ["se", "none"],
                         "params": [1500, 1000], "flops": [5100, 5000]})
    df = frames.accuracy_cost_frame(acc, cost)
    base, se = df.row(0, named=True), df.row(1, named=True)
    assert (base["acc_lo"], base["acc_hi"], base["acc_p_max"]) == pytest.approx((0.8, 0.9, 0.0))
    chart = charts.accuracy_cost(df)
    table, scatter = sorted(datasets_of(chart), key=lambda d: "text" in d[0])[::-1]
    assert {r["text"] for r in table if r["column"] == "95 % interval (Wilson)"} == {
        "80.00 – 90.00", "8.00 – 16.00"}
    assert {r["variant"]: r["chance_like"] for r in scatter} == {
        "r · none · standard": False, "r · se · standard": True}
    spec = json.dumps(chart.to_dict())
    assert '"y": {"field": "acc_lo"' in spec and '"y2": {"field": "acc_hi"}' in spec
    assert "datum.chance_like" in spec


def test_accuracy_frame_carries_the_interval_from_tables_and_metrics_json(tmp_path):
    """accuracy.parquet's interval columns reach the frame; a run's metrics.json gets the same
    interval as the summary computes; an older table without them gives nulls and a chart
    without the interval."""
    from rra.train.summary import accuracy_chance

    metrics = {"eval_acc": 0.8, "n_eval": 50, "model_args": {"num_classes": 10}}
    run_dir = tmp_path / "r-none-standard-s0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    new = pl.DataFrame([{"model": "r", "attention": "se", "augmentation": "standard", "seed": 0,
                         "eval_acc": 0.9, "eval_acc_lo": 0.8, "eval_acc_hi": 0.95,
                         "eval_acc_null": 0.1, "eval_acc_p": 0.0}])
    new.write_parquet(tmp_path / "new.parquet")
    new.drop("eval_acc_lo", "eval_acc_hi", "eval_acc_null", "eval_acc_p").write_parquet(
        tmp_path / "old.parquet")
    df = frames.accuracy_frame([tmp_path / "new.parquet", run_dir / "metrics.json"])
    want = accuracy_chance(metrics)
    row = df.filter(pl.col("attention") == "none").row(0, named=True)
    assert {c: row[c] for c in want} == pytest.approx(want)
    assert df.filter(pl.col("attention") == "se")["eval_acc_lo"].to_list() == [0.8]
    old = frames.accuracy_frame([tmp_path / "old.parquet"])
    assert old["eval_acc_lo"].to_list() == [None]
    assert "acc_lo" not in frames.accuracy_cost_frame(old).columns


def test_accuracy_cost_shows_elementwise_and_live_params():
    """cost.parquet's params_live, flops_elementwise and flops_total (rra.models.cost) reach
    the report table and the scatter; flops_total_ratio is computed when absent."""
    acc = pl.DataFrame({"model": ["r"] * 2, "attention": ["none", "se"],
                        "augmentation": ["standard"] * 2, "seed": [0, 0],
                        "eval_acc": [0.9, 0.95]})
    cost = pl.DataFrame({"model": ["r", "r"], "attention": ["se", "none"],
                         "params": [1500, 1000], "params_live": [1400, 1000],
                         "flops": [5100, 5000], "flops_elementwise": [900, 500],
                         "flops_total": [6000, 5500]})
    df = frames.accuracy_cost_frame(acc, cost)
    se = df.row(1, named=True)
    assert se["flops_total_ratio"] == pytest.approx(6000 / 5500)
    assert se["params_live"] == 1400 and se["flops_elementwise"] == 900
    chart = charts.accuracy_cost(df)
    table, scatter = sorted(datasets_of(chart), key=lambda d: "text" in d[0])[::-1]
    assert len(table) == 2 * 10 and len(scatter) == 2 * 3
    cells = {(r["column"], r["text"]) for r in table}
    assert {("live params", "1,400"), ("element-wise ops", "900"),
            ("FLOPs + element-wise", "6,000"), ("FLOPs + element-wise ratio", "1.0909")} <= cells
    assert {r["cost"] for r in scatter} == {"FLOPs / baseline", "parameters / baseline",
                                            "FLOPs + element-wise / baseline"}


def test_weight_change_frame_order_and_chart(results, tmp_path):
    wc = frames.weight_change_frame(listing(results)["training"])
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
    got = frames.weight_change_frame([run / "train_log.json"]).sort("pos")
    assert got["layer"].unique(maintain_order=True).to_list()[:2] == ["stem.conv",
                                                                      "layer1.0.conv1"]
    assert got["layer"].unique(maintain_order=True).to_list()[-1] == "fc"


def test_knn_graph_frame_and_recall_chart(results):
    df = frames.knn_graph_frame(listing(results)["knn"])
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


def test_knn_backend_note_and_index_notes(tmp_path):
    reason = "auto: exact predicted 0.01 s vs Annoy 0.4 s (search_k ≈ 550, recall 0.95)"
    path = write_knn(tmp_path / "results" / "toy" / "resnet8-none-none-s0", "exact", 0.5, 1.0,
                     reason=reason)
    n_graphs = sum(len(s) for s in SCALES.values())
    note = frames.knn_backend_note([path, tmp_path / "absent" / "manifest.json"])
    assert note == f"kNN: exact {n_graphs} graphs (largest, 40 × 8: {reason})"
    assert frames.knn_backend_note([tmp_path / "absent" / "manifest.json"]) == ""
    assert frames.knn_graph_frame([path])["backend_reason"].to_list() == [reason] * n_graphs
    rec = FigureRecord(id="f", title="F", caption="c", group="g", files={"f.png": "1" * 64})
    page = build_index([rec], tmp_path / "index.html", notes={"g": note}).read_text()
    assert f'<p class="note">{note}</p>' in page.replace("&gt;", ">")
    assert json.loads((tmp_path / "index.json").read_text())["notes"] == {"g": note}


def test_knn_backend_note_marks_graphs_below_their_recall_target(tmp_path):
    path = write_knn(tmp_path / "results" / "toy" / "resnet8-none-none-s0", "annoy", 0.05, 0.97,
                     reason="requested annoy")
    manifest = json.loads(path.read_text())
    entries = manifest["entries"]
    n_graphs = len(entries)
    assert frames.knn_graph_frame([path])["recall_target_met"].null_count() == n_graphs
    assert "RECALL" not in frames.knn_backend_note([path])  # an old manifest: no flag, no mark
    for e in entries:
        e.update(recall_at_k={"2": 0.99, "5": 0.97}, recall_target=0.95, recall_target_met=True)
    entries[1].update(recall_at_k={"2": 0.412, "5": 0.5}, recall=0.5, recall_target_met=False)
    write_json(path, manifest)
    df = frames.knn_graph_frame([path])
    assert df["recall_target_met"].to_list() == [True, False] + [True] * (n_graphs - 2)
    assert df["recall_min_over_k"].to_list()[:2] == [0.97, 0.412]
    assert df["recall_target"].to_list() == [0.95] * n_graphs
    chart = charts.knn_recall(df)  # the recall panel marks the graph with a red ⚠
    below = {(r["hook_a"], r["scale_a"]): r["below_target"] for r in only_dataset(chart)}
    assert below == {(e["hook"], e["scale"]): e is entries[1] for e in entries}
    layers = chart.to_dict()["hconcat"][0]["spec"]["layer"]
    assert layers[1]["mark"]["text"] == "⚠" and "datum.below_target" in str(layers[1])
    note = frames.knn_backend_note([path])
    missed = f"{entries[1]['hook']}@{entries[1]['scale']}"
    assert note == (f"kNN: annoy {n_graphs} graphs (largest, 40 × 8: requested annoy) — ⚠ RECALL "
                    f"BELOW TARGET in 1 of {n_graphs} graphs: {missed} 0.412 (target 0.95; kept "
                    "under knn.on_recall_miss: warn)")
    rec = FigureRecord(id="f", title="F", caption="c", group="g", files={"f.png": "1" * 64})
    page = build_index([rec], tmp_path / "index.html", notes={"g": note}).read_text()
    assert f"⚠ RECALL BELOW TARGET in 1 of {n_graphs} graphs: {missed} 0.412" in page


# --------------------------------------------------------------------------------- build_report

@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> tuple[Path, list[FigureRecord]]:
    reports = tmp_path_factory.mktemp("reports")
    config = {"dataset": "toy", "knn": {"k": KS}, "training": {"epochs": 3},
              "report": {"band": "sd"}}
    return reports, build_report(listing(results), reports, config=config)


def test_build_report_figures_files_and_hashes(results, report):
    reports, recs = report
    prefix = f"toy-{PROBE}-euclidean-auto"
    expected = {f"{prefix}-{name}" for name in (
        "nnts-resnet8", "nnts-diff-resnet8", "curves-resnet8", "nntp-resnet8-none-none",
        "nntp-resnet8-none-standard",
        "classrepsim-resnet8-none-none", "classrepsim-resnet8-none-standard",
        "classrepsim-class-resnet8-none-none", "classrepsim-class-resnet8-none-standard")}
    expected |= {"toy-accuracy", f"toy-knn-{PROBE}-euclidean-k5"}
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
            assert sha256_artifact(results.parent / shown) == digest
    by_id = {r.id: r for r in recs}
    nntp = by_id[f"{prefix}-nntp-resnet8-none-none"]
    assert nntp.config["k"] == 3 and nntp.config["alpha"] == 0 and nntp.config["seeds"] == [0, 1]
    assert nntp.config["config.knn"] == {"k": KS} and "config.training" not in nntp.config
    assert set(nntp.inputs) == {f"results/toy/resnet8-none-none-s{s}/metrics/{PROBE}/"
                                f"euclidean-auto/manifest.json" for s in (0, 1)}
    assert by_id[f"{prefix}-curves-resnet8"].config["band"] == "sd"
    diff = by_id[f"{prefix}-nnts-diff-resnet8"]
    assert diff.config["k"] == 3 and diff.config["seeds"] == {"standard": [0, 1], "none": [0, 1]}
    assert len(diff.inputs) == 4  # the four runs' metric manifests
    assert not any("hyperparams" in r.id or "guideline" in r.id for r in recs)  # one analysis/run
    acc = by_id["toy-accuracy"]
    assert "results/toy/cost.parquet" in acc.inputs
    assert acc.config["config.training"] == {"epochs": 3}
    assert len(json.loads((reports / "index.json").read_text())["figures"]) == len(recs)


def test_build_report_skips_absent_inputs_and_checks_options(tmp_path):
    results = tmp_path / "results"
    run_dir = write_run(results, "none", 0, eval_acc=0.5)
    (run_dir / "train_log.json").unlink()
    shutil.rmtree(run_dir / "metrics")
    recs = build_report(listing(results), tmp_path / "reports")
    assert [r.id for r in recs] == ["toy-accuracy"]  # no metrics, logs, kNN or cost
    assert recs[0].inputs == {"results/toy/resnet8-none-none-s0/metrics.json":
                              sha256_artifact(results / "toy/resnet8-none-none-s0/metrics.json")}
    assert (tmp_path / "reports" / "index.html").is_file()
    with pytest.raises(ValueError, match="unknown key"):
        report_options({"report": {"scales": "full"}})
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nowhere.json", tmp_path / "reports")  # no input list
    listed = ReportInputs.of(results, training=[run_dir / "train_log.json"])
    with pytest.raises(FileNotFoundError, match="train_log.json"):  # a listed file is missing
        build_report(listed, tmp_path / "reports")
    with pytest.raises(ValueError, match="not under the results directory"):
        ReportInputs.of(results, cost=[tmp_path / "toy" / "cost.parquet"])


def measure_row(m) -> str:
    """The index's row of one registered measure (rra.metrics.registry.Measure), built from its
    declared properties."""
    import html

    cell = {True: "yes", False: "no", None: "–"}
    cells = (m.name, cell[m.symmetric], cell[m.larger_is_more_similar],
             cell[m.needs_embeddings], html.escape("; ".join(m.invariances)),
             html.escape(m.tag_text[1:-1]))
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def test_index_lists_every_registered_measure_with_its_properties(report):
    from rra.metrics.registry import MEASURES

    reports, _ = report
    page = (reports / "index.html").read_text()
    assert '<li><a href="#measures">Measures</a></li>' in page
    section = page[page.index('<section id="measures">'):page.index("</body>")]
    assert ("<tr><th>measure</th><th>symmetric</th><th>larger is more similar</th>"
            "<th>needs embeddings</th><th>invariances</th><th>tag</th></tr>") in section
    for m in MEASURES.values():
        assert measure_row(m) in section, m.name
    assert section.count("<tr>") == 1 + len(MEASURES)
    assert "<td>class_response</td><td>–</td><td>–</td><td>no</td>" in section
    measures = json.loads((reports / "index.json").read_text())["measures"]
    assert [r["name"] for r in measures] == list(MEASURES)
    assert measures[0]["invariances"] == "; ".join(MEASURES["nnts"].invariances)


def test_index_reads_the_measures_from_the_registry(tmp_path, monkeypatch):
    """A measure changed in the registry is changed in the next report (none hard-coded)."""
    import dataclasses

    from rra.metrics import registry

    changed = {"toy_measure": dataclasses.replace(
        registry.MEASURES["cycle_knn"], name="toy_measure", invariances=("relabelling",),
        tag="ours", source="a test")}
    monkeypatch.setattr(registry, "MEASURES", changed)
    build_report(ReportInputs.of(tmp_path / "results"), tmp_path / "reports")
    page = (tmp_path / "reports" / "index.html").read_text()
    section = page[page.index('<section id="measures">'):]
    assert measure_row(changed["toy_measure"]) in section
    assert section.count("<tr>") == 2 and "nnts" not in section


def test_classrepsim_only_folder_gets_its_heatmaps_not_a_warning(tmp_path):
    """The baseline's analysis on the val probe (what the stac-auto choice reads) computes
    ClassRepSim only; its empty NNTS table must give the E4 heat maps, not a no-NNTS warning."""
    import warnings

    results = tmp_path / "results"
    run_dir = write_run(results, "none", 0, eval_acc=0.5)
    mdir = run_dir / "metrics" / "val-all-s0" / "euclidean-auto"
    mdir.mkdir(parents=True)
    run = dict(run_id("none", 0), probe="val-all-s0", distance="euclidean", backend="auto")
    for name, rows in metric_rows(0).items():
        frame(rows if name == "classrepsim" else [], run).write_parquet(mdir / f"{name}.parquet")
    write_json(mdir / "manifest.json", {"run": run, "ks": [5], "alphas": [0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recs = build_report(listing(results), tmp_path / "reports")
    ids = {r.id for r in recs}
    assert {"toy-val-all-s0-euclidean-auto-classrepsim-resnet8-none-none",
            "toy-val-all-s0-euclidean-auto-classrepsim-class-resnet8-none-none"} <= ids
    assert not any(i.startswith("toy-val-all-s0") and "nnts" in i for i in ids)
    rec = next(r for r in recs if r.id == "toy-val-all-s0-euclidean-auto-classrepsim-resnet8-none-none")
    assert rec.config["k"] == 3 and list(rec.inputs) == [
        "results/toy/resnet8-none-none-s0/metrics/val-all-s0/euclidean-auto/manifest.json"]


def test_failed_report_leaves_the_previous_one_intact(tmp_path):
    """The report is built next to reports_dir and swapped in only when complete: a failure in
    the middle (here report.alpha that was never computed) keeps every old file; a success
    replaces the figures (stale ones go), keeps what else lives there, leaves no temporaries."""
    results = tmp_path / "results"
    write_run(results, "none", 0, eval_acc=0.5)
    reports = tmp_path / "reports"
    (reports / "figures" / "toy").mkdir(parents=True)
    old = {"figures/toy/stale.png": b"old figure", "index.html": b"old index",
           "index.json": b"{}", "metrics.json": b"{}", "README.md": b"kept"}
    for name, data in old.items():
        (reports / name).write_bytes(data)
    with pytest.raises(ValueError, match=r"config report.alpha = 7 was not computed; "
                                         r"available: \[0, 1\]"):
        build_report(listing(results), reports, config={"report": {"alpha": 7}})
    assert {n: (reports / n).read_bytes() for n in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "results"]
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        ["figures", "index.html", "index.json", "metrics.json", "README.md"])

    recs = build_report(listing(results), reports, config={"report": {"alpha": 1}})
    assert not (reports / "figures" / "toy" / "stale.png").exists()
    assert (reports / "README.md").read_bytes() == b"kept"
    assert (reports / "index.html").read_bytes() != old["index.html"]
    for rec in recs:
        for f, digest in rec.files.items():
            assert sha256_file(reports / f) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "results"]
    assert not [p for p in reports.rglob("*") if p.name.endswith(".tmp")]


def test_a_run_missing_from_the_list_is_in_no_figure(results, tmp_path):
    """The report draws what its input list names, not what the results folder holds: a run
    whose folder is still there but that the list leaves out (a run removed from the config)
    appears in no figure, table or record."""
    gone = "resnet8-none-standard-s1"
    reports = tmp_path / "reports"
    recs = build_report(listing(results, without=gone), reports,
                        config={"report": {"band": "sd"}})
    assert recs and not any(gone in path for r in recs for path in r.inputs)
    by_id = {r.id: r for r in recs}
    prefix = f"toy-{PROBE}-euclidean-auto"
    assert by_id[f"{prefix}-nntp-resnet8-none-standard"].config["seeds"] == [0]
    assert by_id[f"{prefix}-nnts-diff-resnet8"].config["seeds"] == {"standard": [0],
                                                                    "none": [0, 1]}
    accuracy = json.loads((reports / "figures/toy/accuracy.html").read_text()
                          .split("const spec = ", 1)[1].split(";\n", 1)[0])
    seeds = {r["variant"]: r["text"] for rows in accuracy["datasets"].values() for r in rows
             if r.get("column") == "seeds"}
    assert seeds == {"resnet8 · none · none": "2", "resnet8 · none · standard": "1"}
    curves = by_id["toy-weight-change-l1-curves"]
    assert not any(gone in p for p in curves.inputs) and len(curves.inputs) == 3


def test_every_figure_family_has_its_snakemake_report_caption(report, e2_report):
    captions = check_family_captions(report[1] + e2_report[1])
    assert len(captions) == 12  # the families of the metric, training, kNN, E2 and STAC figures
    assert "A figure of the rra study" in figure_caption("toy/unknown-figure")


# ----------------------------------------------------------------- E3: NNTS difference heat map

def test_nnts_diff_heatmap_values_colour_scale_and_order():
    rows = []
    for aug, seeds, off in (("none", (0, 1), (0.2, 0.4)), ("standard", (0, 1, 2), (0.5, 0.6, 0.7))):
        for seed, v in zip(seeds, off):
            for i, a in enumerate(["z", "a"]):  # forward order z, a (≠ alphabetical)
                for j, b in enumerate(["z", "a"]):
                    rows.append({"augmentation": aug, "seed": seed, "hook_a": a, "pos_a": i,
                                 "hook_b": b, "pos_b": j, "value": 1.0 if a == b else v})
    df = pl.DataFrame(rows)
    chart = charts.nnts_diff_heatmap(df)
    spec = chart.to_dict()
    scale = spec["encoding"]["color"]["scale"]
    assert spec["encoding"]["color"]["field"] == "diff" and scale["domainMid"] == 0
    assert scale["domain"] == [pytest.approx(-0.3), pytest.approx(0.3)]  # ± max |Δ|
    cells = {(r["hook_a"], r["hook_b"]): r for r in only_dataset(chart)}
    assert len(cells) == 4
    assert cells[("z", "a")]["diff"] == pytest.approx(0.6 - 0.3)  # means over 3 and 2 seeds
    assert (cells[("z", "a")]["n_standard"], cells[("z", "a")]["n_none"]) == (3, 2)
    assert cells[("z", "z")]["diff"] == 0.0
    assert axis_labels(chart, "bottom") == [["z", "a"]]
    assert axis_labels(chart, "left") == [["z", "a"]]
    with pytest.raises(ValueError, match="no rows with augmentation = 'standard'"):
        charts.nnts_diff_heatmap(df.filter(pl.col("augmentation") == "none"))
    with pytest.raises(ValueError, match="present for only one"):
        charts.nnts_diff_heatmap(df.filter(~((pl.col("augmentation") == "none")
                                             & (pl.col("hook_b") == "a"))))


# ------------------------------------------------------------------------ E4: STAC scale choice

STAC = {"scales": [2, 2], "tau": 0.6, "k": 3,
        "baseline": {"model": "resnet8", "attention": "none", "augmentation": "none", "seed": 0},
        "stages": [{"stage": 0, "hook": "layer1.1", "scale": 2, "qualified": True,
                    "evidence": {"1": 0.4, "2": 0.7, "4": 0.9}},
                   {"stage": 1, "hook": "layer2.0", "scale": 2, "qualified": False,
                    "evidence": {"1": 0.2, "2": 0.3}}]}


def test_stac_scales_frame_and_chart(tmp_path):
    path = write_json(tmp_path / "resnet8-none-none-s0.json", STAC)
    df, meta = frames.stac_scales_frame(path)
    assert (meta["tau"], meta["k"], meta["scales"]) == (0.6, 3, [2, 2])
    assert df.height == 5
    assert df.filter(pl.col("chosen")).select("stage", "scale", "value", "qualified").rows() == [
        (0, 2, 0.7, True), (1, 2, 0.3, False)]
    assert df["scale"].dtype == pl.Int64 and df["stage_label"][0] == "stage 0 · layer1.1"
    chart = charts.stac_scales_chart(df)
    spec = chart.to_dict()
    assert spec["facet"]["field"] == "stage_label"
    assert spec["facet"]["sort"] == ["stage 0 · layer1.1", "stage 1 · layer2.0"]
    layers = spec["spec"]["layer"]
    marks = [layer["mark"]["type"] for layer in layers]
    assert marks == ["rule", "line", "rule", "point", "point", "text", "point"]
    assert layers[0]["encoding"]["y"]["field"] == "tau"
    assert layers[0]["transform"] == [{"filter": "datum.criterion"}]
    assert layers[1]["encoding"]["x"]["sort"] == [1, 2, 4]
    assert layers[1]["encoding"]["color"]["field"] == "evidence"
    assert layers[4]["transform"] == [{"filter": "datum.chosen"}]
    assert len(only_dataset(chart)) == 5
    no_tau = {k: v for k, v in STAC.items() if k != "tau"}
    for broken, match in ((no_tau, r"lacks key\(s\) \['tau'\]"),
                          ({**STAC, "stages": [{**STAC["stages"][0], "scale": 8}]},
                           "chose scale 8"),
                          ({**STAC, "stages": [{**STAC["stages"][0], "evidence": {"full": 1.0}}]},
                           "chose scale 2")):
        with pytest.raises(ValueError, match=match):
            frames.stac_scales_frame(write_json(tmp_path / "bad.json", broken))


STAC_BOTH = {"scales": [4, 1], "criterion": "agreement", "tau": 0.5, "delta": 0.05, "k": 10,
             "baseline": {"model": "resnet20", "probe": "val-all-s0"},
             "budget": {"flops_ratio": 1.015, "max_flops_ratio": 1.02, "rule_scales": [4, 2],
                        "rule_flops_ratio": 1.03, "limited": True},
             "stages": [{"stage": 0, "hook": "layer1.2", "scale": 4, "rule_scale": 4,
                         "qualified": True, "threshold": 0.854,
                         "evidence": {"1": 0.57, "2": 0.841, "4": 0.904},
                         "agreement": {"1": 0.57, "2": 0.841, "4": 0.904},
                         "jaccard": {"1": 0.113, "2": 0.308, "4": 0.478}},
                        {"stage": 1, "hook": "layer2.2", "scale": 1, "rule_scale": 2,
                         "qualified": False, "threshold": 0.911,
                         "evidence": {"1": 0.879, "2": 0.936, "4": 0.961},
                         "agreement": {"1": 0.879, "2": 0.936, "4": 0.961},
                         "jaccard": {"1": 0.269, "2": 0.492, "4": 0.629}}]}


def test_stac_scales_figure_shows_both_measures_and_the_budget(tmp_path):
    """E4: both evidence measures per stage, the deciding one's threshold, the chosen scale and
    the criterion's pick that the FLOPs budget moved."""
    df, meta = frames.stac_scales_frame(write_json(tmp_path / "b.json", STAC_BOTH))
    assert df.height == 12 and sorted(df["measure"].unique()) == ["agreement", "jaccard"]
    assert meta["criterion"] == "agreement" and meta["budget"]["flops_ratio"] == 1.015
    assert df.filter(pl.col("chosen")).select("stage", "measure", "scale", "value").rows() == [
        (0, "agreement", 4, 0.904), (1, "agreement", 1, 0.879)]
    assert df.filter(pl.col("rule") & ~pl.col("chosen")).select("stage", "scale").rows() == [(1, 2)]
    assert df.filter(pl.col("criterion"))["measure"].unique().to_list() == ["agreement"]
    assert df.filter(pl.col("stage") == 1)["tau"].unique().to_list() == [0.911]
    chart = charts.stac_scales_chart(df)
    data = only_dataset(chart)
    assert {r["evidence"] for r in data} == {"ClassRepSim S[s, full]",
                                             "class-response agreement A[s, full]"}
    layers = chart.to_dict()["spec"]["layer"]
    assert layers[6]["transform"] == [{"filter": "datum.rule && !datum.chosen"}]


def stac_classrepsim(path: Path, *, k: int = 10) -> Path:
    """A baseline's ClassRepSim table behind STAC_BOTH: S[s, full] with an interval, a chance
    level and p (stage 0's scale 1 indistinguishable from chance) and two classes of agreement
    (class mean = the file's value), plus rows the choice does not read (k = 3, [s, 2])."""
    rows = []
    for st in STAC_BOTH["stages"]:
        for scale, v in st["jaccard"].items():
            common = dict(hook_a=st["hook"], pos_a=st["stage"], scale_a=scale, k=k)
            rows += [dict(common, scale_b="full", measure="classrepsim_mean", value=v,
                          lo=v - 0.05, hi=v + 0.04, null=0.1 * st["stage"] + 0.05,
                          p=0.3 if (st["stage"], scale) == (0, "1") else 1e-6),
                     dict(common, scale_b="full", k=3, measure="classrepsim_mean", value=0.0,
                          lo=0.0, hi=0.0, null=0.0, p=1.0),
                     dict(common, scale_b="2", measure="classrepsim_mean", value=0.0,
                          lo=0.0, hi=0.0, null=0.0, p=1.0)]
        for scale, a in st["agreement"].items():
            for cls, off, half in ((0, 0.01, 0.02), (1, -0.01, 0.04)):
                rows.append(dict(hook_a=st["hook"], pos_a=st["stage"], scale_a=scale,
                                 scale_b="full", k=k, measure="class_response_agreement",
                                 **{"class": cls}, value=a + off, lo=a + off - half,
                                 hi=a + off + half))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame(rows, run_id("none", 0)).write_parquet(path)
    return path


def test_stac_scales_figure_draws_the_classrepsim_intervals(tmp_path):
    """#15: the evidence's bootstrap interval and chance level, read from the ClassRepSim table
    the choice names (found under the file's dataset folder when the results moved), drawn as
    bars with chance-like points faded; none when the table is gone or changed."""
    dataset = tmp_path / "results" / "toy"
    tail = "resnet20-none-none-s0/metrics/val-all-s0/euclidean-auto/classrepsim.parquet"
    table = stac_classrepsim(dataset / tail)
    moved = {**STAC_BOTH, "classrepsim": f"/elsewhere/results/toy/{tail}",
             "classrepsim_sha256": sha256_file(table)}
    df, meta = frames.stac_scales_frame(write_json(dataset / "stac_scales" / "b.json", moved))
    assert meta["classrepsim"] == table and df.height == 12
    cell = {(r["stage"], r["measure"], r["scale"]): r for r in df.iter_rows(named=True)}
    j = cell[(1, "jaccard", 2)]
    assert (j["lo"], j["hi"], j["null"], j["p"]) == (
        pytest.approx(0.492 - 0.05), pytest.approx(0.492 + 0.04), pytest.approx(0.15), 1e-6)
    assert cell[(0, "jaccard", 1)]["p"] == 0.3
    a = cell[(0, "agreement", 4)]  # mean over the two classes of the per-class interval
    assert (a["lo"], a["hi"]) == (pytest.approx(0.904 - 0.03), pytest.approx(0.904 + 0.03))
    assert a["null"] is None and a["p"] is None
    chart = charts.stac_scales_chart(df)
    layers = chart.to_dict()["spec"]["layer"]
    assert [lay["mark"]["type"] if isinstance(lay["mark"], dict) else lay["mark"]
            for lay in layers] == ["rule", "line", "rule", "point", "point", "text", "point"]
    bars, points = layers[2]["encoding"], layers[3]["encoding"]
    assert (bars["y"]["field"], bars["y2"]["field"]) == ("lo", "hi")
    fade = {"condition": {"test": "datum.chance_like", "value": charts.FADED}, "value": 1.0}
    assert bars["opacity"] == fade and points["opacity"] == fade
    assert {"lo", "hi", "null", "p"} <= {t["field"] for t in points["tooltip"]}
    faded = {(r["stage"], r["measure"], r["scale"]) for r in only_dataset(chart)
             if r["chance_like"]}
    assert faded == {(0, "jaccard", 1)}
    # a table rewritten since the choice, a file without the table's path: plain values
    for data in ({**moved, "classrepsim_sha256": "0" * 64}, STAC_BOTH):
        df, meta = frames.stac_scales_frame(write_json(dataset / "stac_scales" / "c.json", data))
        assert meta["classrepsim"] is None and df.height == 12
        assert df.select(pl.col("lo", "hi", "null", "p").null_count()).row(0) == (12,) * 4
        assert not any(r["chance_like"] for r in only_dataset(charts.stac_scales_chart(df)))
    # the path as written, when it is there
    at = {**moved, "classrepsim": str(table)}
    assert frames.stac_scales_frame(write_json(tmp_path / "d.json", at))[1]["classrepsim"] == table


# --------------------------------------------------------------------- E2: RRA hyper-parameters

E2_HOOKS = ["stem", "layer1.0", "fc"]  # forward order ≠ alphabetical
E2_SCALES = {"stem": ["1", "full"], "layer1.0": ["1", "full"], "fc": ["full"]}
E2_ANALYSES = [  # (probe, {distance}-{backend} folder, seeds)
    ("test-n4-s0", "euclidean-auto", (0, 1)),             # the reference (config's setting)
    ("test-n8-s0", "euclidean-auto", (0, 1)),             # probe
    ("test-n4-s0", "cosine-auto", (0,)),                  # distance: seed 0 only
    ("test-n4-s0", "euclidean-annoy-t10-sauto", (0, 1)),  # backend
    ("test-n8-s0", "cosine-auto", (1,)),                  # two parameters at once: unused
]
E2_RECALL = {"stem": 0.9, "layer1.0": 0.8, "fc": 0.7}  # Annoy recall per hook


def e2_offset(probe: str, spec: str, pos: int, seed: int) -> float:
    """What each setting adds to every measure at a hook of forward position ``pos``."""
    return (0.03 * (pos + 1) * (probe == "test-n8-s0") - 0.05 * spec.startswith("cosine")
            + 0.01 * pos * ("annoy" in spec) + 0.02 * seed)


def e2_tables(probe: str, spec: str, seed: int) -> dict[str, list[dict]]:
    pos = {h: i for i, h in enumerate(E2_HOOKS)}
    off = {h: e2_offset(probe, spec, pos[h], seed) for h in E2_HOOKS}
    out: dict[str, list[dict]] = {"nnts": [], "nntp": [], "class_response": [],
                                  "classrepsim": [], "knn": []}
    for scale in ("1", "full"):
        hooks = [h for h in E2_HOOKS if scale in E2_SCALES[h]]
        for k in (3, 5):
            for h in hooks:
                common = dict(hook_a=h, pos_a=pos[h], scale_a=scale, k=k)
                out["class_response"].append(dict(common, measure="knn_purity", value=(
                    0.3 + 0.1 * pos[h] + off[h] + 0.04 * (k == 5) - 0.2 * (scale == "1"))))
                out["class_response"].append(dict(common, measure="knn_vote_accuracy", value=(
                    0.2 + 0.1 * pos[h] + off[h] - 0.1 * (scale == "1"))))
                for b in hooks:
                    out["nnts"].append(dict(common, measure="nnts", hook_b=b, pos_b=pos[b],
                                            scale_b=scale, value=1.0 if b == h else (
                        0.4 + 0.05 * (pos[h] + pos[b]) + off[h] + 0.02 * pos[h] * (k == 5))))
        for h in hooks:
            annoy = "annoy" in spec
            out["knn"].append(dict(measure="knn_recall", hook_a=h, pos_a=pos[h], scale_a=scale,
                                   k=5, backend="annoy" if annoy else "exact",
                                   value=E2_RECALL[h] if annoy else 1.0))
    for name in ("class_response", "nnts"):
        for row in out[name]:
            row.update(e2_uncertainty(row, seed))
    return out


def e2_uncertainty(row: dict, seed: int) -> dict:
    """The lo, hi, null, p of an E2 table row: an interval around the value that differs by
    hook, measure and seed, and a stem whose seed 1 is indistinguishable from chance."""
    v, pos = row["value"], row["pos_a"]
    return {"lo": v - 0.01 * (pos + 1) - 0.001 * seed, "hi": v + 0.02 + 0.003 * seed,
            "null": 0.1 + 0.01 * pos + 0.1 * (row["measure"] == "nnts"),
            "p": 0.3 if (row["hook_a"] == "stem" and seed == 1) else 1e-4 * (pos + 1)}


#: an analysis whose tables were written before the uncertainty columns existed
E2_OLD_TABLES = ("test-n4-s0", "cosine-auto")


@pytest.fixture(scope="module")
def e2_results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("e2") / "results"
    for probe, spec, seeds in E2_ANALYSES:
        distance, backend = spec.split("-", 1)
        for seed in seeds:
            run = dict(run_id("none", seed), probe=probe)
            run_dir = results / "toy" / f"resnet8-none-none-s{seed}"
            mdir = run_dir / "metrics" / probe / spec
            mdir.mkdir(parents=True)
            # the tables say "annoy", as the metrics stage writes the requested backend
            constants = dict(run, distance=distance, backend=backend.split("-")[0])
            for name, rows in e2_tables(probe, spec, seed).items():
                table = frame(rows, constants)
                if (probe, spec) == E2_OLD_TABLES:
                    table = table.drop("lo", "hi", "null", "p")
                table.write_parquet(mdir / f"{name}.parquet")
            write_json(mdir / "manifest.json", {"run": run, "ks": [3, 5]})
            annoy = "annoy" in spec
            write_json(run_dir / "knn" / probe / spec / "manifest.json", {
                "k_max": 5, "distance": distance, "backend": backend.split("-")[0],
                "hooks": E2_HOOKS, "options": {"n_trees": 10, "search_k": "auto"},
                "entries": [{"hook": h, "scale": s, "n": 40, "d": 8,
                             "backend": "annoy" if annoy else "exact",
                             "recall": E2_RECALL[h] if annoy else 1.0,
                             "search_k": 60 if annoy else None,
                             "seconds": 0.1 * (seed + 1) if annoy else 0.5}
                            for h in E2_HOOKS for s in E2_SCALES[h]]})
    write_json(results / "toy" / "stac_scales" / "resnet8-none-none-s0.json", STAC)
    return results


E2_CONFIG = {"probe": {"split": "test", "n_per_class": 4, "seed": 0},
             "knn": {"k": [3, 5], "distance": ["euclidean"], "backend": "auto"}}
#: the reference analysis: the config's (rra.config.e2_settings; three settings tie at 2 runs)
E2_REFERENCE = {"probe": "test-n4-s0", "distance": "euclidean", "backend": "auto"}


def test_metric_folders_parse_annoy_settings(e2_results):
    specs = {(d.probe, d.distance, d.backend) for d in metric_folders(e2_results)}
    assert ("test-n4-s0", "euclidean", "annoy-t10-sauto") in specs
    folder = MetricFolder.of(e2_results / "toy/resnet8-none-none-s1/metrics/test-n4-s0/"
                                          "cosine-annoy-t50-s-1/manifest.json")
    assert (folder.distance, folder.backend, folder.run.seed) == ("cosine", "annoy-t50-s-1", 1)
    assert folder.knn_manifest == (e2_results / "toy/resnet8-none-none-s1/knn/test-n4-s0/"
                                                "cosine-annoy-t50-s-1/manifest.json")
    for bad, match in (("toy/resnet8-none-none-s1/metrics/test-n4-s0/euclidean", "kNN setting"),
                       ("toy/stac_scales/metrics/test-n4-s0/euclidean-auto", "run name"),
                       ("toy/resnet8-none-none-s1/layers/test-n4-s0/euclidean-auto",
                        "not the manifest of a metrics folder")):
        with pytest.raises(ValueError, match=match):
            MetricFolder.of(e2_results / bad / "manifest.json")


def test_reference_analysis_and_value_order():
    a, b = ("p", "euclidean", "auto"), ("p", "euclidean", "annoy-t10-sauto")
    assert reference_analysis([a, a, b]) == a  # the most common
    assert reference_analysis([a, b]) == b  # a tie: name order...
    assert reference_analysis([a, b], {"probe": "p", "distance": "euclidean",
                                       "backend": "auto"}) == a  # ...or the config
    order = hyperparams.value_order
    assert order("probe", ["test-all-s0", "test-n100-s0", "test-n20-s0"]) == [
        "test-n20-s0", "test-n100-s0", "test-all-s0"]
    assert order("backend", ["annoy-t50-s-1", "auto", "annoy-t10-sauto", "exact", "annoy"]) == [
        "exact", "auto", "annoy", "annoy-t10-sauto", "annoy-t50-s-1"]
    assert order("k", [10, 3, 5]) == ["3", "5", "10"]
    assert order("scale", ["full", "4", "1"]) == ["1", "4", "full"]
    with pytest.raises(ValueError, match="unknown E2 parameter"):
        order("alpha", [0])


REF = hyperparams.Reference("test-n4-s0", "euclidean", "auto", 3, "full")


def test_panel_frame_holds_the_others_at_the_reference(e2_results):
    summary = hyperparams.summary_frame(metric_folders(e2_results))
    assert set(summary["backend"]) == {"auto", "annoy-t10-sauto"}  # the folder's setting
    panel = hyperparams.panel_frame(summary, REF)
    seeds = {p: hyperparams.panel_seeds(panel, p) for p in hyperparams.PARAMETERS}
    assert seeds == {"probe": [0, 1], "distance": [0], "backend": [0, 1], "k": [0, 1],
                     "scale": [0, 1]}
    values = {p: hyperparams.panel_values(panel, p) for p in hyperparams.PARAMETERS}
    assert values == {"probe": ["test-n4-s0", "test-n8-s0"], "distance": ["cosine", "euclidean"],
                      "backend": ["auto", "annoy-t10-sauto"], "k": ["3", "5"],
                      "scale": ["1", "full"]}
    # rows per parameter: values × seeds × (3 measures × 3 hooks); scale: purity and vote only,
    # stem and layer1.0 at two scales, fc at full
    counts = dict(panel.group_by("parameter").len().iter_rows())
    assert counts == {"probe": 2 * 2 * 9, "distance": 2 * 1 * 9, "backend": 2 * 2 * 9,
                      "k": 2 * 2 * 9, "scale": 2 * 5 * 2}
    assert set(panel.filter(pl.col("reference"))["setting"]) == {
        "test-n4-s0", "euclidean", "auto", "3", "full"}
    # the (test-n8-s0, cosine) analysis differs in two parameters: in no panel
    assert panel.filter((pl.col("parameter") == "distance") & (pl.col("seed") == 1)).height == 0
    # runs with a single analysis: no panel at all
    single = summary.filter((pl.col("probe") == "test-n4-s0") & (pl.col("distance") == "euclidean")
                            & (pl.col("backend") == "auto"))
    assert hyperparams.panel_frame(single, REF).height == 0
    assert hyperparams.reference_setting(summary, E2_REFERENCE) == REF  # k: the smallest
    assert hyperparams.reference_setting(summary, E2_REFERENCE, k=5, scale="1") == \
        hyperparams.Reference("test-n4-s0", "euclidean", "auto", 5, "1")
    with pytest.raises(ValueError, match=r"report.k = 7 was not computed.*\[3, 5\]"):
        hyperparams.reference_setting(summary, E2_REFERENCE, k=7)


def test_panel_frame_carries_the_source_rows_intervals(e2_results):
    """#15: lo, hi, null, p of each panel row are those of its class_response / nnts row (the
    NNTS to the logits: the row of the hook and the last hook); null for tables without them."""
    folders = metric_folders(e2_results)
    summary = hyperparams.summary_frame(folders)
    assert summary.columns == hyperparams.SUMMARY_COLUMNS
    panel = hyperparams.panel_frame(summary, REF)
    assert panel.columns == hyperparams.PANEL_COLUMNS
    assert {c: panel.schema[c] for c in ("lo", "hi", "null", "p")} == {
        c: pl.Float64 for c in ("lo", "hi", "null", "p")}
    source = {(f.probe, f.distance, f.backend, f.run.seed): f for f in folders}
    ci = ["lo", "hi", "null", "p"]

    def table_row(name: str, where: pl.Expr, seed: int, probe="test-n8-s0",
                  distance="euclidean", backend="auto") -> dict:
        rows = read_tables([source[(probe, distance, backend, seed)]], name, where)
        assert rows.height == 1
        return rows.select(ci).row(0, named=True)

    def panel_row(parameter: str, setting: str, measure: str, hook: str, seed: int) -> dict:
        rows = panel.filter((pl.col("parameter") == parameter) & (pl.col("setting") == setting)
                            & (pl.col("measure") == measure) & (pl.col("hook_a") == hook)
                            & (pl.col("seed") == seed))
        assert rows.height == 1
        return rows.select(ci).row(0, named=True)

    at = (pl.col("hook_a") == "layer1.0") & (pl.col("k") == 3) & (pl.col("scale_a") == "full")
    for seed in (0, 1):
        purity = table_row("class_response", at & (pl.col("measure") == "knn_purity"), seed)
        assert purity["lo"] is not None and purity["p"] is not None
        assert panel_row("probe", "test-n8-s0", "knn_purity", "layer1.0", seed) == purity
        logits = table_row("nnts", at & (pl.col("hook_b") == "fc"), seed)
        assert panel_row("probe", "test-n8-s0", "nnts_to_logits", "layer1.0", seed) == logits
    # the scale panel (scale "1") and the k panel (k = 5) read their own rows
    one = (pl.col("hook_a") == "stem") & (pl.col("k") == 3) & (pl.col("scale_a") == "1") & (
        pl.col("measure") == "knn_vote_accuracy")
    assert panel_row("scale", "1", "knn_vote_accuracy", "stem", 1) == table_row(
        "class_response", one, 1, probe="test-n4-s0")
    # the cosine analysis's tables predate the columns: null, the euclidean ones are not
    cosine = panel.filter((pl.col("parameter") == "distance") & (pl.col("setting") == "cosine"))
    assert cosine.height and cosine.select(pl.all_horizontal(pl.col(ci).is_null()).all()).item()
    euclid = panel.filter((pl.col("parameter") == "distance") & (pl.col("setting") == "euclidean"))
    assert euclid.select(pl.col(ci).is_not_null().all()).row(0) == (True,) * 4
    # a summary frame without the columns (older code, a hand-made frame): null columns
    bare = hyperparams.panel_frame(summary.drop(ci), REF)
    assert bare.columns == hyperparams.PANEL_COLUMNS and bare.height == panel.height
    assert bare.select(pl.col(ci).null_count()).row(0) == (bare.height,) * 4
    logits = hyperparams.nnts_to_logits(read_tables(folders, "nnts").drop(ci))
    assert logits.select(pl.col(ci).null_count()).row(0) == (logits.height,) * 4


def test_hyperparam_panels_spec_and_values(e2_results):
    panel = hyperparams.panel_frame(hyperparams.summary_frame(metric_folders(e2_results)), REF)
    chart = charts.hyperparam_panels(panel, parameters=hyperparams.PARAMETERS)
    spec = chart.to_dict()
    assert len(spec["vconcat"]) == 3  # purity, vote accuracy, NNTS to logits
    row = spec["vconcat"][0]
    assert row["facet"]["column"]["field"] == "parameter"
    assert row["facet"]["column"]["sort"] == list(hyperparams.PARAMETERS)
    assert row["resolve"]["scale"]["x"] == "independent"
    assert row["spec"]["layer"][0]["encoding"]["color"]["sort"] == {
        "field": "pos_a", "op": "min", "order": "ascending"}
    purity, vote, nnts = (datasets_of(chart)[i] for i in range(3))
    assert len(purity) == 4 * 2 * 3 + 5 and len(vote) == 4 * 2 * 3 + 5 and len(nnts) == 4 * 2 * 3
    r = next(r for r in purity if r["parameter"] == "probe" and r["setting"] == "test-n8-s0"
             and r["hook_a"] == "layer1.0")
    # 0.3 + 0.1·1 + 0.03·2 + 0.02·seed, mean over seeds 0 and 1
    assert r["mean"] == pytest.approx(0.47) and r["n"] == 2 and r["label"] == "test-n8-s0"
    assert {r["label"] for r in purity if r["parameter"] == "k"} == {"3 *", "5"}
    # #15: the interval (mean over seeds of lo, hi) as bars, chance-like points faded
    rows = panel.filter((pl.col("parameter") == "probe") & (pl.col("setting") == "test-n8-s0")
                        & (pl.col("measure") == "knn_purity") & (pl.col("hook_a") == "layer1.0"))
    assert rows.height == 2
    assert r["ci_lo"] == pytest.approx(rows["lo"].mean())
    assert r["ci_hi"] == pytest.approx(rows["hi"].mean())
    assert r["chance"] == pytest.approx(rows["null"].mean()) and r["p_max"] == rows["p"].max()
    assert not r["chance_like"]
    stem = [x for x in purity if x["hook_a"] == "stem" and x["parameter"] == "probe"]
    assert stem and all(x["chance_like"] for x in stem)  # seed 1's p = 0.3
    assert not any(x["chance_like"] for x in purity if x["hook_a"] != "stem")
    cosine = next(x for x in purity if x["parameter"] == "distance" and x["setting"] == "cosine")
    assert cosine["ci_lo"] is None and not cosine["chance_like"]  # a table without the columns
    layers = row["spec"]["layer"]
    assert [lay["mark"]["type"] for lay in layers] == ["line", "rule", "point"]
    bars, points = layers[1]["encoding"], layers[2]["encoding"]
    assert (bars["y"]["field"], bars["y2"]["field"]) == ("ci_lo", "ci_hi")
    fade = {"condition": {"test": "datum.chance_like", "value": charts.FADED}, "value": 1.0}
    assert bars["opacity"] == fade and points["opacity"] == fade
    assert {"ci_lo", "ci_hi", "chance", "p_max"} <= {t["field"] for t in points["tooltip"]}


# parameter, measure → max_abs_change, n_hooks (see e2_offset and e2_tables)
E2_GUIDELINE = {
    ("probe", "knn_purity"): (0.06, 3),         # 0.03, 0.06, 0.09
    ("probe", "knn_vote_accuracy"): (0.06, 3),
    ("probe", "nnts_to_logits"): (0.03, 3),     # 0.03, 0.06, 0 (fc to itself)
    ("distance", "knn_purity"): (0.05, 3),
    ("distance", "knn_vote_accuracy"): (0.05, 3),
    ("distance", "nnts_to_logits"): (0.1 / 3, 3),
    ("backend", "knn_purity"): (0.01, 3),       # 0, 0.01, 0.02
    ("backend", "knn_vote_accuracy"): (0.01, 3),
    ("backend", "nnts_to_logits"): (0.01 / 3, 3),
    ("k", "knn_purity"): (0.04, 3),
    ("k", "knn_vote_accuracy"): (0.0, 3),
    ("k", "nnts_to_logits"): (0.02 / 3, 3),
    ("scale", "knn_purity"): (0.2, 2),          # fc has one scale
    ("scale", "knn_vote_accuracy"): (0.1, 2),
}


@pytest.fixture(scope="module")
def e2_report(e2_results, tmp_path_factory) -> tuple[Path, list[FigureRecord]]:
    """The E2 guideline stage on every metric folder, then the report (the workflow's order)."""
    hyperparams.e2_guideline(listing(e2_results)["metrics"], e2_results / "toy" / "e2_guideline",
                             reference=E2_REFERENCE)
    reports = tmp_path_factory.mktemp("e2-reports")
    return reports, build_report(listing(e2_results), reports, config=E2_CONFIG)


def test_build_report_e2_figures_and_guideline_csv(e2_results, e2_report):
    reports, recs = e2_report
    by_id = {r.id: r for r in recs}
    per_analysis = {f"toy-{probe}-{spec}-{name}" for probe, spec, _ in E2_ANALYSES
                    for name in ("nnts-resnet8", "curves-resnet8")}
    assert set(by_id) == per_analysis | {
        "toy-hyperparams-resnet8-none-none", "toy-e2-guideline", "toy-knn-test-n4-s0-euclidean-k5",
        "toy-stac-scales-resnet8-none-none-s0"}
    hp = by_id["toy-hyperparams-resnet8-none-none"]
    assert hp.config["reference"] == {"probe": "test-n4-s0", "distance": "euclidean",
                                      "backend": "auto", "k": 3, "scale": "full"}
    assert hp.config["seeds"]["distance"] == [0]
    # drawn from the E2 stage's tables, which record what they were computed from
    stage = "results/toy/e2_guideline"
    assert set(hp.inputs) == {f"{stage}/manifest.json", f"{stage}/panels.parquet"}
    manifest = read_json(e2_results / "toy/e2_guideline/manifest.json")
    assert manifest["reference"] == hp.config["reference"]
    read = {f"resnet8-none-none-s{s}/{kind}/{p}/{spec}/manifest.json"
            for p, spec, seeds in E2_ANALYSES for s in seeds for kind in ("metrics", "knn")}
    assert {p.split("/toy/", 1)[1] for p in manifest["inputs"]} == read
    panels = pl.read_parquet(e2_results / "toy/e2_guideline/panels.parquet")
    assert panels.columns == hyperparams.TABLES["panels"] and panels.height == sum(
        {"probe": 2 * 2 * 9, "distance": 2 * 9, "backend": 2 * 2 * 9, "k": 2 * 2 * 9,
         "scale": 2 * 5 * 2}.values())
    guide = by_id["toy-e2-guideline"]
    assert set(guide.inputs) == {f"{stage}/manifest.json", f"{stage}/guideline.parquet"}
    csv = "figures/toy/e2-guideline.csv"
    assert sorted(Path(f).suffix for f in guide.files) == [".csv", ".html", ".png", ".svg"]
    assert sha256_file(reports / csv) == guide.files[csv]
    for shown, digest in guide.inputs.items():
        assert sha256_artifact(e2_results.parent / shown) == digest
    table = pl.read_csv(reports / csv)
    assert table.columns == hyperparams.GUIDELINE_COLUMNS
    assert set(table["model"]) == {"resnet8"} and set(table["dataset"]) == {"toy"}
    change = table.filter(pl.col("statistic") == "max_abs_change")
    got = {(r["parameter"], r["measure"]): (r["value"], r["n_hooks"])
           for r in change.iter_rows(named=True)}
    assert got.keys() == E2_GUIDELINE.keys()
    for key, (value, n_hooks) in E2_GUIDELINE.items():
        assert got[key] == (pytest.approx(value, abs=1e-12), n_hooks), key
    assert change.filter(pl.col("parameter") == "distance")["n_seeds"].to_list() == [1, 1, 1]
    meta = {r["parameter"]: (r["values"], str(r["reference"]))
            for r in change.iter_rows(named=True)}
    assert meta == {"probe": ("test-n4-s0, test-n8-s0", "test-n4-s0"),
                    "distance": ("cosine, euclidean", "euclidean"),
                    "backend": ("auto, annoy-t10-sauto", "auto"), "k": ("3, 5", "3"),
                    "scale": ("1, full", "full")}
    cost = {(r["setting"], r["measure"], r["statistic"]): r["value"]
            for r in table.filter(pl.col("setting").is_not_null()).iter_rows(named=True)}
    assert cost == {
        ("auto", "knn_recall", "mean"): 1.0,
        ("auto", "seconds_per_graph", "mean"): pytest.approx(0.5),
        ("auto", "seconds_per_graph", "ratio_to_exact"): 1.0,
        # (0.9·2 + 0.8·2 + 0.7) / 5 graphs, both seeds
        ("annoy-t10-sauto", "knn_recall", "mean"): pytest.approx(0.82),
        ("annoy-t10-sauto", "seconds_per_graph", "mean"): pytest.approx(0.15),
        # Σ annoy (5·0.1 + 5·0.2) / Σ exact (10·0.5)
        ("annoy-t10-sauto", "seconds_per_graph", "ratio_to_exact"): pytest.approx(0.3)}
    spec = charts.guideline_table(table).to_dict()
    assert len(spec["vconcat"]) == 2
    stac = by_id["toy-stac-scales-resnet8-none-none-s0"]
    assert stac.config["tau"] == 0.6 and list(stac.inputs) == [
        "results/toy/stac_scales/resnet8-none-none-s0.json"]
    knn = frames.knn_graph_frame(listing(e2_results)["knn"])
    assert set(knn["backend"]) == {"auto", "annoy-t10-sauto"}
    assert set(knn["backend_label"]) == {"exact", "annoy (n_trees=10, search_k=auto)"}


def test_guideline_table_text(e2_report):
    reports, _ = e2_report
    table = pl.read_csv(reports / "figures/toy/e2-guideline.csv")
    chart = charts.guideline_table(table)
    change, cost = datasets_of(chart)
    row = "resnet8 · none · none | probe (test-n4-s0, test-n8-s0)"
    assert {r["column"]: r["text"] for r in change if r["row"] == row} == {
        "Δ kNN class purity": "0.0600", "Δ kNN-vote accuracy": "0.0600",
        "Δ NNTS to logits": "0.0300"}
    scale = "resnet8 · none · none | scale (1, full)"
    assert next(r["text"] for r in change if r["row"] == scale
                and r["column"] == "Δ NNTS to logits") == "–"
    assert len(cost) == 2 * 3
    assert {r["column"]: r["text"] for r in cost
            if r["row"] == "resnet8 · none · none | annoy-t10-sauto"} == {
        "recall@k vs exact": "0.8200", "seconds per graph": "0.15", "time / exact": "0.3"}


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


@pytest.mark.slow
def test_browser_renders_new_figures_without_warnings(e2_report):
    """E2 panels (facets with independent x), the guideline, the STAC chart: drawn, no console
    warnings (step widths with independent facet scales once made Vega warn)."""
    reports, recs = e2_report
    exe = chromium_executable()
    pages = [reports / r.file("html") for r in recs
             if r.id.startswith(("toy-hyperparams", "toy-e2-guideline", "toy-stac-scales"))]
    assert len(pages) == 3
    with tempfile.TemporaryDirectory() as user_dir:
        browser = DevTools(exe, user_dir)
        try:
            for page in pages:
                assert browser.open(page.resolve().as_uri(),
                                    "!!document.querySelector('.vega-embed svg.marks, "
                                    ".vega-embed canvas.marks')"), f"{page.name} was not drawn"
            assert browser.problems() == []
        finally:
            browser.close()
