"""rra.report: the figure families of the layer analyses (E7–E9) from tiny hand-made tables.

Two models with other hook lists (``toynet``: ``input``, ``c1``, ``fc``; ``res`` and ``resnobn``:
``stem``, ``b1``, ``fc``), two variants each, two seeds of one; the figures' data are read back
from the saved specs and compared with the tables' means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rra.io import write_json
from rra.metrics.tables import frame
from rra.report import build_report, charts
from rra.report.build import slug
from rra.report.frames import LayerDir, hook_groups, read_layer_tables
from report_captions import check_family_captions
from test_report import listing

PROBE = "test-n2-s0"
HOOKS = {"toynet": ["input", "c1", "fc"], "res": ["stem", "b1", "fc"],
         "resnobn": ["stem", "b1", "fc"]}


def _rows(analysis: str, model: str, aug: str, seed: int) -> list[dict]:
    hooks = HOOKS[model]
    bump = 0.1 * (aug == "standard") + 0.01 * seed
    rows: list[dict] = []
    if analysis == "translation":
        for pos, h in enumerate(hooks):
            for scale in ("1", "full"):
                c = dict(hook_a=h, pos_a=pos, scale_a=scale)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        r = max(abs(dx), abs(dy))
                        rows.append(dict(c, measure="translation_cosine", dx=dx, dy=dy,
                                         value=1.0 - r * (0.2 + 0.1 * pos) + bump * r))
                        rows.append(dict(c, measure="translation_rel_change", dx=dx, dy=dy,
                                         value=r * 0.3))
                for r in (0, 1):
                    rows.append(dict(c, measure="translation_cosine_radial", radius=r,
                                     value=1.0 - r * (0.2 + 0.1 * pos) + bump * r))
                    rows.append(dict(c, measure="translation_rel_change_radial", radius=r,
                                     value=r * 0.3))
                rows.append(dict(c, measure="translation_cosine_mean", value=0.8 - 0.1 * pos))
                rows.append(dict(c, measure="translation_rel_change_mean", value=0.3))
    elif analysis in ("patterns", "fragmentation"):
        names = (["relu_channel_sparsity", "relu_element_sparsity", "relu_pattern_purity",
                  "relu_tree_fidelity", "relu_tree_depth"] if analysis == "patterns"
                 else ["fragmentation_same_class", "fragmentation_mixed",
                       "fragmentation_mixed_sd"])
        for pos, h in enumerate(hooks):
            if analysis == "patterns" and h in ("input", "fc"):
                continue
            for i, m in enumerate(names):
                rows.append(dict(hook_a=h, pos_a=pos, measure=m, value=0.1 * i + bump + pos))
    elif analysis == "margins":
        for pos, h in enumerate(hooks):
            for q in (0.25, 0.5, 0.75):
                rows.append(dict(hook_a=h, pos_a=pos, scale_a="full", measure="hidden_margin",
                                 quantile=q, value=(1 + pos) * q + bump))
        for k in (1, 5, 12):
            rows.append(dict(hook_a="input", pos_a=0, scale_a="full",
                             measure="input_margin_mean", pca_k=k, value=10.0 / k + bump))
            rows.append(dict(hook_a="input", pos_a=0, scale_a="full",
                             measure="input_margin_n", pca_k=k, value=4.0))
    elif analysis == "saliency":
        for which in ("true", "pred"):
            c = dict(hook_a="input", pos_a=0, scale_a="full")
            rows.append(dict(c, measure=f"saliency_top5pct_share_{which}", value=0.3 + bump))
            rows.append(dict(c, measure=f"saliency_top5pct_share_{which}", **{"class": 1},
                             value=0.2))
    return rows


def write_layer_run(results: Path, model: str, aug: str, seed: int, analyses) -> None:
    run = {"dataset": "toy", "model": model, "attention": "none", "augmentation": aug,
           "seed": seed, "probe": PROBE}
    for analysis in analyses:
        d = results / "toy" / f"{model}-none-{aug}-s{seed}" / "layers" / PROBE / analysis
        d.mkdir(parents=True)
        frame(_rows(analysis, model, aug, seed), run).write_parquet(d / f"{analysis}.parquet")
        if analysis == "saliency":
            g = np.random.default_rng(seed)
            np.savez(d / "maps.npz", rows=np.array([0, 2]),
                     images=g.integers(0, 255, (2, 6, 6, 1), dtype=np.uint8),
                     labels=np.array([0, 1]), predicted=np.array([0, 0]),
                     true=g.random((2, 6, 6), dtype=np.float32),
                     pred=g.random((2, 6, 6), dtype=np.float32),
                     filters=g.random((4, 1, 3, 3), dtype=np.float32))
        write_json(d / "manifest.json", {"analysis": analysis, "run": run})


@pytest.fixture(scope="module")
def layer_results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("layers") / "results"
    write_layer_run(results, "toynet", "none", 0, ["translation", "margins", "saliency",
                                                    "fragmentation"])
    write_layer_run(results, "toynet", "standard", 0, ["translation", "margins", "saliency",
                                                        "fragmentation"])
    write_layer_run(results, "toynet", "standard", 1, ["translation"])
    for model in ("res", "resnobn"):
        for aug in ("none", "standard"):
            write_layer_run(results, model, aug, 0, ["patterns", "margins"])
    return results


@pytest.fixture(scope="module")
def layer_report(layer_results, tmp_path_factory):
    out = tmp_path_factory.mktemp("layer-report") / "reports"
    return out, build_report(listing(layer_results), out, config=None)


def layer_dirs(results: Path) -> list[LayerDir]:
    return [LayerDir.of(m) for m in listing(results)["layers"]]


def test_layer_dirs_tables_and_hook_groups(layer_results):
    dirs = layer_dirs(layer_results)
    assert len(dirs) == 4 + 4 + 1 + 4 * 2
    assert {d.analysis for d in dirs} == {"translation", "margins", "saliency", "fragmentation",
                                          "patterns"}
    df = read_layer_tables([d for d in dirs if d.analysis == "margins"])
    groups = hook_groups(df.filter(pl.col("measure") == "hidden_margin"))
    assert [sorted(models) for models, _ in groups] == [["res", "resnobn"], ["toynet"]]


def test_every_layer_figure_family_is_emitted_with_its_inputs(layer_results, layer_report):
    out, records = layer_report
    by_id = {r.id: r for r in records}
    prefix = f"toy/layers-{PROBE}/"
    expected = ["translation-toynet", "translation-radial-toynet", "translation-summary-toynet",
                "patterns-res-resnobn", "margins-res-resnobn", "margins-toynet", "margins-pca",
                "saliency", "saliency-share", "filters", "fragmentation-toynet"]
    for stem in expected:
        record = by_id[slug(prefix + stem)]
        assert record.caption and "E" in record.caption
        for f in record.files:
            assert (out / f).is_file()
        assert any(p.endswith("manifest.json") for p in record.inputs), stem
    # the patterns figure of the two ResNets holds both models, 4 variants
    assert set(by_id[slug(prefix + "patterns-res-resnobn")].config["models"]) == {"res",
                                                                                  "resnobn"}
    assert not any("patterns-toynet" in r.id for r in records)  # toynet has no patterns
    assert len(check_family_captions(records)) == 10  # each family its snakemake --report caption


def test_translation_map_values_are_means_over_seeds(layer_results):
    dirs = [d for d in layer_dirs(layer_results) if d.analysis == "translation"]
    df = charts.add_variant(read_layer_tables(dirs).drop("distance", "backend", "hook_b", "pos_b",
                                                         "scale_b", "k", "alpha", "class_b",
                                                         "recall_target_met", "radius",
                                                         "quantile", "pca_k", "class"))
    maps = df.filter((pl.col("measure") == "translation_cosine") & (pl.col("scale_a") == "full"))
    spec = charts.translation_maps(maps).to_dict()
    data = [r for rows in spec["datasets"].values() for r in rows]
    cell = next(r for r in data if r["variant"] == "none · standard" and r["hook_a"] == "c1"
                and r["dx"] == 1 and r["dy"] == -1)
    # seeds 0 and 1: 1 − (0.2 + 0.1) + (0.1 + 0.01 s), mean over s = 0, 1
    assert cell["mean"] == pytest.approx(0.805) and cell["n"] == 2
    centre = [r for r in data if r["dx"] == 0 and r["dy"] == 0]
    assert all(r["mean"] == pytest.approx(1.0) for r in centre)


def test_margin_boxes_quartiles_and_pca_curve(layer_results):
    dirs = [d for d in layer_dirs(layer_results) if d.analysis == "margins"]
    df = charts.add_variant(read_layer_tables(dirs), ("model", "attention", "augmentation"))
    hidden = df.filter((pl.col("measure") == "hidden_margin") & (pl.col("model") == "res"))
    spec = charts.margin_boxes(hidden.select("variant", "hook_a", "pos_a", "quantile", "value")
                               ).to_dict()
    rows = [r for rows in spec["datasets"].values() for r in rows]
    b1 = next(r for r in rows if r["hook_a"] == "b1" and r["variant"] == "res · none · none")
    assert (b1["lo"], b1["mid"], b1["hi"]) == pytest.approx((0.5, 1.0, 1.5))
    pca = df.filter(pl.col("measure") == "input_margin_mean")
    spec = charts.margin_vs_k(pca.select("variant", "pca_k", "value")).to_dict()
    rows = [r for rows in spec["datasets"].values() for r in rows]
    assert sorted({r["pca_k"] for r in rows}) == [1, 5, 12]
    k5 = next(r for r in rows if r["variant"] == "toynet · none · standard" and r["pca_k"] == 5)
    assert k5["mean"] == pytest.approx(2.1)


def test_image_grid_and_png_url():
    url = charts.png_url(np.eye(3), zoom=2)
    assert url.startswith("data:image/png;base64,")
    import base64
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (6, 6) and np.asarray(img)[0, 0] == 255 and np.asarray(img)[0, 2] == 0
    with pytest.raises(ValueError, match="H × W"):
        charts.png_url(np.zeros((2, 2, 2)))
    tiles = pl.DataFrame({"row": ["a", "a"], "column": ["x", "y"], "row_pos": [0, 0],
                          "column_pos": [1, 0], "url": [url, url], "text": ["1", "2"]})
    spec = charts.image_grid(tiles, size=6).to_dict()
    assert spec["mark"]["type"] == "image" and spec["encoding"]["url"]["field"] == "url"
