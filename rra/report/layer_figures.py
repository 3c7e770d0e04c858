"""The figures of the layer analyses of one dataset and probe ``{dataset}/layers-{probe}/``:
translation maps and profiles (E7), ReLU patterns (E8), margins, saliency and filters,
fragmentation (E9); one line per variant = model · attention · augmentation, seeds averaged;
models with the same hooks share a figure (families in :mod:`rra.report.build`). [ours]"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from rra.report import charts
from rra.report.frames import LayerDir, hook_groups, read_layer_tables, saliency_maps_frame
from rra.report.metric_figures import Place
from rra.runs import Run

if TYPE_CHECKING:
    from rra.report.build import Report

LAYER_MEASURES = {
    "patterns": {"relu_channel_sparsity": "channel sparsity", "relu_element_sparsity":
                 "element sparsity", "relu_pattern_unique_fraction": "unique patterns / n",
                 "relu_pattern_purity": "pattern-group purity", "relu_tree_fidelity":
                 "tree fidelity (probe)", "relu_tree_depth": "tree depth",
                 "relu_tree_leaves": "tree leaves"},
    "fragmentation": {"fragmentation_same_class": "same-class triplets",
                      "fragmentation_mixed": "mixed triplets"},
    "translation": {"translation_cosine_mean": "mean cosine (d ≠ 0)",
                    "translation_rel_change_mean": "mean ‖Δh‖ / ‖h‖ (d ≠ 0)"},
}


def layer_figures(rep: Report, dataset: str) -> None:
    """E7–E9: the figure families of the listed layer analyses, per probe."""
    dirs = [LayerDir.of(m) for m in rep.inputs.of_dataset("layers", dataset)]
    families = (("translation", translation_figures), ("patterns", patterns_figures),
                ("margins", margins_figures), ("saliency", saliency_figures),
                ("fragmentation", fragmentation_figures))
    for probe in sorted({d.probe for d in dirs}):
        place = Place(f"{dataset}/layers-{probe}",
                      f"{dataset} · layer analyses (E7–E9) · probe {probe}",
                      {"dataset": dataset, "probe": probe})
        for analysis, figures in families:
            of_analysis = [d for d in dirs if d.probe == probe and d.analysis == analysis]
            if of_analysis:
                figures(rep, of_analysis, place)


def _layer_frame(dirs: Sequence[LayerDir], where: pl.Expr | None = None) -> pl.DataFrame:
    """The layer table of some directories with a ``variant`` label (model · attention ·
    augmentation) and only the columns a layer figure may vary in."""
    df = charts.add_variant(read_layer_tables(dirs, where), ("model", "attention", "augmentation"))
    return df.drop("distance", "backend", "hook_b", "pos_b", "scale_b", "k", "alpha",
                   "class_b", "recall_target_met")


def _inputs_of(dirs: Sequence[LayerDir], models: Sequence[str] | None = None) -> list:
    return [p for d in dirs if models is None or d.run.model in models
            for p in (d.manifest, d.table)]


# ---------------------------------------------------------------------------------------------
# E7: translation sensitivity

def translation_figures(rep: Report, dirs: Sequence[LayerDir], place: Place) -> None:
    """Per model: the maps at the report's scale (else ``full``), the radial profiles and the
    per-hook summary."""
    df = _layer_frame(dirs)
    scales = df["scale_a"].drop_nulls().unique().to_list()
    scale = rep.opts["scale"] if rep.opts["scale"] in scales else "full"
    for model in sorted(df["model"].unique().to_list()):
        rows = df.filter(pl.col("model") == model)
        selection = {**place.selection, "model": model,
                     "scales": sorted(rows["scale_a"].unique().to_list())}
        inputs = _inputs_of(dirs, [model])
        _translation_maps(rep, place, rows, model, scale, selection, inputs)
        _translation_radial(rep, place, rows, model, selection, inputs)
        _translation_summary(rep, place, rows, model, selection, inputs)


def _translation_maps(rep: Report, place: Place, rows: pl.DataFrame, model: str, scale: str,
                      selection: dict[str, Any], inputs: list) -> None:
    maps = rows.filter((pl.col("measure") == "translation_cosine") & (pl.col("scale_a") == scale))
    if maps.height == 0:
        return
    side = int(maps["dx"].max())
    rep.emit(charts.translation_maps(maps.drop("radius", "quantile", "pca_k", "class"),
                                     title=f"Translation sensitivity (cosine), {model} "
                                           f"at scale {scale}"),
             f"{place.prefix}/translation-{model}", kind="layers", group=place.group,
             inputs=inputs, title=f"Translation sensitivity maps: {model}",
             caption=f"cos(h(x), h(x shifted by (dx, dy))) per hook (columns, forward "
                     f"order) at scale {scale}, mean over the probe and the seeds, "
                     f"shifts in [−{side}, {side}]² with black fill; rows: attention · "
                     "augmentation variant; faded cells: p ≥ 0.05 against the chance level, "
                     "the same cosine with the translate of another probe image (interval, "
                     "chance level and p in the tooltip; E7)",
             selection={**selection, "scale": scale, "measure": "translation_cosine"})


def _translation_radial(rep: Report, place: Place, rows: pl.DataFrame, model: str,
                        selection: dict[str, Any], inputs: list) -> None:
    radial = rows.filter(pl.col("measure").str.ends_with("_radial"))
    if radial.height == 0:
        return
    radial = radial.with_columns(pl.col("measure").replace(
        {"translation_cosine_radial": "cosine",
         "translation_rel_change_radial": "relative change"}))
    rep.emit(charts.radial_curves(radial.drop("dx", "dy", "quantile", "pca_k", "class"),
                                  title=f"Radial translation profiles, {model}"),
             f"{place.prefix}/translation-radial-{model}", kind="layers", group=place.group,
             inputs=inputs, title=f"Radial translation profiles: {model}",
             caption="Mean of each translation map over the shifts with "
                     "max(|dx|, |dy|) = r against r: cosine (top) and relative "
                     "Euclidean change ‖h(x) − h(x')‖ / ‖h(x)‖ (bottom), per hook "
                     "(columns); solid and dashed lines: the two pooled scales; mean "
                     "over seeds; bars: bootstrap interval over the probe images; faded "
                     "points: p ≥ 0.05 against the translate of another image (cosine: "
                     "more similar, change: smaller; E7)", selection=selection)


def _translation_summary(rep: Report, place: Place, rows: pl.DataFrame, model: str,
                         selection: dict[str, Any], inputs: list) -> None:
    names = LAYER_MEASURES["translation"]
    summary = rows.filter(pl.col("measure").is_in(list(names)))
    if summary.height == 0:
        return
    summary = summary.with_columns(pl.col("measure").replace(names))
    rep.emit(charts.hook_curves(summary.drop("dx", "dy", "radius", "quantile", "pca_k",
                                             "class"), color="variant",
                                band=rep.opts["band"], row="scale_a",
                                title=f"Translation sensitivity per hook, {model}"),
             f"{place.prefix}/translation-summary-{model}", kind="layers", group=place.group,
             inputs=inputs, title=f"Translation sensitivity per hook: {model}",
             caption="Mean of the cosine and relative-change maps over every shift "
                     "but (0, 0), per hook, one row per pooled scale; line: mean over "
                     "seeds; bars: bootstrap interval over the probe images; faded points: "
                     "p ≥ 0.05 against the translate of another image (E7)",
             selection={**selection, "band": rep.opts["band"]})


# ---------------------------------------------------------------------------------------------
# E8, E9: per-hook measures (patterns, fragmentation), margins

def _hook_measure_figures(rep: Report, dirs: Sequence[LayerDir], place: Place, analysis: str,
                          title: str, caption: str) -> None:
    """One ``hook_curves`` figure per hook group of a layer table's per-hook measures."""
    names = LAYER_MEASURES[analysis]
    df = _layer_frame(dirs, pl.col("measure").is_in(list(names)))
    for models, part in hook_groups(df):
        part = part.with_columns(pl.col("measure").replace(names))
        rep.emit(charts.hook_curves(part.drop("dx", "dy", "radius", "quantile", "pca_k",
                                              "class", "scale_a"), color="variant",
                                    band=rep.opts["band"], title=f"{title}, {', '.join(models)}"),
                 f"{place.prefix}/{analysis}-{'-'.join(models)}", kind="layers",
                 group=place.group, inputs=_inputs_of(dirs, models),
                 title=f"{title}: {', '.join(models)}",
                 caption=caption + f"; line: mean over seeds, band: {rep.band_text}",
                 selection={**place.selection, "models": list(models), "band": rep.opts["band"]})


def patterns_figures(rep: Report, dirs: Sequence[LayerDir], place: Place) -> None:
    _hook_measure_figures(
        rep, dirs, place, "patterns", "ReLU patterns and trees",
        "Per ReLU hook (forward order): channel sparsity 1 − mean(on) with on = max over the "
        "map > 0, element sparsity (share of exact zeros), unique binary codes / n, class "
        "purity of the groups of equal codes, fidelity of a decision tree on the training "
        "subset's codes to the model's predictions on the probe, its depth and leaves; "
        "colour: model · attention · augmentation (with vs without BatchNorm and "
        "augmentation, E8); bars: bootstrap interval over the probe images (sparsities and "
        "probe fidelity, tree fixed; mean over seeds); faded points: p ≥ 0.05 against the "
        "chance level (purity: the same groups with shuffled labels; fidelity: the tree's "
        "predictions shuffled against the model's); unique fraction, purity, depth and leaves "
        "have no interval (methods §4)")


def fragmentation_figures(rep: Report, dirs: Sequence[LayerDir], place: Place) -> None:
    _hook_measure_figures(
        rep, dirs, place, "fragmentation", "Fragmentation",
        "Mean number of 8-connected class regions on an R × R grid over the plane through "
        "three probe images (same class / three classes), in the input space (hook input) "
        "and in each hook's output space classified by the model after the hook (E9); bars: "
        "bootstrap interval over the triplets (mean over seeds); no chance level")


def margins_figures(rep: Report, dirs: Sequence[LayerDir], place: Place) -> None:
    """Hidden-margin quartiles per hook group, and the input margin against the PCA
    subspace's k (every model)."""
    hidden = _layer_frame(dirs, pl.col("measure") == "hidden_margin")
    for models, part in hook_groups(hidden):
        rep.emit(charts.margin_boxes(part.drop("dx", "dy", "radius", "pca_k", "class",
                                               "scale_a", "measure"),
                                     title=f"Normalised hidden margins, {', '.join(models)}"),
                 f"{place.prefix}/margins-{'-'.join(models)}", kind="layers", group=place.group,
                 inputs=_inputs_of(dirs, models), title=f"Hidden margins: {', '.join(models)}",
                 caption="d̃ = (z_y − z_j) / ‖∇_h (z_y − z_j)‖ / sqrt(tr Cov h) per hook "
                         "(forward order) over the correctly classified probe images (j the "
                         "runner-up class): bar from the first to the third quartile, tick at "
                         "the median, each the mean over seeds; black rule: bootstrap interval "
                         "of the median over the probe images (no chance level; E9)",
                 selection={**place.selection, "models": list(models)})
    pca = _layer_frame(dirs, pl.col("measure") == "input_margin_mean")
    if pca.height == 0:
        return
    rep.emit(charts.margin_vs_k(pca.drop("dx", "dy", "radius", "quantile", "class",
                                         "hook_a", "pos_a", "scale_a", "measure"),
                                title="DeepFool input margin vs PCA subspace"),
             f"{place.prefix}/margins-pca", kind="layers", group=place.group,
             inputs=_inputs_of(dirs), title="Input margin vs the number of PCA directions",
             caption="Mean DeepFool margin ‖r‖ (normalised input space, ≤ 50 steps, "
                     "overshoot 0.02) over the correctly classified attacked probe images, "
                     "with every step confined to the top-k principal directions of the "
                     "training subset; the largest k is D (unconstrained); mean over seeds; "
                     "bars: bootstrap interval over the attacked images (no chance level; "
                     "E9)",
             selection={**place.selection, "pca_k": sorted(pca["pca_k"].unique().to_list())})


# ---------------------------------------------------------------------------------------------
# E9: saliency and first-layer filters

def saliency_figures(rep: Report, dirs: Sequence[LayerDir], place: Place) -> None:
    """The top-5 % share per variant, the saliency maps of the same probe images per variant
    (one seed each: the smallest) and the first-layer filters."""
    _saliency_share_figure(rep, dirs, place)
    arrays, files = saliency_maps_frame(dirs)
    shown: dict[str, Run] = {}  # one seed per variant: the smallest
    for run in sorted(arrays):
        shown.setdefault(" · ".join(run.variant), run)
    inputs = [*files, *(d.manifest for d in dirs)]
    _saliency_maps_figure(rep, place, {v: arrays[r] for v, r in shown.items()}, shown, inputs)
    _filters_figure(rep, place, {v: arrays[r]["filters"] for v, r in shown.items()}, inputs)


def _saliency_share_figure(rep: Report, dirs: Sequence[LayerDir], place: Place) -> None:
    share = _layer_frame(dirs, pl.col("measure").str.starts_with("saliency_")
                         & pl.col("class").is_null())
    if share.height == 0:
        return
    share = share.with_columns(pl.col("measure").str.replace(r"^saliency_", ""))
    rep.emit(charts.variant_bars(share.drop("dx", "dy", "radius", "quantile", "pca_k",
                                            "class", "hook_a", "pos_a", "scale_a"),
                                 title="Saliency concentration"),
             f"{place.prefix}/saliency-share", kind="layers", group=place.group,
             inputs=_inputs_of(dirs), title="Saliency concentration per variant",
             caption="Share of the saliency mass max_c |∂S/∂x| in the top 5 % of pixels, "
                     "mean over the probe images, for the true and the predicted class; "
                     "bar: mean over seeds, thin rule: min–max over seeds, thick rule: "
                     "bootstrap interval over the probe images, dashed line: the share of a "
                     "flat map (⌈0.05 HW⌉ / HW, the least possible; E9)",
             selection=place.selection)


def _saliency_tiles(arrays: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """The grid's tiles: per probe image (rows) the image, then per variant the saliency of
    the true and of the predicted class, each map scaled to its maximum."""
    first = next(iter(arrays.values()))
    rows = first["rows"]
    tiles = []
    for i in range(rows.size):
        image = first["images"][i].astype(np.float64) / 255
        image = image[..., 0] if image.shape[-1] == 1 else image
        label = f"probe row {int(rows[i])} (class {int(first['labels'][i])})"
        tiles.append(dict(row=label, row_pos=i, column="image", column_pos=0,
                          url=charts.png_url(image, 2), text="the probe image"))
        for v, (variant, a) in enumerate(arrays.items()):
            for w, (which, name) in enumerate((("true", "true class"),
                                               ("pred", "predicted class"))):
                m = a[which][i].astype(np.float64)
                m = m / m.max() if m.max() > 0 else m
                pred = int(a["predicted"][i])
                tiles.append(dict(row=label, row_pos=i, column=f"{variant}: {name}",
                                  column_pos=1 + 2 * v + w, url=charts.png_url(m, 2),
                                  text=f"{variant}, |∂S/∂x| of the {name} "
                                       f"({int(a['labels'][i]) if which == 'true' else pred})"
                                       f"; predicted {pred}"))
    return pl.DataFrame(tiles)


def _saliency_maps_figure(rep: Report, place: Place, arrays: dict[str, dict[str, Any]],
                          shown: dict[str, Run], inputs: list) -> None:
    first = next(iter(arrays.values()))
    rows = first["rows"]
    if any(not np.array_equal(a["rows"], rows) for a in arrays.values()):
        raise ValueError(f"{place.prefix}: the saliency runs show different probe images; they "
                         "must share one probe and saliency.images")
    size = 2 * max(first["images"].shape[1], 28)
    rep.emit(charts.image_grid(_saliency_tiles(arrays), size=size, title="Saliency maps",
                               subtitle=["|∂S_c/∂x| (max over channels), each map scaled to its "
                                         "maximum; white: most salient"]),
             f"{place.prefix}/saliency", kind="layers", group=place.group, inputs=inputs,
             title="Saliency maps of the same probe images per variant",
             caption="Each row one probe image: the image, then per variant (model · attention "
                     "· augmentation, seed " + ", ".join(
                         f"{v}: {r.seed}" for v, r in shown.items())
                     + ") the saliency max_c |∂S_c/∂x| of the true and of the predicted class "
                     "(Simonyan et al. 2013), scaled to each map's maximum (E9)",
             selection={**place.selection, "variants": list(shown),
                        "rows": [int(x) for x in rows]})


def _filters_figure(rep: Report, place: Place, filters: dict[str, np.ndarray],
                    inputs: list) -> None:
    from rra.layers.saliency import filter_grid

    grids = {variant: filter_grid(f, fill=0.5) for variant, f in filters.items()}
    tiles = [dict(row="first-layer filters", row_pos=0, column=variant, column_pos=v,
                  url=charts.png_url(grid, 8),
                  text=f"filters (out × in × kh × kw) {filters[variant].shape}")
             for v, (variant, grid) in enumerate(grids.items())]
    side = 8 * max(max(g.shape[:2]) for g in grids.values())
    rep.emit(charts.image_grid(pl.DataFrame(tiles), size=side, gap=24,
                               title="First-layer filters",
                               subtitle=["one tile per filter, grey between tiles"]),
             f"{place.prefix}/filters", kind="layers", group=place.group, inputs=inputs,
             title="First-layer filters per variant",
             caption="The weights of each variant's first convolution, one tile per filter "
                     "(RGB for three input channels, else grey), each filter scaled from its "
                     "minimum (black) to its maximum (white) (E9)",
             selection={**place.selection, "variants": list(filters)})
