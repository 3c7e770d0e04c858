"""Altair charts of the study's figures, one function per figure. [ours]

Every function takes polars frames already filtered to what the figure shows (one scale, one k,
one distance, ...) and returns an Altair chart. Seeds are aggregated here, in polars, before any
data reaches Altair, so the charts embed small frames (a few hundred rows) and Altair's row limit
never triggers; a frame that still has several values in a column the figure does not show
(two scales, say) is an error naming that column, instead of a silent average over it.

Hook axes follow the forward order of the network: they are sorted by ``pos_a``/``pos_b`` (the
hook's forward position, see :mod:`rra.metrics.tables`), per facet, so models with different
hooks can share a figure. Scales are ordered 1, 2, 4, ..., full.

Across seeds, per cell: ``mean``, ``sd`` (sample standard deviation, ddof = 1; 0 for one seed),
``min``, ``max`` and ``n`` (number of seeds).

Uncertainty and chance (the tables' ``lo``, ``hi``, ``null``, ``p``; methods.md §4), per cell with
``chance=True``: ``ci_lo``, ``ci_hi`` the mean over seeds of the bootstrap interval's ends,
``chance`` the mean chance level, ``p_max`` the largest p over seeds and ``chance_like`` = p_max ≥
:data:`P_CHANCE` (false where p is null: older tables, B = 0, measures without a chance level).
Curves draw the interval as error bars; every metric figure draws chance-like cells and points
faded (opacity :data:`FADED`) and names the interval and the p in its tooltip. [ours]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import polars as pl

from rra.runs import scale_order

HOOK_A = alt.EncodingSortField(field="pos_a", op="min", order="ascending")
HOOK_B = alt.EncodingSortField(field="pos_b", op="min", order="ascending")
HEAT = "viridis"
# A fixed gradient length: Vega-Lite 6.4 derives the default from the plot height, which with
# step-sized heights and independent facet scales compiles to an expression outside any datum
# (a "datum is not defined" error at render time).
GRADIENT = alt.Legend(gradientLength=160)
#: the uncertainty columns of the metric tables (never averaged as values or checked constant)
UNCERTAINTY = ("lo", "hi", "null", "p")
#: p at or above which a value is drawn as indistinguishable from chance
P_CHANCE = 0.05
#: opacity of values indistinguishable from chance
FADED = 0.25
#: the aggregated uncertainty columns (``aggregate(..., chance=True)``)
CHANCE_COLUMNS = ("ci_lo", "ci_hi", "chance", "p_max", "chance_like")


# ---------------------------------------------------------------------------------------------
# Frame helpers (polars only)

def require_columns(df: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: frame lacks column(s) {missing}; it has {df.columns}")
    if df.height == 0:
        raise ValueError(f"{what}: the frame is empty (nothing to plot)")


def check_constant(df: pl.DataFrame, keys: Sequence[str], vary: Sequence[str], what: str) -> None:
    """Every column other than ``keys`` and ``vary`` must hold one value per group of ``keys``.

    This is what makes the aggregation honest: only the ``vary`` columns (seeds) are averaged
    over; anything else (two scales, two distances) must be filtered out or faceted by.
    """
    others = [c for c in df.columns
              if c not in set(keys) | set(vary) | {"value", *UNCERTAINTY}]
    if not others:
        return
    exprs = [pl.col(c).n_unique() for c in others]
    counts = df.group_by(list(keys)).agg(exprs) if keys else df.select(exprs)
    for c in others:
        if counts[c].max() > 1:
            values = df[c].unique().sort(nulls_last=True).to_list()[:8]
            raise ValueError(f"{what}: column {c!r} has several values {values} within one "
                             f"plotted cell; filter the frame to one value or facet by {c!r}")


def aggregate(df: pl.DataFrame, keys: Sequence[str], what: str, *,
              vary: Sequence[str] = ("seed",), value: str = "value",
              chance: bool = False) -> pl.DataFrame:
    """Mean, sd (ddof = 1, 0 for a single value), min, max and count of ``value`` per ``keys``;
    with ``chance``, also :data:`CHANCE_COLUMNS` from the uncertainty columns (null where the
    frame lacks them; see the module docstring).

    [ours] NaN values count as missing (a layer whose l1 change is undefined). Sorted by
    ``keys`` so the result (and the chart built from it) is deterministic.
    """
    require_columns(df, [*keys, value], what)
    check_constant(df, keys, [v for v in vary if v in df.columns], what)
    if chance:
        df = df.with_columns(pl.lit(None, pl.Float64).alias(c)
                             for c in UNCERTAINTY if c not in df.columns)
    extra = (dict(ci_lo=pl.col("lo").mean(), ci_hi=pl.col("hi").mean(),
                  chance=pl.col("null").mean(), p_max=pl.col("p").max()) if chance else {})
    out = (df.with_columns(pl.col(value).fill_nan(None)).group_by(list(keys))
             .agg(mean=pl.col(value).mean(), sd=pl.col(value).std(ddof=1),
                  min=pl.col(value).min(), max=pl.col(value).max(), n=pl.col(value).count(),
                  **extra)
             .with_columns(pl.col("sd").fill_null(0.0).fill_nan(0.0)))
    if chance:
        out = out.with_columns(chance_like=(pl.col("p_max") >= P_CHANCE).fill_null(False))
    return out.sort(list(keys), nulls_last=True)


def faded() -> Any:
    """Opacity: :data:`FADED` for cells indistinguishable from chance, else 1."""
    return alt.condition("datum.chance_like", alt.value(FADED), alt.value(1.0))


def chance_tooltip(fmt: str = ".4f") -> list[alt.Tooltip]:
    """Tooltips of the aggregated uncertainty columns."""
    return [alt.Tooltip("ci_lo:Q", format=fmt, title="interval lo (mean over seeds)"),
            alt.Tooltip("ci_hi:Q", format=fmt, title="interval hi (mean over seeds)"),
            alt.Tooltip("chance:Q", format=fmt, title="chance level"),
            alt.Tooltip("p_max:Q", format=".3g", title="p (largest over seeds)")]


def add_variant(df: pl.DataFrame, columns: Sequence[str] = ("attention", "augmentation"),
                name: str = "variant") -> pl.DataFrame:
    """Add a label column joining ``columns`` with " · " (e.g. ``se · standard``)."""
    require_columns(df, columns, "add_variant")
    return df.with_columns(pl.concat_str([pl.col(c).cast(pl.Utf8) for c in columns],
                                         separator=" · ").alias(name))


def max_rows() -> int:
    """Altair's row limit for inline data (the active data transformer's ``max_rows``)."""
    return int(alt.data_transformers.options.get("max_rows", 5000))


def _check_rows(df: pl.DataFrame, what: str) -> pl.DataFrame:
    if df.height > max_rows():
        raise ValueError(f"{what}: {df.height} rows after aggregation exceed Altair's limit of "
                         f"{max_rows()}; filter the frame (fewer hooks, classes or k values)")
    return df


def _facet_kwargs(df: pl.DataFrame, row: str | None, column: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for name, field, channel in (("row", row, alt.Row), ("column", column, alt.Column)):
        if field is not None:
            require_columns(df, [field], "facet")
            kw[name] = channel(f"{field}:{'O' if df[field].dtype.is_integer() else 'N'}",
                               sort="ascending")
    return kw


# ---------------------------------------------------------------------------------------------
# E1: NNTS and NNTP

def nnts_heatmap(df: pl.DataFrame, *, row: str | None = None, column: str | None = "k",
                 title: str = "NNTS") -> alt.FacetChart | alt.Chart:
    """NNTS(a, b) heat map, hook × hook in forward order, faceted by ``row``/``column``.

    ``df``: rows of the nnts table with one measure (``nnts``) at one scale; seeds averaged
    (cell = mean over seeds, ``n`` seeds in the tooltip). Facets: e.g. ``column="k"``,
    ``row="model"`` or ``row="variant"`` (see :func:`add_variant`). Hook axes are independent
    per facet when the facets hold different models. [source: NNTS matrix; ours: layout]
    """
    facets = [f for f in (row, column) if f is not None]
    keys = [*facets, "hook_a", "pos_a", "hook_b", "pos_b"]
    agg = _check_rows(aggregate(df, keys, "nnts_heatmap", chance=True), "nnts_heatmap")
    chart = alt.Chart(agg).mark_rect().encode(
        x=alt.X("hook_b:N", sort=HOOK_B, title="hook b (forward order)"),
        y=alt.Y("hook_a:N", sort=HOOK_A, title="hook a (forward order)"),
        color=alt.Color("mean:Q", title="NNTS", legend=GRADIENT,
                        scale=alt.Scale(scheme=HEAT, domain=[0, 1])),
        opacity=faded(),
        tooltip=[*facets, "hook_a", "hook_b", alt.Tooltip("mean:Q", format=".4f"),
                 alt.Tooltip("sd:Q", format=".4f"), "n", *chance_tooltip()],
    ).properties(width=alt.Step(18), height=alt.Step(18))
    if not facets:
        return chart.properties(title=title)
    out = chart.facet(**_facet_kwargs(agg, row, column)).properties(title=title)
    if "model" in facets or "variant" in facets:
        out = out.resolve_scale(x="independent", y="independent")
    return out


def nntp_heatmap(df: pl.DataFrame, *, title: str = "NNTP") -> alt.HConcatChart:
    """NNTP table T[f, l] as a heat map (first hook f × last hook l, counts as text) and the
    per-hook edge totals as bars, concatenated. [source: NNTP table and edge totals]

    ``df``: the nntp table of one model variant at one scale, k and alpha (measures
    ``nntp_runs``, ``nntp_edges``, optionally ``nntp_persistent_all``); seeds averaged.
    """
    require_columns(df, ["measure", "hook_a", "pos_a", "value"], "nntp_heatmap")
    runs = df.filter(pl.col("measure") == "nntp_runs")
    edges = df.filter(pl.col("measure") == "nntp_edges").drop("hook_b", "pos_b", strict=False)
    if runs.height == 0 or edges.height == 0:
        raise ValueError("nntp_heatmap: the frame needs rows of both measures 'nntp_runs' and "
                         f"'nntp_edges'; it has {df['measure'].unique().to_list()}")
    t = aggregate(runs, ["hook_a", "pos_a", "hook_b", "pos_b"], "nntp_heatmap (runs)",
                  chance=True)
    t = _check_rows(t.with_columns(dark=pl.col("mean") < pl.col("mean").max() / 2),
                    "nntp_heatmap")
    e = aggregate(edges, ["hook_a", "pos_a"], "nntp_heatmap (edges)", chance=True)
    persistent = df.filter(pl.col("measure") == "nntp_persistent_all")["value"].mean()
    subtitle = ([f"pairs present at every hook: {persistent:,.1f} (mean over seeds)"]
                if persistent is not None else [])
    base = alt.Chart(t).encode(
        x=alt.X("hook_b:N", sort=HOOK_B, title="last hook l of the run"),
        y=alt.Y("hook_a:N", sort=HOOK_A, title="first hook f of the run"),
    )
    heat = base.mark_rect().encode(
        color=alt.Color("mean:Q", title="runs T[f, l]", legend=GRADIENT,
                        scale=alt.Scale(scheme=HEAT, type="symlog")),
        tooltip=["hook_a", "hook_b", alt.Tooltip("mean:Q", format=",.1f"),
                 alt.Tooltip("sd:Q", format=",.1f"), "n", *chance_tooltip(",.1f")[:2]],
    )
    text = base.mark_text(fontSize=8).encode(
        text=alt.Text("mean:Q", format=".3~s"),
        color=alt.condition("datum.dark", alt.value("white"), alt.value("black")),
    )
    table = alt.layer(heat, text).properties(width=alt.Step(30), height=alt.Step(22),
                                             title="NNTP table (runs from f to l)")
    bar_base = alt.Chart(e).encode(x=alt.X("hook_a:N", sort=HOOK_A, title="hook (forward order)"))
    bars = alt.layer(bar_base.mark_bar().encode(
        y=alt.Y("mean:Q", title="undirected kNN edges"),
        tooltip=["hook_a", alt.Tooltip("mean:Q", format=",.1f"), alt.Tooltip("sd:Q", format=",.1f"),
                 "n", *chance_tooltip(",.1f")[:2]],
    ), bar_base.mark_rule(color="black").encode(y="ci_lo:Q", y2="ci_hi:Q")).properties(
        width=alt.Step(22), height=200, title="edge totals per hook (bar: bootstrap interval)")
    return alt.hconcat(table, bars).resolve_scale(color="independent").properties(
        title=alt.TitleParams(title, subtitle=subtitle))


# ---------------------------------------------------------------------------------------------
# E3 / E5: per-hook curves with seed bands

def hook_curves(df: pl.DataFrame, *, color: str = "augmentation", band: str = "minmax",
                column: str | None = "measure", row: str | None = None,
                title: str = "per-hook curves") -> alt.FacetChart | alt.LayerChart:
    """Measure vs hook (forward order): mean over seeds as a line, a band across seeds.

    ``band="minmax"``: min to max over seeds; ``"sd"``: mean ± sd. ``color`` names the
    column that tells the curves apart (``augmentation``, ``attention`` or ``variant``);
    ``column``/``row`` facet (default: one panel per ``measure``, independent y). [ours]
    """
    if band not in ("minmax", "sd"):
        raise ValueError(f"hook_curves: band must be 'minmax' or 'sd', got {band!r}")
    facets = [f for f in (row, column) if f is not None]
    keys = [*facets, color, "hook_a", "pos_a"]
    agg = aggregate(df, keys, "hook_curves", chance=True)
    lo, hi = ((pl.col("min"), pl.col("max")) if band == "minmax"
              else (pl.col("mean") - pl.col("sd"), pl.col("mean") + pl.col("sd")))
    agg = _check_rows(agg.with_columns(lo=lo, hi=hi), "hook_curves")
    base = alt.Chart().encode(
        x=alt.X("hook_a:N", sort=HOOK_A, title="hook (forward order)"),
        color=alt.Color(f"{color}:N", title=color),
    )
    # no `order` channel on the band: on an area Vega-Lite groups by the order field, so each
    # hook became its own zero-width area and the band vanished; the x sort (HOOK_A) already
    # orders the area's path by pos_a
    band_layer = base.mark_area(opacity=0.25).encode(y=alt.Y("lo:Q", title="value"), y2="hi:Q")
    line = base.mark_line().encode(y=alt.Y("mean:Q", title="value"), order=alt.Order("pos_a:Q"))
    points = base.mark_point(filled=True).encode(
        y=alt.Y("mean:Q", title="value"), opacity=faded(),
        tooltip=[*facets, color, "hook_a", alt.Tooltip("mean:Q", format=".4f"),
                 alt.Tooltip("sd:Q", format=".4f"), alt.Tooltip("min:Q", format=".4f"),
                 alt.Tooltip("max:Q", format=".4f"), "n", *chance_tooltip()],
    )
    bars = base.mark_rule().encode(y="ci_lo:Q", y2="ci_hi:Q", opacity=faded())
    layered = alt.layer(band_layer, line, bars, points, data=agg).properties(
        width=alt.Step(24), height=180)
    band_text = "min–max" if band == "minmax" else "mean ± sd"
    heading = alt.TitleParams(title, subtitle=[
        f"line: mean over seeds; band: {band_text} over seeds; bars: bootstrap interval over "
        f"probe rows (mean over seeds); faded points: p ≥ {P_CHANCE} (indistinguishable from "
        "chance)"])
    if not facets:
        return layered.properties(title=heading)
    return (layered.facet(**_facet_kwargs(agg, row, column))
            .resolve_scale(x="independent", y="independent").properties(title=heading))


def nnts_diff_heatmap(df: pl.DataFrame, *, by: str = "augmentation", minuend: str = "standard",
                      subtrahend: str = "none", title: str = "NNTS difference") -> alt.Chart:
    """Heat map of mean-over-seeds NNTS(minuend) − NNTS(subtrahend), hook × hook in forward
    order, on a diverging colour scale centred on 0 (symmetric domain ± max |difference|).

    ``df``: nnts rows (measure ``nnts``) of one model at one scale and k whose ``by`` column
    holds both ``minuend`` and ``subtrahend`` (other values are dropped); each side is averaged
    over its own seeds first. Cells present on one side only are an error. [ours]
    """
    require_columns(df, [by, "hook_a", "pos_a", "hook_b", "pos_b", "value"], "nnts_diff_heatmap")
    keys = ["hook_a", "pos_a", "hook_b", "pos_b"]
    sides = []
    for name in (minuend, subtrahend):
        part = df.filter(pl.col(by) == name)
        if part.height == 0:
            raise ValueError(f"nnts_diff_heatmap: no rows with {by} = {name!r}; the frame has "
                             f"{sorted(df[by].unique().to_list())}")
        sides.append(aggregate(part, keys, f"nnts_diff_heatmap ({by} = {name})").select(
            *keys, pl.col("mean").alias(name), pl.col("n").alias(f"n_{name}")))
    diff = sides[0].join(sides[1], on=keys, how="full", coalesce=True)
    unmatched = diff.filter(pl.col(minuend).is_null() | pl.col(subtrahend).is_null())
    if unmatched.height:
        cells = unmatched.select("hook_a", "hook_b").head(3).rows()
        raise ValueError(f"nnts_diff_heatmap: hook pairs {cells} are present for only one of "
                         f"{minuend!r} and {subtrahend!r}")
    diff = _check_rows(diff.with_columns(diff=pl.col(minuend) - pl.col(subtrahend)).sort(keys),
                       "nnts_diff_heatmap")
    bound = float(diff["diff"].abs().max()) or 1.0
    base = alt.Chart(diff).encode(
        x=alt.X("hook_b:N", sort=HOOK_B, title="hook b (forward order)"),
        y=alt.Y("hook_a:N", sort=HOOK_A, title="hook a (forward order)"),
    )
    heat = base.mark_rect().encode(
        color=alt.Color("diff:Q", title=f"Δ NNTS ({minuend} − {subtrahend})", legend=GRADIENT,
                        scale=alt.Scale(scheme="blueorange", domain=[-bound, bound],
                                        domainMid=0)),
        tooltip=["hook_a", "hook_b", alt.Tooltip("diff:Q", format="+.4f"),
                 alt.Tooltip(f"{minuend}:Q", format=".4f"),
                 alt.Tooltip(f"{subtrahend}:Q", format=".4f"), f"n_{minuend}",
                 f"n_{subtrahend}"],
    )
    return heat.properties(width=alt.Step(18), height=alt.Step(18), title=alt.TitleParams(
        title, subtitle=[f"{by} {minuend} minus {subtrahend}, each averaged over its seeds; "
                         f"max |Δ| = {bound:.4f}"]))


# ---------------------------------------------------------------------------------------------
# E4: ClassRepSim

def classrepsim_heatmaps(df: pl.DataFrame, *, title: str = "ClassRepSim",
                         columns: int = 4) -> alt.FacetChart:
    """Scale × scale ClassRepSim heat maps, one panel per hook in forward order.

    ``df``: classrepsim rows of one model variant at one k, with one measure:
    ``classrepsim_mean`` (class mean, panels wrap by hook) or ``classrepsim`` (per class: rows =
    class, columns = hook). Seeds averaged. [ours: ClassRepSim reconstruction]
    """
    require_columns(df, ["measure", "hook_a", "pos_a", "scale_a", "scale_b", "value"],
                    "classrepsim_heatmaps")
    per_class = "class" in df.columns and df["class"].null_count() < df.height
    keys = ["hook_a", "pos_a", "scale_a", "scale_b"] + (["class"] if per_class else [])
    agg = _check_rows(aggregate(df, keys, "classrepsim_heatmaps", chance=True),
                      "classrepsim_heatmaps")
    scales = scale_order(agg["scale_a"].to_list() + agg["scale_b"].to_list())
    hooks = agg.sort("pos_a")["hook_a"].unique(maintain_order=True).to_list()
    base = alt.Chart().encode(
        x=alt.X("scale_b:O", sort=scales, title="scale t"),
        y=alt.Y("scale_a:O", sort=scales, title="scale s"),
    )
    heat = base.mark_rect().encode(
        color=alt.Color("mean:Q", title="ClassRepSim", legend=GRADIENT,
                        scale=alt.Scale(scheme=HEAT, domain=[0, 1])),
        opacity=faded(),
        tooltip=["hook_a", "scale_a", "scale_b", *(["class"] if per_class else []),
                 alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("sd:Q", format=".3f"), "n",
                 *chance_tooltip(".3f")],
    )
    text = base.mark_text(fontSize=8).encode(
        text=alt.Text("mean:Q", format=".2f"),
        color=alt.condition("datum.mean < 0.5", alt.value("white"), alt.value("black")),
    )
    layered = alt.layer(heat, text, data=agg).properties(width=alt.Step(22), height=alt.Step(22))
    if per_class:
        chart = layered.facet(row=alt.Row("class:O", sort="ascending"),
                              column=alt.Column("hook_a:N", sort=hooks, title="hook"))
    else:
        chart = layered.facet(facet=alt.Facet("hook_a:N", sort=hooks, title="hook"),
                              columns=columns)
    return chart.properties(title=title)


def stac_scales_chart(df: pl.DataFrame, *, title: str = "Chosen STAC scales",
                      columns: int = 4) -> alt.FacetChart:
    """Evidence of the STAC scale choice, one panel per stage (hook v = the stage's last block):
    both measures against the scale s, one line each (class-mean ClassRepSim S_v[s, full] and
    class-mean class-response agreement A_v[s, full]), the deciding measure's threshold of the
    stage as a dashed rule, the chosen scale as a large red point labelled "chosen" (or
    "chosen (< threshold)" when it misses the criterion: no scale qualified, or the FLOPs
    budget moved it), and the criterion's own pick, where the budget moved it, as a hollow ring.
    Bars: the bootstrap interval over probe rows (``lo``–``hi``); points faded where p ≥
    :data:`P_CHANCE` (ClassRepSim indistinguishable from chance; the agreement has no chance
    level); interval, chance level and p in the tooltip.

    ``df``: from :func:`rra.report.frames.stac_scales_frame` (columns stage, stage_label,
    measure, scale, value, criterion, chosen, rule, qualified, tau, lo, hi, null, p); frames
    without ``measure``/``criterion``/``rule`` are read as one deciding measure, frames without
    ``lo``/``hi``/``null``/``p`` draw no bars and nothing faded. [ours]
    """
    require_columns(df, ["stage", "stage_label", "scale", "value", "chosen", "qualified", "tau"],
                    "stac_scales_chart")
    defaults = {"measure": pl.lit("jaccard"), "criterion": pl.lit(True), "rule": pl.col("chosen"),
                **{c: pl.lit(None, pl.Float64) for c in UNCERTAINTY}}
    df = df.with_columns(**{c: e for c, e in defaults.items() if c not in df.columns})
    df = df.with_columns(chance_like=(pl.col("p") >= P_CHANCE).fill_null(False))
    df = _check_rows(df.sort("stage", "measure", "scale"), "stac_scales_chart")
    stages = df["stage_label"].unique(maintain_order=True).to_list()
    scales = sorted(df["scale"].unique().to_list())
    names = {"jaccard": "ClassRepSim S[s, full]", "agreement": "class-response agreement A[s, full]"}
    df = df.with_columns(evidence=pl.col("measure").replace_strict(names, default=pl.col("measure")))
    x = alt.X("scale:O", sort=scales, title="scale s (pooled s × s)",
              axis=alt.Axis(labelAngle=0))
    y_scale = alt.Scale(domain=[0, 1])
    y_title = "class mean at the stage's last block"
    color = alt.Color("evidence:N", title="measure", legend=alt.Legend(orient="bottom"))
    line = alt.Chart().mark_line().encode(
        x=x, y=alt.Y("value:Q", title=y_title, scale=y_scale), color=color, order="scale:Q")
    bars = alt.Chart().mark_rule().encode(
        x=x, y=alt.Y("lo:Q", title=y_title, scale=y_scale), y2="hi:Q", color=color,
        opacity=faded())
    points = alt.Chart().mark_point(filled=True).encode(
        x=x, y=alt.Y("value:Q", title=y_title, scale=y_scale), color=color, opacity=faded(),
        tooltip=["stage_label", "evidence", "scale", alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("lo:Q", format=".4f", title="interval lo"),
                 alt.Tooltip("hi:Q", format=".4f", title="interval hi"),
                 alt.Tooltip("null:Q", format=".4f", title="chance level"),
                 alt.Tooltip("p:Q", format=".3g"),
                 "criterion", "chosen", "qualified", alt.Tooltip("tau:Q", format=".4f")],
    )
    rule = alt.Chart().transform_filter("datum.criterion").mark_rule(
        strokeDash=[4, 3], color="grey").encode(y="tau:Q")
    chosen = alt.Chart().transform_filter("datum.chosen").encode(x=x, y="value:Q")
    point = chosen.mark_point(filled=True, size=160, color="#e45756")
    label = chosen.mark_text(dy=-14, color="#e45756").encode(
        text=alt.condition("datum.qualified", alt.value("chosen"),
                           alt.value("chosen (< threshold)")))
    moved = alt.Chart().transform_filter("datum.rule && !datum.chosen").mark_point(
        size=220, color="#e45756", strokeDash=[2, 2]).encode(x=x, y="value:Q")
    heading = alt.TitleParams(title, subtitle=[
        f"bars: bootstrap interval over probe rows (agreement: mean of the per-class intervals); "
        f"faded points: p ≥ {P_CHANCE} (indistinguishable from chance)"])
    return (alt.layer(rule, line, bars, points, point, label, moved, data=df)
            .properties(width=alt.Step(40), height=160)
            .facet(facet=alt.Facet("stage_label:N", sort=stages, title=None), columns=columns)
            .properties(title=heading))


def text_table(rows: Sequence[str], cells: Sequence[tuple[str, Sequence[str]]], *, what: str,
               row: str = "row", width: int = 130) -> alt.Chart:
    """A table drawn as text marks: one line per entry of ``rows`` (in that order), one column
    per ``(name, texts)`` of ``cells`` (``texts`` aligned with ``rows``). Data columns:
    ``row`` (the row label), ``column`` and ``text``."""
    for name, texts in cells:
        if len(texts) != len(rows):
            raise ValueError(f"{what}: column {name!r} has {len(texts)} cells for {len(rows)} rows")
    rows = list(rows)
    table = pl.concat([pl.DataFrame({row: rows, "column": [name] * len(rows),
                                     "text": list(texts)}, schema={row: pl.Utf8, "column": pl.Utf8,
                                                                  "text": pl.Utf8})
                       for name, texts in cells])
    return alt.Chart(_check_rows(table, what)).mark_text(align="center").encode(
        x=alt.X("column:N", sort=[name for name, _ in cells], title=None,
                axis=alt.Axis(orient="top", labelAngle=0, ticks=False, domain=False)),
        y=alt.Y(f"{row}:N", sort=rows, title=None,
                axis=alt.Axis(ticks=False, domain=False, labelLimit=0)),
        text="text:N",
    ).properties(width=alt.Step(width), height=alt.Step(20))


# ---------------------------------------------------------------------------------------------
# E3 / E5: accuracy, parameters and FLOPs

ACC_COLUMNS = ["variant", "acc_mean", "acc_sd", "acc_min", "acc_max", "n_seeds"]
COST_COLUMNS = ["params", "flops", "params_ratio", "flops_ratio"]
#: drawn when present (cost tables from rra.models.cost; older ones lack them)
COST_EXTRA_COLUMNS = ["params_live", "flops_elementwise", "flops_total", "flops_total_ratio"]


def accuracy_cost(df: pl.DataFrame, *, title: str = "Accuracy and cost") -> alt.VConcatChart:
    """A table-like text chart of accuracy (mean ± sd over seeds), parameters, FLOPs and their
    ratios to the baseline, and a scatter of accuracy against the FLOPs and parameter ratios.
    With the summary's intervals (``acc_lo``, ``acc_hi``, ``acc_chance``, ``acc_p_max``) the
    table shows the Wilson interval, the scatter draws it as a wide translucent bar beside the
    thin ± sd bar, and a variant whose accuracy is not above chance (1/C) in some seed is
    faded.
    With the columns of ``COST_EXTRA_COLUMNS`` the table also shows live parameters,
    element-wise operations and FLOPs + element-wise operations (and its ratio, also in the
    scatter).

    ``df``: one row per variant, from :func:`rra.report.frames.accuracy_cost_frame`; without
    the cost columns only the accuracy table is drawn. [ours]
    """
    require_columns(df, ACC_COLUMNS, "accuracy_cost")
    if df["variant"].n_unique() != df.height:
        raise ValueError("accuracy_cost: one row per variant expected; duplicated: "
                         f"{df.filter(pl.col('variant').is_duplicated())['variant'].to_list()}")
    has_cost = all(c in df.columns for c in COST_COLUMNS)
    has_extra = has_cost and all(c in df.columns for c in COST_EXTRA_COLUMNS)
    order = df["variant"].to_list()

    def texts(column: str, fmt: str, factor: int = 1) -> list[str]:
        return ["–" if v is None else format(v * factor, fmt) for v in df[column].to_list()]

    acc = zip(texts("acc_mean", ".2f", 100), texts("acc_sd", ".2f", 100))
    cells = [("top-1 acc % (mean ± sd)", [f"{m} ± {s}" for m, s in acc]),
             ("seeds", texts("n_seeds", "d"))]
    has_ci = "acc_lo" in df.columns
    if has_ci:   # the Wilson interval of each seed's evaluation, mean over seeds
        ci = zip(texts("acc_lo", ".2f", 100), texts("acc_hi", ".2f", 100))
        cells.insert(1, ("95 % interval (Wilson)", [f"{lo} – {hi}" for lo, hi in ci]))
    if has_cost:
        cells += [("params", texts("params", ",.0f")), ("FLOPs", texts("flops", ",.0f")),
                  ("params ratio", texts("params_ratio", ".3f")),
                  ("FLOPs ratio", texts("flops_ratio", ".4f"))]
    if has_extra:
        cells += [("live params", texts("params_live", ",.0f")),
                  ("element-wise ops", texts("flops_elementwise", ",.0f")),
                  ("FLOPs + element-wise", texts("flops_total", ",.0f")),
                  ("FLOPs + element-wise ratio", texts("flops_total_ratio", ".4f"))]
    text = text_table(order, cells, what="accuracy_cost", row="variant")
    if not has_cost:
        return alt.vconcat(text).properties(title=title)
    ci_cols = ["acc_lo", "acc_hi", "acc_chance", "acc_p_max"] if has_ci else []
    long = pl.concat([
        df.select("variant", "acc_mean", "acc_sd", *ci_cols, cost=pl.lit(name), ratio=pl.col(col))
        for name, col in (("FLOPs / baseline", "flops_ratio"),
                          *([("FLOPs + element-wise / baseline", "flops_total_ratio")]
                            if has_extra else []),
                          ("parameters / baseline", "params_ratio"))
    ]).drop_nulls("ratio").with_columns(lo=pl.col("acc_mean") - pl.col("acc_sd"),
                                        hi=pl.col("acc_mean") + pl.col("acc_sd"))
    base = alt.Chart().encode(
        x=alt.X("ratio:Q", title="ratio to the baseline", scale=alt.Scale(zero=False)),
        color=alt.Color("variant:N", sort=order),
    )
    if has_ci:
        long = long.with_columns(chance_like=(pl.col("acc_p_max") >= P_CHANCE).fill_null(False))
    points = base.mark_point(filled=True, size=60).encode(
        y=alt.Y("acc_mean:Q", title="top-1 accuracy", scale=alt.Scale(zero=False)),
        tooltip=["variant", alt.Tooltip("ratio:Q", format=".4f"),
                 alt.Tooltip("acc_mean:Q", format=".4f"), alt.Tooltip("acc_sd:Q", format=".4f"),
                 *[alt.Tooltip(f"{c}:Q", format=".4f") for c in ci_cols]],
        **({"opacity": faded()} if has_ci else {}),
    )
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q")
    layers = [bars, points]
    if has_ci:   # wide translucent: the Wilson interval; thin: ± sd over seeds
        layers.insert(0, base.mark_rule(strokeWidth=6, opacity=0.3).encode(y="acc_lo:Q",
                                                                           y2="acc_hi:Q"))
    scatter = (alt.layer(*layers, data=_check_rows(long, "accuracy_cost"))
               .properties(width=260, height=200)
               .facet(column=alt.Column("cost:N", title=None))
               .resolve_scale(x="independent"))
    return alt.vconcat(text, scatter).properties(title=title)


# ---------------------------------------------------------------------------------------------
# E6: relative weight change

def weight_change_heatmap(df: pl.DataFrame, *, facet: str = "variant", columns: int = 3,
                          title: str = "Relative weight change") -> alt.FacetChart:
    """Layer × epoch heat map of the relative weight change (one measure), mean over seeds,
    one panel per ``facet`` value; layers in forward (module) order. [source: Agrawal et al.]

    ``df``: from :func:`rra.report.frames.weight_change_frame`, filtered to one measure
    (``weight_change_l1`` or ``weight_change_elementwise``), with the ``facet`` column (e.g.
    ``add_variant(df, ("model", "attention", "augmentation"))``). Colour on a log scale when
    every value is positive.
    """
    agg = _check_rows(aggregate(df, [facet, "layer", "pos", "epoch"], "weight_change_heatmap"),
                      "weight_change_heatmap")
    measure = df["measure"][0] if "measure" in df.columns else "value"
    scale = alt.Scale(scheme="magma", type="log" if agg["mean"].min() > 0 else "linear")
    chart = alt.Chart(agg).mark_rect().encode(
        x=alt.X("epoch:O", title="epoch"),
        y=alt.Y("layer:N", sort=alt.EncodingSortField("pos", op="min"),
                title="layer (forward order)"),
        color=alt.Color("mean:Q", title=measure, scale=scale, legend=GRADIENT),
        tooltip=[facet, "layer", "epoch", alt.Tooltip("mean:Q", format=".3e"),
                 alt.Tooltip("sd:Q", format=".3e"), "n"],
    ).properties(width=alt.Step(14), height=alt.Step(14))
    return (chart.facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns)
            .resolve_scale(y="independent").properties(title=title))


def weight_change_curves(df: pl.DataFrame, *, facet: str = "variant", columns: int = 3,
                         title: str = "Relative weight change per layer") -> alt.FacetChart:
    """Relative weight change vs epoch, one line per layer (mean over seeds), one panel per
    ``facet`` value. Same input as :func:`weight_change_heatmap`. [source: Agrawal et al.]"""
    agg = _check_rows(aggregate(df, [facet, "layer", "pos", "epoch"], "weight_change_curves"),
                      "weight_change_curves")
    positive = agg["mean"].min() > 0
    chart = alt.Chart(agg).mark_line(point=True).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("mean:Q", title=df["measure"][0] if "measure" in df.columns else "value",
                scale=alt.Scale(type="log" if positive else "linear")),
        color=alt.Color("layer:N", sort=alt.EncodingSortField("pos", op="min"), title="layer"),
        tooltip=[facet, "layer", "epoch", alt.Tooltip("mean:Q", format=".3e"), "n"],
    ).properties(width=220, height=160)
    return (chart.facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns)
            .resolve_scale(color="independent").properties(title=title))


# ---------------------------------------------------------------------------------------------
# E2: Annoy vs exact

def knn_recall(df: pl.DataFrame, *, title: str = "Annoy vs exact kNN") -> alt.HConcatChart:
    """recall@k against exact and build time per hook (forward order), per backend, one row of
    panels per scale; mean over runs/seeds. [ours]

    ``df``: from :func:`rra.report.frames.knn_graph_frame` (one row per stored graph: columns
    backend_label, hook_a, pos_a, scale_a, recall, seconds; backend_reason shown when present),
    filtered to one distance and k. With ``recall_target_met``, a graph below its recall target
    in some run (kept under ``knn.on_recall_miss: warn``) gets a red ⚠ on its recall point.
    """
    keys = ["backend_label", "scale_a", "hook_a", "pos_a"]
    require_columns(df, [*keys, "recall", "seconds"], "knn_recall")
    vary = [c for c in ("seed", "model", "attention", "augmentation", "search_k", "n", "d",
                        "recall", "seconds", "backend", "backend_used", "n_trees",
                        "recall_min_over_k", "recall_target", "recall_target_met")
            if c in df.columns]
    check_constant(df, keys, vary, "knn_recall")
    agg = _check_rows(df.group_by(keys).agg(
        recall=pl.col("recall").mean(), recall_min=pl.col("recall").min(),
        seconds=pl.col("seconds").mean(), search_k=pl.col("search_k").mean()
        if "search_k" in df.columns else pl.lit(None), n=pl.len(),
        backend_reason=pl.col("backend_reason").drop_nulls().first()
        if "backend_reason" in df.columns else pl.lit(None),
        below_target=pl.col("recall_target_met").eq(False).any()
        if "recall_target_met" in df.columns else pl.lit(False),
    ).sort(keys), "knn_recall")
    scales = scale_order(agg["scale_a"].to_list())
    base = alt.Chart(agg).encode(
        x=alt.X("hook_a:N", sort=HOOK_A, title="hook (forward order)"),
        color=alt.Color("backend_label:N", title="backend"),
        order=alt.Order("pos_a:Q"),
    )
    tooltip = ["backend_label", "scale_a", "hook_a", alt.Tooltip("recall:Q", format=".4f"),
               alt.Tooltip("recall_min:Q", format=".4f"), alt.Tooltip("seconds:Q", format=".3f"),
               alt.Tooltip("search_k:Q", format=",.0f"), "n",
               alt.Tooltip("below_target:N", title="below recall target"),
               alt.Tooltip("backend_reason:N", title="why (first run)")]
    y_recall = alt.Y("recall:Q", title="recall@k vs exact", scale=alt.Scale(domain=[0, 1]))
    recall = alt.layer(
        base.mark_line(point=True).encode(y=y_recall, tooltip=tooltip),
        base.mark_text(text="⚠", color="#d62728", fontSize=16, dy=-12).encode(
            y=y_recall, tooltip=tooltip).transform_filter("datum.below_target"),
    ).properties(width=alt.Step(22), height=140).facet(
        row=alt.Row("scale_a:O", sort=scales, title="scale"))
    time = base.mark_line(point=True).encode(
        y=alt.Y("seconds:Q", title="seconds per graph", scale=alt.Scale(type="log")),
        tooltip=tooltip,
    ).properties(width=alt.Step(22), height=140).facet(
        row=alt.Row("scale_a:O", sort=scales, title="scale"))
    return alt.hconcat(recall, time).properties(title=title)


# ---------------------------------------------------------------------------------------------
# E2: RRA hyper-parameters

#: labels of the per-hook summary measures (the curves of E3/E5 and the E2 panels)
SUMMARY_LABELS = {"knn_purity": "kNN class purity", "knn_vote_accuracy": "kNN-vote accuracy",
                  "nnts_to_logits": "NNTS to logits"}


def hyperparam_panels(df: pl.DataFrame, *, parameters: Sequence[str],
                      measures: dict[str, str] = SUMMARY_LABELS,
                      title: str = "RRA hyper-parameters") -> alt.VConcatChart:
    """Small multiples: each summary measure (rows) against each parameter's values (columns),
    one line per hook (colour in forward order), mean over seeds; the reference value of each
    parameter is marked with "*". y is shared along a row, so the panels of one measure show
    which parameter moves it most. Bars: the bootstrap interval over probe rows (mean over
    seeds of ``lo``/``hi``); points faded where p ≥ :data:`P_CHANCE` in some seed
    (indistinguishable from chance); interval, chance level and p in the tooltip. [ours]

    ``df``: :func:`rra.metrics.hyperparams.panel_frame` rows (parameter, setting, setting_pos,
    reference, seed, measure, hook_a, pos_a, value and, where present, lo, hi, null, p: panels
    without them draw no bars and nothing faded). ``parameters``: column order.
    """
    keys = ["measure", "parameter", "setting", "setting_pos", "reference", "hook_a", "pos_a"]
    agg = aggregate(df, keys, "hyperparam_panels", chance=True)
    agg = _check_rows(agg.with_columns(label=pl.when(pl.col("reference"))
                                       .then(pl.col("setting") + " *")
                                       .otherwise(pl.col("setting"))), "hyperparam_panels")
    shown = [p for p in parameters if p in set(agg["parameter"])]
    # Panels of one fixed width: step-sized widths with independent x scales in a facet make
    # Vega union domains from separate data sources (a console warning, wrong sizes).
    width = 40 * max(agg.group_by("parameter").agg(pl.col("setting").n_unique())["setting"])
    rows = []
    for measure, name in measures.items():
        part = agg.filter(pl.col("measure") == measure)
        if part.height == 0:
            continue
        base = alt.Chart().encode(
            x=alt.X("label:N", sort=alt.EncodingSortField("setting_pos", op="min"), title=None,
                    axis=alt.Axis(labelAngle=-30)),
            color=alt.Color("hook_a:N", sort=HOOK_A, title="hook (forward order)",
                            scale=alt.Scale(scheme="viridis")),
        )
        y = alt.Y("mean:Q", title=name, scale=alt.Scale(zero=False))
        line = base.mark_line().encode(y=y, order=alt.Order("setting_pos:Q"))
        bars = base.mark_rule().encode(
            y=alt.Y("ci_lo:Q", title=name, scale=alt.Scale(zero=False)), y2="ci_hi:Q",
            opacity=faded())
        points = base.mark_point(filled=True).encode(
            y=y, opacity=faded(),
            tooltip=["parameter", "setting", "hook_a", alt.Tooltip("mean:Q", format=".4f"),
                     alt.Tooltip("sd:Q", format=".4f"), "n", *chance_tooltip()])
        chart = alt.layer(line, bars, points, data=part).properties(width=width, height=130)
        rows.append(chart.facet(column=alt.Column("parameter:N", sort=shown, title=None))
                    .resolve_scale(x="independent"))
    return alt.vconcat(*rows).properties(title=alt.TitleParams(
        title, subtitle=["one parameter varies, the others stay at the reference (*); "
                         "line: mean over seeds, one per hook; bars: bootstrap interval over "
                         f"probe rows (mean over seeds); faded points: p ≥ {P_CHANCE} "
                         "(indistinguishable from chance)"]))


def guideline_table(df: pl.DataFrame, *, title: str = "RRA hyper-parameter guideline"
                    ) -> alt.VConcatChart:
    """The E2 guideline as text tables: per model variant and parameter, the mean over hooks of
    each measure's largest change across the parameter's values; and per backend setting,
    recall@k, seconds per graph and time relative to exact. [ours]

    ``df``: rows with :data:`rra.metrics.hyperparams.GUIDELINE_COLUMNS`.
    """
    require_columns(df, ["model", "attention", "augmentation", "parameter", "values", "measure",
                         "statistic", "setting", "value"], "guideline_table")
    df = df.with_columns(variant=pl.concat_str(["model", "attention", "augmentation"],
                                               separator=" · "))

    def fmt(v: float | None, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    change = df.filter(pl.col("statistic") == "max_abs_change")
    parts = []
    if change.height:
        labels = (change.select("variant", "parameter", "values").unique(maintain_order=True)
                  .with_columns(row=pl.format("{} | {} ({})", "variant", "parameter", "values")))
        cells = []
        for measure, name in SUMMARY_LABELS.items():
            m = labels.join(change.filter(pl.col("measure") == measure)
                            .select("variant", "parameter", "value"),
                            on=["variant", "parameter"], how="left", maintain_order="left")
            cells.append((f"Δ {name}", [fmt(v, ".4f") for v in m["value"].to_list()]))
        parts.append(text_table(labels["row"].to_list(), cells, what="guideline_table",
                                width=150).properties(
            title="max |change| across the values, mean over hooks"))
    cost = df.filter(pl.col("parameter") == "backend")
    cost = cost.filter(pl.col("setting").is_not_null())
    if cost.height:
        labels = (cost.select("variant", "setting").unique(maintain_order=True)
                  .with_columns(row=pl.format("{} | {}", "variant", "setting")))
        cells = []
        for measure, statistic, name, spec in (
                ("knn_recall", "mean", "recall@k vs exact", ".4f"),
                ("seconds_per_graph", "mean", "seconds per graph", ".3g"),
                ("seconds_per_graph", "ratio_to_exact", "time / exact", ".3g")):
            m = labels.join(cost.filter((pl.col("measure") == measure)
                                        & (pl.col("statistic") == statistic))
                            .select("variant", "setting", "value"),
                            on=["variant", "setting"], how="left", maintain_order="left")
            cells.append((name, [fmt(v, spec) for v in m["value"].to_list()]))
        parts.append(text_table(labels["row"].to_list(), cells, what="guideline_table",
                                width=130).properties(title="kNN backends"))
    if not parts:
        raise ValueError("guideline_table: no guideline rows to draw")
    return alt.vconcat(*parts).properties(title=title)


# ---------------------------------------------------------------------------------------------
# E7–E9: layer analyses

def translation_maps(df: pl.DataFrame, *, row: str = "variant",
                     title: str = "Translation sensitivity") -> alt.FacetChart:
    """(2S+1)² heat maps of one translation measure (``translation_cosine`` or
    ``translation_rel_change``) at one scale: x = dx, y = dy (content moved right / down for
    positive values), one panel per hook (columns, forward order) and ``row`` value; mean over
    seeds; cells indistinguishable from chance (p ≥ :data:`P_CHANCE`, the translate of another
    image) faded, the bootstrap interval and chance level in the tooltip. [source:
    translation-sensitivity maps; ours: layout, fading]"""
    require_columns(df, [row, "hook_a", "pos_a", "dx", "dy", "measure", "value"],
                    "translation_maps")
    measure = df["measure"].unique().to_list()
    if len(measure) != 1:
        raise ValueError(f"translation_maps: one measure per figure, got {measure}")
    agg = _check_rows(aggregate(df, [row, "hook_a", "pos_a", "dx", "dy"], "translation_maps",
                                chance=True), "translation_maps")
    cosine = measure[0] == "translation_cosine"
    low = min(0.0, float(agg["mean"].min())) if cosine else 0.0
    scale = (alt.Scale(scheme=HEAT, domain=[low, 1.0]) if cosine
             else alt.Scale(scheme="magma", reverse=True, zero=True))
    shifts = sorted(agg["dx"].unique().to_list())
    hooks = agg.sort("pos_a")["hook_a"].unique(maintain_order=True).to_list()
    chart = alt.Chart(agg).mark_rect().encode(
        x=alt.X("dx:O", sort=shifts, title="dx"),
        y=alt.Y("dy:O", sort=shifts, title="dy"),
        color=alt.Color("mean:Q", title="cosine" if cosine else "‖Δh‖ / ‖h‖", scale=scale,
                        legend=GRADIENT),
        opacity=faded(),
        tooltip=[row, "hook_a", "dx", "dy", alt.Tooltip("mean:Q", format=".4f"),
                 alt.Tooltip("sd:Q", format=".4f"), "n", *chance_tooltip()],
    ).properties(width=alt.Step(9), height=alt.Step(9))
    return chart.facet(row=alt.Row(f"{row}:N", title=None,
                                   header=alt.Header(labelAngle=0, labelAlign="left")),
                       column=alt.Column("hook_a:N", sort=hooks, title="hook")).properties(
        title=title)


def radial_curves(df: pl.DataFrame, *, color: str = "variant",
                  title: str = "Radial translation profiles") -> alt.FacetChart:
    """Radial profiles p(r) (mean of a translation map over max(|dx|, |dy|) = r) against r,
    one line per ``color`` value and scale (dashed: the other scale), one panel per measure
    (rows) and hook (columns, forward order); mean over seeds; error bars: the bootstrap
    interval (mean over seeds), faded points: p ≥ :data:`P_CHANCE`. [source: radial profile;
    ours: bars, fading]"""
    require_columns(df, ["measure", "scale_a", color, "hook_a", "pos_a", "radius", "value"],
                    "radial_curves")
    keys = ["measure", "scale_a", color, "hook_a", "pos_a", "radius"]
    agg = _check_rows(aggregate(df, keys, "radial_curves", chance=True), "radial_curves")
    hooks = agg.sort("pos_a")["hook_a"].unique(maintain_order=True).to_list()
    base = alt.Chart().encode(
        x=alt.X("radius:O", title="r = max(|dx|, |dy|)", axis=alt.Axis(labelAngle=0)),
        color=alt.Color(f"{color}:N", title=color),
        strokeDash=alt.StrokeDash("scale_a:N", sort=scale_order(agg["scale_a"].to_list()),
                                  title="scale"),
    )
    line = base.mark_line().encode(y=alt.Y("mean:Q", title=None, scale=alt.Scale(zero=False)))
    points = base.mark_point(filled=True).encode(
        y=alt.Y("mean:Q", title=None, scale=alt.Scale(zero=False)), opacity=faded(),
        tooltip=["measure", "scale_a", color, "hook_a", "radius",
                 alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("sd:Q", format=".4f"), "n",
                 *chance_tooltip()])
    bars = base.mark_rule().encode(y="ci_lo:Q", y2="ci_hi:Q", opacity=faded())
    chart = alt.layer(line, bars, points, data=agg).properties(width=110, height=90)
    return (chart.facet(row=alt.Row("measure:N", title=None,
                                    header=alt.Header(labelAngle=0, labelAlign="left")),
                        column=alt.Column("hook_a:N", sort=hooks, title="hook"))
            .resolve_scale(y="independent").properties(title=title))


def margin_boxes(df: pl.DataFrame, *, color: str = "variant",
                 title: str = "Hidden margins per hook") -> alt.LayerChart:
    """Box-like marks per hook (forward order) and ``color`` value from the quantile rows of
    ``hidden_margin``: a bar from the lowest to the highest reported quantile (the quartiles by
    default) and a tick at the median (0.5, when reported); each quantile the mean over seeds;
    a black rule: the bootstrap interval of the median (mean over seeds; ``mid_lo``,
    ``mid_hi``; absent without one). [ours]"""
    require_columns(df, [color, "hook_a", "pos_a", "quantile", "value"], "margin_boxes")
    agg = aggregate(df, [color, "hook_a", "pos_a", "quantile"], "margin_boxes", chance=True)
    median = pl.col("quantile") == 0.5
    wide = (agg.group_by(color, "hook_a", "pos_a")
            .agg(lo=pl.col("mean").sort_by("quantile").first(),
                 hi=pl.col("mean").sort_by("quantile").last(),
                 mid=pl.col("mean").filter(median).first(),
                 mid_lo=pl.col("ci_lo").filter(median).first(),
                 mid_hi=pl.col("ci_hi").filter(median).first(),
                 q_lo=pl.col("quantile").min(), q_hi=pl.col("quantile").max(),
                 n=pl.col("n").max())
            .sort(color, "pos_a"))
    wide = _check_rows(wide, "margin_boxes")
    base = alt.Chart(wide).encode(
        x=alt.X("hook_a:N", sort=HOOK_A, title="hook (forward order)"),
        xOffset=alt.XOffset(f"{color}:N"),
        color=alt.Color(f"{color}:N", title=color),
        tooltip=[color, "hook_a", alt.Tooltip("lo:Q", format=".4f"),
                 alt.Tooltip("mid:Q", format=".4f"), alt.Tooltip("hi:Q", format=".4f"),
                 alt.Tooltip("mid_lo:Q", format=".4f", title="median: interval lo"),
                 alt.Tooltip("mid_hi:Q", format=".4f", title="median: interval hi"),
                 "q_lo", "q_hi", "n"],
    )
    box = base.mark_bar(opacity=0.6, size=8).encode(
        y=alt.Y("lo:Q", title="normalised hidden margin d̃", scale=alt.Scale(type="log")),
        y2="hi:Q")
    median_tick = base.mark_tick(thickness=2, size=10).encode(y="mid:Q",
                                                              color=alt.value("black"))
    interval = base.mark_rule(strokeWidth=1.5).encode(y="mid_lo:Q", y2="mid_hi:Q",
                                                      color=alt.value("black"))
    return alt.layer(box, median_tick, interval).properties(width=alt.Step(30), height=220,
                                                            title=title)


def margin_vs_k(df: pl.DataFrame, *, color: str = "variant",
                title: str = "Input margin vs PCA subspace") -> alt.LayerChart:
    """Mean DeepFool input margin against the number k of PCA directions it may move in
    (``pca_k``; the largest k is D, the unconstrained margin), one line per ``color`` value,
    mean over seeds, error bars: the bootstrap interval (mean over seeds); log-log axes.
    [ours: after constrained margins]"""
    require_columns(df, [color, "pca_k", "value"], "margin_vs_k")
    agg = _check_rows(aggregate(df, [color, "pca_k"], "margin_vs_k", chance=True),
                      "margin_vs_k")
    base = alt.Chart(agg).encode(
        x=alt.X("pca_k:Q", title="k (PCA directions; largest = D, unconstrained)",
                scale=alt.Scale(type="log")),
        color=alt.Color(f"{color}:N", title=color),
    )
    y = alt.Y("mean:Q", title="mean input margin ‖r‖", scale=alt.Scale(type="log"))
    line = base.mark_line(point=True).encode(
        y=y, tooltip=[color, "pca_k", alt.Tooltip("mean:Q", format=".4f"),
                      alt.Tooltip("sd:Q", format=".4f"), "n", *chance_tooltip()[:2]])
    bars = base.mark_rule().encode(y="ci_lo:Q", y2="ci_hi:Q")
    return alt.layer(line, bars).properties(width=300, height=220, title=title)


def variant_bars(df: pl.DataFrame, *, color: str = "variant", column: str = "measure",
                 title: str = "per variant") -> alt.FacetChart:
    """One bar per ``color`` value (mean over seeds, a thin rule for min–max over seeds), one
    panel per ``column`` value; a thick black rule: the bootstrap interval (mean over seeds),
    a dashed line: the chance level (mean over the panel, where the table has one). [ours]"""
    require_columns(df, [color, column, "value"], "variant_bars")
    agg = _check_rows(aggregate(df, [column, color], "variant_bars", chance=True),
                      "variant_bars")
    base = alt.Chart().encode(x=alt.X(f"{color}:N", title=None, axis=alt.Axis(labelAngle=-30)))
    bars = base.mark_bar().encode(
        y=alt.Y("mean:Q", title="value"), color=alt.Color(f"{color}:N", legend=None),
        tooltip=[column, color, alt.Tooltip("mean:Q", format=".4f"),
                 alt.Tooltip("min:Q", format=".4f"), alt.Tooltip("max:Q", format=".4f"), "n",
                 *chance_tooltip()])
    spread = base.mark_rule().encode(y="min:Q", y2="max:Q")
    interval = base.mark_rule(strokeWidth=3, color="black").encode(y="ci_lo:Q", y2="ci_hi:Q")
    chance = alt.Chart().mark_rule(strokeDash=[4, 3], color="black").encode(
        y=alt.Y("mean(chance):Q", title="value"))
    return (alt.layer(bars, spread, interval, chance, data=agg)
            .properties(width=alt.Step(26), height=160)
            .facet(column=alt.Column(f"{column}:N", title=None)).properties(title=title))


def png_url(image: Any, zoom: int = 2) -> str:
    """A ``data:image/png;base64,…`` URL of an H × W (grey) or H × W × 3 (RGB) image with
    values in [0, 1] (clipped), each pixel drawn as ``zoom`` × ``zoom`` (nearest): images
    embedded in a figure, offline. [ours]"""
    import base64
    import io

    import numpy as np
    from PIL import Image

    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"png_url: an H × W or H × W × 3 image expected, got {arr.shape}")
    pixels = np.clip(np.nan_to_num(arr) * 255 + 0.5, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    if zoom > 1:
        img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid(tiles: pl.DataFrame, *, size: int, title: str = "images",
               subtitle: Sequence[str] = (), gap: int = 4) -> alt.Chart:
    """Images as a grid: one tile per row of ``tiles`` (columns ``row``, ``column`` (labels),
    ``row_pos``, ``column_pos`` (their order), ``url`` (:func:`png_url`) and ``text`` (the
    tooltip)); ``size``: a tile's side in pixels, ``gap`` the space between tiles. [ours]"""
    require_columns(tiles, ["row", "column", "row_pos", "column_pos", "url", "text"],
                    "image_grid")
    tiles = _check_rows(tiles, "image_grid")
    return alt.Chart(tiles).mark_image(width=size, height=size).encode(
        x=alt.X("column:N", sort=alt.EncodingSortField("column_pos", op="min"), title=None,
                axis=alt.Axis(orient="top", labelAngle=-40, labelLimit=220)),
        y=alt.Y("row:N", sort=alt.EncodingSortField("row_pos", op="min"), title=None),
        url="url:N", tooltip=["row", "column", "text"],
    ).properties(width=alt.Step(size + gap), height=alt.Step(size + gap),
                 title=alt.TitleParams(title, subtitle=list(subtitle)))
