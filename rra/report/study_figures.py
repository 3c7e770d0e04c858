"""The figures of one dataset: accuracy and cost, relative weight change, Annoy against exact
kNN, the E2 panels and guideline (drawn from the E2 stage's tables) and the STAC scale choices
(E2–E6; families in :mod:`rra.report.build`). [ours]"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from rra.metrics.hyperparams import PARAMETERS, panel_seeds, panel_values
from rra.report import charts
from rra.report.frames import (accuracy_cost_frame, accuracy_frame, e2_guideline_frames,
                               knn_graph_frame, stac_scales_frame, weight_change_frame)

if TYPE_CHECKING:
    from rra.report.build import Report


def training_group(dataset: str) -> str:
    return f"{dataset} · training and kNN backends"


def accuracy_figure(rep: Report, dataset: str) -> None:
    """Accuracy over seeds, with parameters, FLOPs and their ratios when the cost table is
    listed."""
    sources = rep.inputs.of_dataset("accuracy", dataset)
    if not sources:
        return
    costs = rep.inputs.of_dataset("cost", dataset)
    cost = pl.read_parquet(costs[0]) if costs else None
    frame = accuracy_cost_frame(accuracy_frame(sources), cost)
    what = "Accuracy, parameters and FLOPs" if cost is not None else "Accuracy"
    rep.emit(charts.accuracy_cost(frame, title=f"{what}, {dataset}"), f"{dataset}/accuracy",
             kind="training", group=training_group(dataset), title=f"{what}: {dataset}",
             inputs=[*sources, *costs[:1]],
             caption="Top-1 evaluation accuracy, mean ± sd over seeds, with each run's 95 % "
                     "Wilson interval (mean bounds over seeds); faded: not above chance (1/C)"
                     + ("; parameters, FLOPs and ratios to each model's baseline (none), and "
                        "accuracy against the ratios" if cost is not None else ""),
             selection={"dataset": dataset})


def weight_change_figures(rep: Report, dataset: str) -> None:
    """Heat maps and curves of the relative weight change (l1 and elementwise) of the runs'
    train logs (E6)."""
    logs = rep.inputs.of_dataset("training", dataset)
    changes = weight_change_frame(logs) if logs else None
    if changes is None or changes.height == 0:
        return
    changes = charts.add_variant(changes, ("model", "attention", "augmentation"))
    for variant in ("l1", "elementwise"):
        df = changes.filter(pl.col("measure") == f"weight_change_{variant}")
        formula = ("‖ΔW‖₁ / ‖W_{t−1}‖₁" if variant == "l1"
                   else "mean |ΔW| / max(|W_{t−1}|, ε)")
        for kind, draw in (("heatmap", charts.weight_change_heatmap),
                           ("curves", charts.weight_change_curves)):
            rep.emit(draw(df, title=f"Relative weight change ({variant}), {dataset}"),
                     f"{dataset}/weight-change-{variant}-{kind}", kind="training",
                     group=training_group(dataset), inputs=logs,
                     title=f"Relative weight change ({variant}, {kind}): {dataset}",
                     caption=f"{formula} per conv/linear layer (module order) and epoch, "
                             "mean over seeds; one panel per model · attention · "
                             "augmentation",
                     selection={"dataset": dataset, "measure": f"weight_change_{variant}"})


def knn_recall_figures(rep: Report, dataset: str) -> None:
    """Annoy's recall@k and time against exact, one figure per (probe, distance, k_max) with an
    Annoy graph: graphs of one folder share k_max, folders of other k are not comparable."""
    manifests = rep.inputs.of_dataset("knn", dataset)
    graphs = knn_graph_frame(manifests) if manifests else None
    if graphs is None or not (graphs["backend_used"] == "annoy").any():
        return
    for (probe, distance, k), df in graphs.group_by(["probe", "distance", "k"],
                                                     maintain_order=True):
        if not (df["backend_used"] == "annoy").any():
            continue
        used = [p for p in manifests if p.parents[1].name == probe
                and p.parent.name.startswith(f"{distance}-")]
        rep.emit(charts.knn_recall(df, title=f"Annoy vs exact kNN, {dataset} ({probe}, "
                                             f"{distance}, k = {k})"),
                 f"{dataset}/knn-{probe}-{distance}-k{k}", kind="knn",
                 group=training_group(dataset), inputs=used,
                 title=f"Annoy recall and time vs exact: {dataset}, {probe}, {distance}",
                 caption="recall@k of the Annoy graphs against exact neighbours (on the "
                         "manifest's row sample) and seconds per graph, per hook and scale; "
                         "mean over runs",
                 selection={"dataset": dataset, "probe": probe, "distance": distance,
                            "k": sorted(df["k"].unique().to_list())})


def e2_figures(rep: Report, dataset: str) -> None:
    """E2: one ``hyperparams-{variant}`` figure per model variant of the E2 stage's panels and
    the ``e2-guideline`` table (CSV and chart); see :mod:`rra.metrics.hyperparams` for the
    reference setting and the definitions."""
    for manifest in rep.inputs.of_dataset("e2_guideline", dataset):
        panels, table, reference, files = e2_guideline_frames(manifest)
        if reference is None or table.height == 0:
            continue
        group = f"{dataset} · RRA hyper-parameters (E2)"
        ref_text = (f"probe {reference['probe']}, {reference['distance']} distance, "
                    f"{reference['backend']} backend, k = {reference['k']}, "
                    f"scale {reference['scale']}")
        selection = {"dataset": dataset, "reference": reference}
        variants = panels.select("model", "attention", "augmentation").unique(maintain_order=True)
        for model, attention, augmentation in variants.iter_rows():
            panel = panels.filter((pl.col("model") == model) & (pl.col("attention") == attention)
                                  & (pl.col("augmentation") == augmentation))
            _hyperparams_figure(rep, group, panel, files[:2], ref_text,
                                {**selection, "model": model, "attention": attention,
                                 "augmentation": augmentation})
        rep.emit(charts.guideline_table(table, title=f"RRA hyper-parameter guideline, {dataset}"),
                 f"{dataset}/e2-guideline", kind="hyperparams", group=group,
                 inputs=[files[0], files[2]],
                 table=table, title=f"RRA hyper-parameter guideline: {dataset}",
                 caption="Per parameter: the largest change of each summary measure between two "
                         "of its values, mean over hooks (of the per-seed-mean values); per kNN "
                         "backend setting: recall@k against exact, seconds per graph and time "
                         f"relative to exact. Reference: {ref_text}. Also as CSV.",
                 selection=selection)


def _hyperparams_figure(rep: Report, group: str, panel: pl.DataFrame, files: list,
                        ref_text: str, selection: dict) -> None:
    name = "-".join(selection[c] for c in ("model", "attention", "augmentation"))
    shown = [p for p in PARAMETERS if p in set(panel["parameter"])]
    rep.emit(charts.hyperparam_panels(panel, parameters=PARAMETERS,
                                      title=f"RRA hyper-parameters, {name}"),
             f"{selection['dataset']}/hyperparams-{name}", kind="hyperparams", group=group,
             inputs=files, title=f"RRA hyper-parameters: {name}",
             caption="kNN class purity, kNN-vote accuracy and NNTS to logits per hook "
                     "(colour, forward order) against one parameter at a time, mean over "
                     "seeds; bars: bootstrap interval over probe rows (mean over seeds); faded "
                     "points: indistinguishable from chance (p ≥ 0.05 in some seed); the others "
                     f"at the reference (*): {ref_text}",
             selection={**selection, "values": {p: panel_values(panel, p) for p in shown},
                        "seeds": {p: panel_seeds(panel, p) for p in shown}})


def stac_figures(rep: Report, dataset: str) -> None:
    """E4: one ``stac-scales-{baseline}`` figure per listed scale-choice file of the dataset."""
    for path in sorted(rep.inputs.of_dataset("stac_scales", dataset)):
        df, meta = stac_scales_frame(path)
        rule = (f"δ = {meta['delta']:g}" if meta["criterion"] == "agreement"
                else f"τ = {meta['tau']:g}")
        budget = meta["budget"] or {}
        cost = (f", FLOPs ratio {budget['flops_ratio']:.4f}"
                + (f" ≤ {budget['max_flops_ratio']:g}" if budget.get("max_flops_ratio") else "")
                if budget else "")
        how = ("coarsest s whose agreement is within δ of the finest pooled scale's"
               if meta["criterion"] == "agreement" else "coarsest s with S ≥ τ, else the finest")
        probe = (meta["baseline"] or {}).get("probe", "?")
        rep.emit(charts.stac_scales_chart(df, title=f"STAC scale choice, baseline {path.stem} "
                                                    f"(k = {meta['k']}, {meta['criterion']}, "
                                                    f"{rule}{cost})"),
                 f"{dataset}/stac-scales-{path.stem}", kind="stac",
                 group=f"{dataset} · STAC scale choice (E4)",
                 inputs=[path, *([meta["classrepsim"]] if meta["classrepsim"] else [])],
                 title=f"Chosen STAC scales: {path.stem}",
                 caption="Class-mean ClassRepSim S_v[s, full] and class-response agreement "
                         "A_v[s, full] of the baseline at the last block v of each stage against "
                         f"the pooled scale s, on the held-out probe {probe}; dashed: the "
                         f"threshold of the deciding measure ({meta['criterion']}); red: the "
                         f"chosen scale ({how}, within the FLOPs budget); ring: the criterion's "
                         "pick where the budget moved it; bars: bootstrap interval over probe "
                         "rows (agreement: mean of the per-class intervals), faded points: "
                         "ClassRepSim indistinguishable from chance (p ≥ 0.05), read from the "
                         "baseline's ClassRepSim table (none when it is gone or changed)",
                 selection={"dataset": dataset, "baseline": meta["baseline"],
                            "criterion": meta["criterion"], "tau": meta["tau"],
                            "delta": meta["delta"], "k": meta["k"], "scales": meta["scales"],
                            "budget": meta["budget"]})
