"""The figures of the representation dynamics (E10, :mod:`rra.metrics.dynamics`): per dataset,
probe and model, the hook × epoch heat map of NNTS to the final model beside the layer × epoch
heat map of the relative weight change (E6) of the same runs, and the settling epoch per hook,
one line per variant (with and without augmentation) (families in :mod:`rra.report.build`).
The heat map fades the cells indistinguishable from chance (p ≥ 0.05 in some seed) and names
the bootstrap interval, chance level and p in its tooltip; the settling-epoch figure draws the
bootstrap interval of the settling epoch (``lo``–``hi``, mean over seeds) beside the seeds'
min–max (:func:`rra.report.charts.aggregate` with ``chance=True``). [ours]"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import altair as alt
import polars as pl

from rra.metrics.tables import scan_tables
from rra.report import charts
from rra.report.frames import weight_change_frame

if TYPE_CHECKING:
    from rra.report.build import Report

RUN_COLUMNS = ("model", "attention", "augmentation", "seed")


def dynamics_frame(manifests: list[Path]) -> pl.DataFrame:
    """The dynamics tables of ``manifests`` (their folders' ``dynamics.parquet``)."""
    tables = [m.parent / "dynamics.parquet" for m in manifests]
    return scan_tables(tables).collect() if tables else pl.DataFrame()


def dynamics_figures(rep: Report, dataset: str) -> None:
    """``dynamics-{model}`` and ``dynamics-settling-{model}`` per probe and model of the
    dataset's listed dynamics tables, at the report's scale and k (else ``full`` and the
    smallest k)."""
    manifests = rep.inputs.of_dataset("dynamics", dataset)
    if not manifests:
        return
    logs = rep.inputs.of_dataset("training", dataset)
    changes = weight_change_frame(logs) if logs else None
    df = dynamics_frame(manifests)
    scale = rep.opts["scale"] if (df["scale_a"] == str(rep.opts["scale"])).any() else "full"
    ks = sorted(df["k"].unique().to_list())
    k = rep.opts["k"] if rep.opts["k"] in ks else ks[0]
    tau = _tau(manifests)
    df = df.filter((pl.col("scale_a") == scale) & (pl.col("k") == k))
    for (probe, model), part in sorted(df.group_by(["probe", "model"]), key=lambda g: g[0]):
        runs = set(part.select(*RUN_COLUMNS).iter_rows())
        used = [m for m in manifests if m.parents[1].name == probe
                and _run_of(m.parents[3].name, runs)]
        selection = {"dataset": dataset, "probe": probe, "model": model, "scale": scale, "k": k,
                     "tau": tau, "seeds": sorted({r[3] for r in runs}), "band": rep.opts["band"]}
        group = f"{dataset} · representation dynamics (E10), {probe}"
        wc = None
        if changes is not None and changes.height:
            names = [f"{m}-{a}-{g}-s{s}" for m, a, g, s in runs]
            keep = pl.format("{}-{}-{}-s{}", *RUN_COLUMNS).is_in(names)
            wc = changes.filter((pl.col("measure") == "weight_change_l1") & keep)
        rep.emit(heatmap_beside_weight_change(part, wc, title=f"NNTS to the final model and "
                                              f"relative weight change, {model} ({dataset})"),
                 f"{dataset}/{probe}/dynamics-{model}", kind="dynamics", group=group,
                 inputs=[*used, *[p for p in logs if _run_of(p.parent.name, runs)]],
                 title=f"Representation dynamics: {model}, {probe}",
                 caption=f"Left: NNTS (k = {k}, scale {scale}) of each hook's kNN graph "
                         "after each kept epoch with the final model's, mean over seeds "
                         "(epoch 0: the initialisation); right: the relative weight change "
                         "‖ΔW‖₁ / ‖W_{t−1}‖₁ of each conv/linear layer in each epoch (E6); "
                         "one row per attention · augmentation; faded cells: p ≥ "
                         f"{charts.P_CHANCE} in some seed (indistinguishable from chance), "
                         "bootstrap interval in the tooltip", selection=selection)
        rep.emit(settling_chart(part, title=f"Settling epoch per hook (τ = {tau}), {model}"),
                 f"{dataset}/{probe}/dynamics-settling-{model}", kind="dynamics", group=group,
                 inputs=used, title=f"Settling epoch per hook: {model}, {probe}",
                 caption=f"The first kept epoch from which the hook's NNTS to the final model "
                         f"stays ≥ τ = {tau} (k = {k}, scale {scale}); the final epoch when it "
                         f"never does before; mean over seeds with the {rep.opts['band']} band "
                         "(thin rule) and the bootstrap interval over probe rows (wide bar, "
                         "mean over seeds); one line per attention · augmentation",
                 selection=selection)


def _tau(manifests: list[Path]) -> Any:
    from rra.io import read_json

    taus = sorted({read_json(m).get("tau") for m in manifests})
    return taus[0] if len(taus) == 1 else taus


def _run_of(name: str, runs: set[tuple]) -> bool:
    """Whether the run folder ``name`` is one of ``runs`` (model, attention, augmentation,
    seed)."""
    return any(name == f"{m}-{a}-{g}-s{s}" for m, a, g, s in runs)


def nnts_heatmap(df: pl.DataFrame) -> alt.FacetChart:
    """Hook × epoch heat map of ``dynamics_nnts_final`` (mean over seeds), rows = variant."""
    rows = charts.add_variant(df.filter(pl.col("measure") == "dynamics_nnts_final"))
    agg = charts.aggregate(rows, ["variant", "hook_a", "pos_a", "epoch"], "dynamics heat map",
                           vary=("seed", "epoch_b"), chance=True)
    chart = alt.Chart(agg).mark_rect().encode(
        x=alt.X("epoch:O", title="kept epoch"),
        y=alt.Y("hook_a:N", sort=alt.EncodingSortField("pos_a", op="min"),
                title="hook (forward order)"),
        color=alt.Color("mean:Q", title="NNTS to final", scale=alt.Scale(domain=[0, 1],
                                                                         scheme="viridis"),
                        legend=charts.GRADIENT),
        opacity=charts.faded(),
        tooltip=["variant", "hook_a", "epoch", alt.Tooltip("mean:Q", format=".3f"),
                 alt.Tooltip("min:Q", format=".3f"), alt.Tooltip("max:Q", format=".3f"), "n",
                 *charts.chance_tooltip(".3f")],
    ).properties(width=alt.Step(22), height=alt.Step(14))
    return chart.facet(row=alt.Row("variant:N", title=None))


def heatmap_beside_weight_change(df: pl.DataFrame, changes: pl.DataFrame | None, *,
                                 title: str) -> alt.HConcatChart | alt.FacetChart:
    """:func:`nnts_heatmap` and, when ``changes`` has rows, the E6 heat map of the same runs
    (:func:`rra.report.charts.weight_change_heatmap`, one column)."""
    left = nnts_heatmap(df)
    if changes is None or changes.height == 0:
        return left.properties(title=title)
    right = charts.weight_change_heatmap(charts.add_variant(changes), columns=1,
                                         title="relative weight change (l1)")
    return alt.hconcat(left, right).resolve_scale(color="independent").properties(title=title)


def settling_chart(df: pl.DataFrame, *, title: str) -> alt.LayerChart:
    """Settling epoch per hook (forward order), one line per variant: mean over seeds, a thin
    min–max rule over seeds and a wide translucent bar of the bootstrap interval (mean over
    seeds of ``lo``, ``hi``: kept epochs) per point; the axis ticks are the kept epochs."""
    rows = charts.add_variant(df.filter(pl.col("measure") == "dynamics_settling_epoch"))
    agg = charts.aggregate(rows, ["variant", "hook_a", "pos_a"], "settling epochs",
                           vary=("seed", "epoch"), chance=True)
    base = alt.Chart(agg).encode(
        x=alt.X("hook_a:N", sort=alt.EncodingSortField("pos_a", op="min"),
                title="hook (forward order)"),
        color=alt.Color("variant:N", title="attention · augmentation"))
    epochs = sorted(df.filter(pl.col("measure") == "dynamics_nnts_final")["epoch"].unique())
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean:Q", title="settling epoch", axis=alt.Axis(values=epochs, format="d"),
                scale=alt.Scale(domain=[min(epochs), max(epochs)])),
        tooltip=["variant", "hook_a", alt.Tooltip("mean:Q", format=".2f"), "min", "max", "n",
                 alt.Tooltip("ci_lo:Q", format=".2f", title="interval lo (mean over seeds)"),
                 alt.Tooltip("ci_hi:Q", format=".2f", title="interval hi (mean over seeds)")])
    band = base.mark_rule().encode(y="min:Q", y2="max:Q")
    bars = base.mark_rule(size=7, opacity=0.3).encode(y="ci_lo:Q", y2="ci_hi:Q")
    heading = alt.TitleParams(title, subtitle=[
        "line: mean over seeds; thin rule: min–max over seeds; wide bar: bootstrap interval "
        "over probe rows (mean over seeds)"])
    return alt.layer(bars, band, line).properties(width=alt.Step(26), height=180, title=heading)
