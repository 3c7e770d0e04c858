"""The figures of one analysis ``{dataset}/{probe}/{distance}-{backend}/`` from its metric
tables: NNTS heat maps, the augmentation difference, per-hook curves, NNTP tables and ClassRepSim
heat maps (E1, E3–E5; families in :mod:`rra.report.build`). [ours]

Every figure shows the tables' uncertainty (methods.md §4): the bootstrap interval (error bars on
curves and edge totals, tooltips in heat maps) and, faded, the values whose p ≥ 0.05 in some seed
(indistinguishable from the row-shuffle chance level; :data:`CHANCE_NOTE`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

import polars as pl

from rra.metrics.folders import MetricFolder, read_tables
from rra.metrics.hyperparams import nnts_to_logits
from rra.metrics.tables import scan_tables
from rra.report import charts
from rra.report.frames import knn_backend_note, stage_last_hooks

if TYPE_CHECKING:
    from rra.report.build import Report

#: the captions' sentence on intervals and chance (charts.aggregate, chance=True)
CHANCE_NOTE = (f"; faded: p ≥ {charts.P_CHANCE} in some seed (indistinguishable from the "
               "row-shuffle chance level), bootstrap interval over probe rows and chance level "
               "in the tooltip")

@dataclass(frozen=True)
class Place:
    """Where the figures of one analysis go: file prefix, index group, base selection."""

    prefix: str
    group: str
    selection: dict[str, Any]

    @classmethod
    def of(cls, folder: MetricFolder) -> Place:
        f = folder
        return cls(f"{f.dataset}/{f.probe}/{f.distance}-{f.backend}",
                   f"{f.dataset} · probe {f.probe} · {f.distance} distance, {f.backend} backend",
                   {"dataset": f.dataset, "probe": f.probe, "distance": f.distance,
                    "backend": f.backend})


@dataclass(frozen=True)
class AnalysisTables:
    """The rows of an analysis's tables that its figures show: NNTS, NNTP and class response at
    the report's scale, ClassRepSim (every scale), and NNTP's alpha."""

    nnts: pl.DataFrame
    nntp: pl.DataFrame
    response: pl.DataFrame
    classrepsim: pl.DataFrame
    alpha: int | None


def analysis_figures(rep: Report, folders: Sequence[MetricFolder]) -> None:
    """Every figure of one analysis (its folders: one per run), and the kNN note of its group."""
    place = Place.of(folders[0])
    listed = set(rep.inputs["knn"])
    rep.notes[place.group] = knn_backend_note(
        [f.knn_manifest for f in folders if f.knn_manifest in listed])
    tables = _analysis_tables(rep, folders, place)
    if tables is None:
        return
    for model in sorted({f.run.model for f in folders}):
        _model_figures(rep, place, tables, [f for f in folders if f.run.model == model], model)


def _analysis_tables(rep: Report, folders: Sequence[MetricFolder],
                     place: Place) -> AnalysisTables | None:
    """The analysis's rows, or None (no NNTS at the scale: ClassRepSim only, or a warning)."""
    scale = rep.opts["scale"]
    at_scale = pl.col("scale_a") == scale
    nnts = read_tables(folders, "nnts", at_scale & (pl.col("measure") == "nnts"))
    computed = scan_tables(f.table("nnts") for f in folders).head(1).collect().height
    if nnts.height == 0 and not computed:
        _classrepsim_only_figures(rep, folders, place)  # e.g. the stac-auto val probe
        return None
    if nnts.height == 0:
        warnings.warn(f"{place.prefix}: no NNTS at scale {scale!r}; no metric figures",
                      stacklevel=3)
        return None
    nntp = read_tables(folders, "nntp", at_scale)
    response = read_tables(folders, "class_response",
                           at_scale & pl.col("measure").is_in(["knn_purity", "knn_vote_accuracy"]))
    crs = read_tables(folders, "classrepsim",
                      pl.col("measure").is_in(["classrepsim_mean", "classrepsim"]))
    alpha = (rep.pick(nntp["alpha"].unique().to_list(), "alpha") if nntp.height else None)
    return AnalysisTables(nnts, nntp, response, crs, alpha)


def _model_figures(rep: Report, place: Place, tables: AnalysisTables,
                   folders: list[MetricFolder], model: str) -> None:
    """The figures of one model of the analysis: NNTS, its augmentation difference, per-hook
    curves, and per variant NNTP and ClassRepSim."""
    nnts = charts.add_variant(tables.nnts.filter(pl.col("model") == model))
    if nnts.height == 0:
        return
    # k per model: models analysed in one folder can carry different k (experiments add their
    # own); report.k, or the model's smallest computed k
    k = rep.pick(nnts["k"].unique().to_list(), "k")
    selection = {**place.selection, "model": model, "scale": rep.opts["scale"]}
    _nnts_figure(rep, place, nnts, folders, model, selection)
    _nnts_diff_figure(rep, place, nnts, folders, model, k, selection)
    _curves_figure(rep, place, tables, folders, model, k, selection)
    for (attention, augmentation), part in groupby(
            sorted(folders, key=lambda f: f.run.variant), key=lambda f: f.run.variant[1:]):
        variant = list(part)
        of_variant = ((pl.col("model") == model) & (pl.col("attention") == attention)
                      & (pl.col("augmentation") == augmentation))
        v_selection = {**selection, "attention": attention, "augmentation": augmentation,
                       "seeds": sorted(f.run.seed for f in variant)}
        _nntp_figure(rep, place, tables, variant, of_variant, k, v_selection)
        _classrepsim_figures(rep, place, tables.classrepsim.filter(of_variant & (pl.col("k") == k)),
                            variant, {**v_selection, "k": k})


def _nnts_figure(rep: Report, place: Place, nnts: pl.DataFrame, folders: list[MetricFolder],
                 model: str, selection: dict[str, Any]) -> None:
    scale = rep.opts["scale"]
    several = nnts["variant"].n_unique() > 1
    rep.emit(charts.nnts_heatmap(nnts, row="variant" if several else None, column="k",
                                 title=f"NNTS, {model} at scale {scale}"),
             f"{place.prefix}/nnts-{model}", kind="metrics", group=place.group,
             inputs=[f.manifest for f in folders], title=f"NNTS heat maps: {model}",
             caption=f"NNTS between hooks (forward order) at scale {scale}, mean over seeds; "
                     "columns: k" + ("; rows: attention · augmentation" if several else "")
                     + CHANCE_NOTE,
             selection={**selection, "k": sorted(nnts["k"].unique().to_list())})


def _nnts_diff_figure(rep: Report, place: Place, nnts: pl.DataFrame,
                      folders: list[MetricFolder], model: str, k: int,
                      selection: dict[str, Any]) -> None:
    """NNTS(standard) − NNTS(none) of attention none, when the model has both."""
    scale = rep.opts["scale"]
    pair = nnts.filter((pl.col("attention") == "none") & (pl.col("k") == k)
                       & pl.col("augmentation").is_in(["none", "standard"]))
    if pair["augmentation"].n_unique() != 2:
        return
    seeds = {a: sorted(pair.filter(pl.col("augmentation") == a)["seed"].unique().to_list())
             for a in ("standard", "none")}
    rep.emit(charts.nnts_diff_heatmap(pair, title=f"NNTS(standard) − NNTS(none), {model} "
                                                  f"(scale {scale}, k = {k})"),
             f"{place.prefix}/nnts-diff-{model}", kind="metrics", group=place.group,
             inputs=[f.manifest for f in folders
                     if f.run.attention == "none" and f.run.augmentation in seeds],
             title=f"NNTS difference, augmentation: {model}",
             caption="NNTS between hooks (forward order) with standard augmentation minus "
                     f"without (attention none), each the mean over its seeds, at scale "
                     f"{scale} and k = {k}; orange: more similar with augmentation",
             selection={**selection, "k": k, "attention": "none", "seeds": seeds})


def _curve_colour(df: pl.DataFrame) -> str:
    """The column that tells the curves apart: the one of attention and augmentation that
    varies, else the variant label."""
    varying = [c for c in ("attention", "augmentation") if df[c].n_unique() > 1]
    return varying[0] if len(varying) == 1 else "variant"


def _curves_figure(rep: Report, place: Place, tables: AnalysisTables,
                   folders: list[MetricFolder], model: str, k: int,
                   selection: dict[str, Any]) -> None:
    """kNN purity, kNN-vote accuracy and NNTS to logits per hook, seeds as a band."""
    scale, band = rep.opts["scale"], rep.opts["band"]
    curves = pl.concat([tables.response, nnts_to_logits(tables.nnts)], how="vertical").filter(
        (pl.col("model") == model) & (pl.col("k") == k))
    curves = charts.add_variant(
        curves.with_columns(pl.col("measure").replace(charts.SUMMARY_LABELS)))
    if curves.height == 0:
        return
    rep.emit(charts.hook_curves(curves, color=_curve_colour(curves), band=band,
                                title=f"Per-hook curves, {model} (scale {scale}, k = {k})"),
             f"{place.prefix}/curves-{model}", kind="metrics", group=place.group,
             inputs=[f.manifest for f in folders], title=f"Per-hook curves: {model}",
             caption="kNN class purity, kNN-vote accuracy and NNTS to the last hook "
                     f"(logits) per hook at k = {k}; line: mean over seeds, band: "
                     f"{rep.band_text}; bars: bootstrap interval over probe rows" + CHANCE_NOTE,
             selection={**selection, "k": k, "band": band})


def _nntp_figure(rep: Report, place: Place, tables: AnalysisTables,
                 folders: list[MetricFolder], of_variant: pl.Expr, k: int,
                 selection: dict[str, Any]) -> None:
    """The NNTP table of one variant at k (NNTP's own smallest k when it was computed at
    fewer k, ``nntp_k``) and the report's alpha."""
    alpha, scale = tables.alpha, rep.opts["scale"]
    rows = (tables.nntp.filter(of_variant & (pl.col("alpha") == alpha))
            if alpha is not None else tables.nntp)  # no NNTP rows at this scale
    ks = rows["k"].unique().to_list()
    k_nntp = k if rows.height == 0 or k in ks else min(ks)
    rows = rows.filter(pl.col("k") == k_nntp)
    if rows.height == 0:
        return
    name = "-".join(folders[0].run.variant)
    rep.emit(charts.nntp_heatmap(rows, title=f"NNTP, {name} (scale {scale}, k = {k_nntp}, "
                                             f"α = {alpha})"),
             f"{place.prefix}/nntp-{name}", kind="metrics", group=place.group,
             inputs=[f.manifest for f in folders], title=f"NNTP table: {name}",
             caption=f"NNTP runs T[f, l] (first hook f, last hook l) and undirected "
                     f"kNN edges per hook at k = {k_nntp}, α = {alpha}; mean over seeds; "
                     "bootstrap interval over probe rows as bars (edges) and in the tooltip "
                     "(runs); NNTP has no chance level",
             selection={**selection, "k": k_nntp, "alpha": alpha})


def _classrepsim_only_figures(rep: Report, folders: Sequence[MetricFolder], place: Place) -> None:
    """An analysis that computed ClassRepSim only (the baseline's analysis on the val probe
    that the stac-auto scale choice reads, E4): its ClassRepSim heat maps per variant, at the
    smallest k."""
    crs = read_tables(folders, "classrepsim",
                      pl.col("measure").is_in(["classrepsim_mean", "classrepsim"]))
    if crs.height == 0:
        warnings.warn(f"{place.prefix}: neither NNTS nor ClassRepSim tables; no metric figures",
                      stacklevel=3)
        return
    for (model, attention, augmentation), part in groupby(
            sorted(folders, key=lambda f: f.run.variant), key=lambda f: f.run.variant):
        variant = list(part)
        of_variant = ((pl.col("model") == model) & (pl.col("attention") == attention)
                      & (pl.col("augmentation") == augmentation))
        k = min(crs.filter(of_variant)["k"].unique().to_list())
        selection = {**place.selection, "model": model, "attention": attention,
                     "augmentation": augmentation,
                     "seeds": sorted(f.run.seed for f in variant), "k": k}
        _classrepsim_figures(rep, place, crs.filter(of_variant & (pl.col("k") == k)), variant,
                            selection)


def _classrepsim_figures(rep: Report, place: Place, crs: pl.DataFrame,
                        folders: list[MetricFolder], selection: dict[str, Any]) -> None:
    """Scale × scale ClassRepSim of one variant at the last hook of each stage: the class mean,
    and for attention ``none`` per class (when it fits a figure)."""
    mean = crs.filter(pl.col("measure") == "classrepsim_mean")
    if mean.height == 0:
        return
    name, attention = "-".join(folders[0].run.variant), folders[0].run.attention
    inputs = [f.manifest for f in folders]
    hooks = stage_last_hooks(mean.sort("pos_a")["hook_a"].unique(maintain_order=True).to_list())
    selection = {**selection, "hooks": hooks}
    rep.emit(charts.classrepsim_heatmaps(mean.filter(pl.col("hook_a").is_in(hooks)),
                                         title=f"ClassRepSim class mean, {name}"),
             f"{place.prefix}/classrepsim-{name}", kind="metrics", group=place.group,
             inputs=inputs, title=f"ClassRepSim (class mean): {name}",
             caption="Scale × scale ClassRepSim S[s, t] (mean over classes and seeds) at the last "
                     f"hook of each stage, k = {selection['k']}" + CHANCE_NOTE, selection=selection)
    if attention != "none":
        return
    per_class = crs.filter((pl.col("measure") == "classrepsim") & pl.col("hook_a").is_in(hooks))
    cells = per_class.select("class", "hook_a", "scale_a", "scale_b").unique().height
    if cells == 0:
        return
    if cells > charts.max_rows():
        warnings.warn(f"{place.prefix}/classrepsim-class-{name}: {cells} cells exceed the plot "
                      "limit; per-class figure skipped", stacklevel=2)
        return
    rep.emit(charts.classrepsim_heatmaps(per_class, title=f"ClassRepSim per class, {name}"),
             f"{place.prefix}/classrepsim-class-{name}", kind="metrics", group=place.group,
             inputs=inputs, title=f"ClassRepSim per class: {name}",
             caption="Scale × scale ClassRepSim per class (rows) at the last hook of each stage "
                     f"(columns), mean over seeds, k = {selection['k']}" + CHANCE_NOTE,
             selection=selection)
