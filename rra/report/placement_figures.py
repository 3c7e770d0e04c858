"""The figures of the held-out placement (E11, :mod:`rra.metrics.placement`): per dataset,
placement (held-out probe in reference probe, distance) and model, the per-hook training-probe
and held-out kNN-vote accuracy, their gap, the held-out purity and the consecutive-hook
agreement, one line per variant (families in :mod:`rra.report.build`), with the bootstrap
interval over rows as error bars and the values indistinguishable from their chance level
(p ≥ 0.05; the gap: from 0) faded, as the metric figures draw them (:func:`rra.report.charts.
aggregate` with ``chance=True``, :func:`~rra.report.charts.faded`). [ours]"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import altair as alt
import polars as pl

from rra.io import read_json
from rra.metrics.tables import scan_tables
from rra.report import charts

if TYPE_CHECKING:
    from rra.report.build import Report

#: measure → (panel, rows): the figure's panels in order and which rows each line describes
PANELS = {
    "placement_train_acc": ("kNN-vote accuracy", "training probe (leave-one-out)"),
    "placement_acc": ("kNN-vote accuracy", "held-out"),
    "placement_gap": ("gap: training probe − held-out", "training probe − held-out"),
    "placement_purity": ("held-out kNN purity", "held-out"),
    "placement_agreement": ("agreement with the next hook", "held-out"),
}
PANEL_ORDER = list(dict.fromkeys(panel for panel, _ in PANELS.values()))
SERIES_ORDER = list(dict.fromkeys(series for _, series in PANELS.values()))
#: the dash of each series: training probe dashed, held-out solid, their gap dotted
DASHES = [[6, 3], [1, 0], [2, 2]]


def placement_frame(manifests: list[Path]) -> pl.DataFrame:
    """The placement tables of ``manifests`` (their folders' ``placement.parquet``) with the
    reference probe (the folder's name) as a column."""
    frames = []
    for manifest in manifests:
        meta = read_json(manifest)
        table = manifest.parent / "placement.parquet"
        frames.append(scan_tables([table]).collect().with_columns(
            reference=pl.lit(meta.get("reference", {}).get("probe", manifest.parents[2].name))))
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def placement_figures(rep: Report, dataset: str) -> None:
    """One ``placement-{model}`` figure per (reference, held-out probe, distance) and model of
    the dataset's listed placements, at the report's scale and k (else the smallest k)."""
    manifests = rep.inputs.of_dataset("placement", dataset)
    by_folder: dict[tuple[str, str, str], list[Path]] = {}
    for m in manifests:  # .../placement/{reference}/{heldout}/{distance}/manifest.json
        by_folder.setdefault((m.parents[2].name, m.parents[1].name, m.parent.name), []).append(m)
    for (reference, heldout, distance), paths in sorted(by_folder.items()):
        df = placement_frame(paths)
        scale = rep.opts["scale"] if (df["scale_a"] == rep.opts["scale"]).any() else "full"
        ks = sorted(df["k"].unique().to_list())
        k = rep.opts["k"] if rep.opts["k"] in ks else ks[0]
        df = df.filter((pl.col("scale_a") == scale) & (pl.col("k") == k))
        group = f"{dataset} · held-out placement (E11): {heldout} in {reference}, {distance}"
        for model in sorted(df["model"].unique().to_list()):
            part = df.filter(pl.col("model") == model)
            runs = set(part.select("model", "attention", "augmentation", "seed").iter_rows())
            selection = {"dataset": dataset, "reference": reference, "heldout": heldout,
                         "distance": distance, "model": model, "scale": scale, "k": k,
                         "seeds": sorted({r[3] for r in runs}), "band": rep.opts["band"]}
            _figure(rep, part, group, [p for p in paths if _run_of(p) in runs], selection)


def _run_of(manifest: Path) -> tuple:
    run = read_json(manifest).get("run", {})
    return tuple(run.get(c) for c in ("model", "attention", "augmentation", "seed"))


def _figure(rep: Report, df: pl.DataFrame, group: str, inputs: list[Path],
            selection: dict[str, Any]) -> None:
    s = selection
    varying = [c for c in ("attention", "augmentation") if df[c].n_unique() > 1]
    color = varying[0] if len(varying) == 1 else "variant"
    rows = charts.add_variant(df).with_columns(
        panel=pl.col("measure").replace_strict({m: p for m, (p, _) in PANELS.items()}),
        series=pl.col("measure").replace_strict({m: r for m, (_, r) in PANELS.items()}))
    rows = rows.select("panel", "series", color, "hook_a", "pos_a", "seed", "value",
                       *[c for c in charts.UNCERTAINTY if c in rows.columns])
    title = (f"Held-out placement, {s['model']}: {s['heldout']} in {s['reference']} "
             f"({s['distance']}, scale {s['scale']}, k = {s['k']})")
    rep.emit(placement_chart(rows, color=color, band=s["band"], title=title),
             f"{s['dataset']}/{s['heldout']}-in-{s['reference']}/{s['distance']}/"
             f"placement-{s['model']}", kind="placement", group=group, inputs=inputs,
             title=f"Held-out placement: {s['model']}",
             caption=f"Per hook (forward order) at k = {s['k']}, scale {s['scale']}: kNN-vote "
                     f"accuracy of the training probe {s['reference']} (leave-one-out, dashed) "
                     f"and of the held-out probe {s['heldout']} placed in its kNN model "
                     "(solid), their gap, the held-out kNN purity, and the agreement (Jaccard) "
                     "of a held-out image's reference neighbours at a hook and the next; line: "
                     f"mean over seeds, band: {rep.band_text}; bars: bootstrap interval over "
                     "the rows (mean over seeds); faded points: p ≥ "
                     f"{charts.P_CHANCE} in some seed (indistinguishable from chance; the gap: "
                     "from no gap)",
             selection=selection)


def placement_chart(df: pl.DataFrame, *, color: str = "augmentation", band: str = "minmax",
                    title: str = "held-out placement") -> alt.FacetChart:
    """Per-hook lines of ``df`` (columns ``panel``, ``series``, ``color``, ``hook_a``,
    ``pos_a``, ``seed``, ``value`` and, where present, ``lo``, ``hi``, ``null``, ``p``): one
    panel per ``panel`` (:data:`PANEL_ORDER`), colour = ``color``, dash = ``series`` (training
    probe or held-out), mean over seeds with a band (``minmax`` or ``sd``); error bars: the
    bootstrap interval (mean over seeds of ``lo``, ``hi``); points with p ≥ P_CHANCE in some
    seed faded (:func:`rra.report.charts.aggregate` with ``chance=True``). [ours]"""
    agg = charts.aggregate(df, ["panel", "series", color, "hook_a", "pos_a"], "placement_chart",
                           chance=True)
    lo, hi = ((pl.col("min"), pl.col("max")) if band == "minmax"
              else (pl.col("mean") - pl.col("sd"), pl.col("mean") + pl.col("sd")))
    agg = agg.with_columns(lo=lo, hi=hi)
    base = alt.Chart().encode(x=alt.X("hook_a:N", sort=charts.HOOK_A, title="hook (forward order)"),
                              color=alt.Color(f"{color}:N", title=color))
    # no `order` channel on the band: with it Vega-Lite draws no area at all
    area = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title="value"), y2="hi:Q",
                                              detail="series:N")
    dash = alt.StrokeDash("series:N", title="rows", scale=alt.Scale(domain=SERIES_ORDER,
                                                                    range=DASHES),
                          legend=None)  # the subtitle names the dashes
    line = base.mark_line().encode(y=alt.Y("mean:Q", title="value"), order=alt.Order("pos_a:Q"),
                                   strokeDash=dash)
    bars = base.mark_rule().encode(y="ci_lo:Q", y2="ci_hi:Q", detail="series:N",
                                   opacity=charts.faded())
    points = base.mark_point(filled=True).encode(
        y=alt.Y("mean:Q", title="value"), shape=alt.Shape("series:N", legend=None),
        opacity=charts.faded(),
        tooltip=["panel", "series", color, "hook_a", alt.Tooltip("mean:Q", format=".4f"),
                 alt.Tooltip("min:Q", format=".4f"), alt.Tooltip("max:Q", format=".4f"), "n",
                 *charts.chance_tooltip()])
    band_text = "min–max" if band == "minmax" else "mean ± sd"
    return (alt.layer(area, line, bars, points, data=agg).properties(width=alt.Step(24), height=180)
            .facet(column=alt.Column("panel:N", sort=PANEL_ORDER, title=None))
            .resolve_scale(x="independent", y="independent")
            .properties(title=alt.TitleParams(title, subtitle=[
                f"line: mean over seeds; band: {band_text} over seeds; bars: bootstrap interval "
                f"over rows (mean over seeds); faded points: p ≥ {charts.P_CHANCE} "
                "(indistinguishable from chance; the gap: from 0)",
                "solid: held-out images in the training probe's kNN model; dashed: the training "
                "probe's own (leave-one-out) accuracy; dotted: their gap"])))
