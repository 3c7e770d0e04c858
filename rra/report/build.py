"""``build_report``: the standard figures of whatever a results directory holds. [ours]

Figures (each HTML + PNG + SVG under ``reports/figures/``, listed by ``reports/index.html``):

per analysis ``{dataset}/{probe}/{distance}-{backend}/`` (metric tables):
  ``nnts-{model}``             NNTS heat maps, rows = variant, columns = k (E1);
  ``nntp-{run group}``         NNTP table heat map + per-hook edge totals at one k, alpha (E1);
  ``curves-{model}``           kNN class purity, kNN-vote accuracy and NNTS to logits per hook,
                               mean and band over seeds, one curve per variant (E3, E5);
  ``nnts-diff-{model}``        mean-over-seeds NNTS(standard) − NNTS(none), attention ``none``,
                               diverging colours centred on 0, when the model has both (E3);
  ``classrepsim-{run group}``  scale × scale ClassRepSim, class mean, last hook of each stage
                               (E4), and ``classrepsim-class-…`` per class for ``none`` variants;
per dataset ``{dataset}/``:
  ``accuracy``                 accuracy (mean ± sd over seeds), with parameters, FLOPs and their
                               ratios when ``cost.parquet`` exists (E3, E5);
  ``weight-change-…``          layer × epoch heat maps and per-layer curves (E6);
  ``knn-{probe}-{distance}``   Annoy recall@k and time against exact, when some graph used Annoy
                               (E2);
  ``hyperparams-{model}-{attention}-{augmentation}``
                               kNN purity, kNN-vote accuracy and NNTS to logits per hook against
                               probe, distance, backend, k and scale, one at a time, the others
                               at the reference setting (E2; :mod:`rra.report.hyperparams`), when
                               a run of the variant has ≥ 2 analyses differing in probe, distance
                               or backend;
  ``e2-guideline``             the E2 guideline table (also ``e2-guideline.csv``): per parameter
                               the mean over hooks of each measure's largest change across the
                               parameter's values; per backend setting recall@k, seconds per
                               graph and time relative to exact;
  ``stac-scales-{baseline}``   per ``stac_scales/{baseline}.json``: ClassRepSim evidence against
                               the scale per stage, tau and the chosen scale (E4);
per dataset and probe of the layer analyses ``{dataset}/layers-{probe}/`` (E7–E9, one line
per variant = model · attention · augmentation, seeds averaged; models with the same hooks,
e.g. ResNet-20 with and without BatchNorm, share a figure):
  ``translation-{model}``      (2S+1)² cosine maps per hook (columns) and variant (rows), at
                               the report's scale (else ``full``) (E7);
  ``translation-radial-{model}`` radial profiles of cosine and relative change per hook, both
                               scales, and ``translation-summary-{model}``: the maps' means
                               without (0, 0) per hook (E7);
  ``patterns-{models}``        ReLU sparsity, pattern groups, purity, tree fidelity/size per
                               hook (E8);
  ``margins-{models}``         hidden-margin quartiles per hook, and ``margins-pca``: the input
                               margin against the PCA subspace's k, every model (E9);
  ``saliency``, ``saliency-share``, ``filters``
                               image | true-class | predicted-class saliency of the same probe
                               images per variant, the top-5 % mass share, first-layer filter
                               grids (E9);
  ``fragmentation-{models}``   class regions per plane per hook, same-class and mixed
                               triplets (E9).

A figure whose inputs are absent is skipped. Under each analysis's heading the index says which
kNN backend built its graphs and why (``kNN: exact, … (auto: exact predicted … vs Annoy …)``,
:func:`rra.report.frames.knn_backend_note`). Options come from ``config["report"]``
(:data:`DEFAULTS`): the pooled ``scale`` of the hook-pair figures, ``k`` (default: the smallest
computed), ``alpha`` of NNTP, and the seed ``band`` (``minmax`` or ``sd``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from rra.io import PathLike, sha256_artifact, sha256_file
from rra.report.index import FigureRecord, build_index

FIGURES = "figures"  # generated figures live in {reports_dir}/figures/, rebuilt on every run
#: what build_report writes into reports_dir, swapped in together (anything else there is kept)
OUTPUTS = (FIGURES, "metrics.json", "index.json", "index.html")
DEFAULTS: dict[str, Any] = {"scale": "full", "k": None, "alpha": 0, "band": "minmax"}
# Study config blocks recorded with each kind of figure (when the study config is given), under
# "config.{block}" beside the figure's own selection (dataset, probe name, model, k, ...).
BLOCKS = {
    "metrics": ("probe", "embed", "knn", "metrics", "report"),
    "training": ("training", "runs", "attention", "stac_auto"),
    "knn": ("probe", "embed", "knn"),
    "hyperparams": ("probe", "embed", "knn", "metrics", "report", "experiments"),
    "stac": ("stac_auto", "probe", "embed", "knn"),
    "layers": ("layers", "experiments", "embed", "device"),
}
CURVE_MEASURES = {"knn_purity": "kNN class purity", "knn_vote_accuracy": "kNN-vote accuracy",
                  "nnts_to_logits": "NNTS to logits"}


def report_options(config: dict | None) -> dict[str, Any]:
    """``DEFAULTS`` updated by ``config["report"]``; unknown keys and bad values are errors."""
    given = dict((config or {}).get("report") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config report: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **given}
    if opts["band"] not in ("minmax", "sd"):
        raise ValueError(f"config report.band must be 'minmax' or 'sd', got {opts['band']!r}")
    opts["scale"] = str(opts["scale"])
    return opts


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


class _Report:
    """Collects figures: saves each chart, hashes inputs (once per file), records config."""

    def __init__(self, results_dir: Path, reports_dir: Path, config: dict | None):
        from tqdm.auto import tqdm

        self.results_dir, self.reports_dir = results_dir, reports_dir
        self.config = config
        self.opts = report_options(config)
        self.records: list[FigureRecord] = []
        self.notes: dict[str, str] = {}  # a line under a group's heading (the kNN backend)
        self._sha: dict[Path, str] = {}
        self.progress = tqdm(desc="report figures", unit="figure", disable=None)

    def show_path(self, path: Path) -> str:
        try:
            return (Path(self.results_dir.name) / path.relative_to(self.results_dir)).as_posix()
        except ValueError:
            return path.as_posix()

    def inputs(self, paths: Iterable[Path]) -> dict[str, str]:
        out = {}
        for p in sorted(set(paths)):
            if p not in self._sha:
                self._sha[p] = sha256_artifact(p)
            out[self.show_path(p)] = self._sha[p]
        return out

    def emit(self, chart: Any, stem: str, *, title: str, caption: str, group: str,
             selection: dict[str, Any], kind: str, inputs: Iterable[Path],
             table: Any = None) -> None:
        """Save ``chart`` as ``figures/{stem}.{html,png,svg}`` (and the polars frame ``table``
        as ``{stem}.csv``) and record the figure."""
        from rra.io import atomic_path
        from rra.report.save import save_chart

        files = save_chart(chart, self.reports_dir / FIGURES / stem)
        if table is not None:
            csv = self.reports_dir / FIGURES / f"{stem}.csv"
            with atomic_path(csv, suffix=".csv") as tmp:
                table.write_csv(tmp)
            files[csv] = sha256_file(csv)
        config = dict(selection)
        if self.config is not None:
            config.update({f"config.{b}": self.config[b] for b in BLOCKS[kind]
                           if b in self.config})
        self.records.append(FigureRecord(
            id=slug(stem), title=title, caption=caption, group=group,
            files={p.relative_to(self.reports_dir).as_posix(): h for p, h in files.items()},
            config=config, inputs=self.inputs(inputs)))
        self.progress.update(1)


def _pick(values: Sequence[Any], wanted: Any, name: str) -> Any:
    """``wanted`` if computed, the smallest value when ``wanted`` is None."""
    values = sorted(v for v in values if v is not None)
    if wanted is None:
        return values[0]
    if wanted not in values:
        raise ValueError(f"config report.{name} = {wanted!r} was not computed; available: {values}")
    return wanted


def _colour(df) -> str:
    varying = [c for c in ("attention", "augmentation") if df[c].n_unique() > 1]
    return varying[0] if len(varying) == 1 else "variant"


def _metric_figures(rep: _Report, dirs: list) -> None:
    import polars as pl

    from rra.metrics.tables import scan_tables
    from rra.report import charts
    from rra.report.frames import knn_backend_note, nnts_to_logits, parse_run, read_tables

    d0 = dirs[0]
    sel = {"dataset": d0.dataset, "probe": d0.probe, "distance": d0.distance,
           "backend": d0.backend}
    prefix = f"{d0.dataset}/{d0.probe}/{d0.distance}-{d0.backend}"
    group = f"{d0.dataset} · probe {d0.probe} · {d0.distance} distance, {d0.backend} backend"
    rep.notes[group] = knn_backend_note(d.knn_manifest for d in dirs)
    scale, band = rep.opts["scale"], rep.opts["band"]
    at_scale = pl.col("scale_a") == scale
    nnts = read_tables(dirs, "nnts", at_scale & (pl.col("measure") == "nnts"))
    computed = scan_tables(d.path / "nnts.parquet" for d in dirs).head(1).collect().height
    if nnts.height == 0 and not computed:
        _classrepsim_only_figures(rep, dirs, prefix, group, sel)  # e.g. the stac-auto val probe
        return
    if nnts.height == 0:
        warnings.warn(f"{prefix}: no NNTS at scale {scale!r}; no metric figures", stacklevel=2)
        return
    nntp = read_tables(dirs, "nntp", at_scale)
    response = read_tables(dirs, "class_response",
                           at_scale & pl.col("measure").is_in(["knn_purity", "knn_vote_accuracy"]))
    crs = read_tables(dirs, "classrepsim",
                      pl.col("measure").is_in(["classrepsim_mean", "classrepsim"]))
    alpha = (_pick(nntp["alpha"].unique().to_list(), rep.opts["alpha"], "alpha")
             if nntp.height else None)
    runs = {d.run: parse_run(d.run) for d in dirs}

    for model in sorted({r["model"] for r in runs.values()}):
        mdirs = [d for d in dirs if runs[d.run]["model"] == model]
        manifests = [d.manifest for d in mdirs]
        of_model = pl.col("model") == model
        m_sel = {**sel, "model": model, "scale": scale}

        df = charts.add_variant(nnts.filter(of_model))
        if df.height == 0:
            continue
        # k per model: models analysed in one folder can carry different k (experiments add
        # their own); report.k, or the model's smallest computed k
        k = _pick(df["k"].unique().to_list(), rep.opts["k"], "k")
        several = df["variant"].n_unique() > 1
        rep.emit(charts.nnts_heatmap(df, row="variant" if several else None, column="k",
                                     title=f"NNTS, {model} at scale {scale}"),
                 f"{prefix}/nnts-{model}", kind="metrics", group=group, inputs=manifests,
                 title=f"NNTS heat maps: {model}",
                 caption=f"NNTS between hooks (forward order) at scale {scale}, mean over seeds; "
                         "columns: k" + ("; rows: attention · augmentation" if several else ""),
                 selection={**m_sel, "k": sorted(df["k"].unique().to_list())})

        pair = df.filter((pl.col("attention") == "none") & (pl.col("k") == k)
                         & pl.col("augmentation").is_in(["none", "standard"]))
        if pair["augmentation"].n_unique() == 2:
            seeds = {a: sorted(pair.filter(pl.col("augmentation") == a)["seed"].unique().to_list())
                     for a in ("standard", "none")}
            rep.emit(charts.nnts_diff_heatmap(pair, title=f"NNTS(standard) − NNTS(none), {model} "
                                                          f"(scale {scale}, k = {k})"),
                     f"{prefix}/nnts-diff-{model}", kind="metrics", group=group,
                     inputs=[d.manifest for d in mdirs if runs[d.run]["attention"] == "none"
                             and runs[d.run]["augmentation"] in seeds],
                     title=f"NNTS difference, augmentation: {model}",
                     caption="NNTS between hooks (forward order) with standard augmentation minus "
                             f"without (attention none), each the mean over its seeds, at scale "
                             f"{scale} and k = {k}; orange: more similar with augmentation",
                     selection={**m_sel, "k": k, "attention": "none", "seeds": seeds})

        curves = pl.concat([response, nnts_to_logits(nnts)], how="vertical").filter(
            of_model & (pl.col("k") == k))
        curves = charts.add_variant(curves.with_columns(pl.col("measure").replace(CURVE_MEASURES)))
        if curves.height:
            rep.emit(charts.hook_curves(curves, color=_colour(curves), band=band,
                                        title=f"Per-hook curves, {model} (scale {scale}, k = {k})"),
                     f"{prefix}/curves-{model}", kind="metrics", group=group, inputs=manifests,
                     title=f"Per-hook curves: {model}",
                     caption="kNN class purity, kNN-vote accuracy and NNTS to the last hook "
                             f"(logits) per hook at k = {k}; line: mean over seeds, band: "
                             f"{'min–max' if band == 'minmax' else 'mean ± sd'}",
                     selection={**m_sel, "k": k, "band": band})

        def variant_of(d) -> tuple[str, str]:
            return runs[d.run]["attention"], runs[d.run]["augmentation"]

        for (attention, augmentation), vd in groupby(sorted(mdirs, key=variant_of), key=variant_of):
            vdirs = list(vd)
            name = f"{model}-{attention}-{augmentation}"
            of_variant = (of_model & (pl.col("attention") == attention)
                          & (pl.col("augmentation") == augmentation))
            v_sel = {**m_sel, "attention": attention, "augmentation": augmentation,
                     "seeds": sorted(runs[d.run]["seed"] for d in vdirs)}
            v_inputs = [d.manifest for d in vdirs]
            t = (nntp.filter(of_variant & (pl.col("alpha") == alpha))
                 if alpha is not None else nntp)  # no NNTP rows at this scale
            k_nntp = k if t.height == 0 or k in t["k"].unique().to_list() else min(t["k"].unique().to_list())
            t = t.filter(pl.col("k") == k_nntp)  # NNTP may be computed at fewer k (nntp_k)
            if t.height:
                rep.emit(charts.nntp_heatmap(t, title=f"NNTP, {name} (scale {scale}, k = {k_nntp}, "
                                                      f"α = {alpha})"),
                         f"{prefix}/nntp-{name}", kind="metrics", group=group, inputs=v_inputs,
                         title=f"NNTP table: {name}",
                         caption=f"NNTP runs T[f, l] (first hook f, last hook l) and undirected "
                                 f"kNN edges per hook at k = {k_nntp}, α = {alpha}; mean over seeds",
                         selection={**v_sel, "k": k_nntp, "alpha": alpha})
            _classrepsim_figures(rep, crs.filter(of_variant & (pl.col("k") == k)), name,
                                 attention, prefix, group, {**v_sel, "k": k}, v_inputs)


def _classrepsim_only_figures(rep: _Report, dirs: list, prefix: str, group: str,
                              sel: dict) -> None:
    """An analysis folder that computed ClassRepSim only (the baseline's analysis on the val
    probe that the stac-auto scale choice reads, E4): its ClassRepSim heat maps per variant,
    at the smallest k."""
    import polars as pl

    from rra.report.frames import parse_run, read_tables

    crs = read_tables(dirs, "classrepsim",
                      pl.col("measure").is_in(["classrepsim_mean", "classrepsim"]))
    if crs.height == 0:
        warnings.warn(f"{prefix}: neither NNTS nor ClassRepSim tables; no metric figures",
                      stacklevel=3)
        return
    runs = {d.run: parse_run(d.run) for d in dirs}
    def key(d) -> tuple[str, str, str]:
        return tuple(runs[d.run][c] for c in ("model", "attention", "augmentation"))

    for (model, attention, augmentation), vd in groupby(sorted(dirs, key=key), key=key):
        vdirs = list(vd)
        of_variant = ((pl.col("model") == model) & (pl.col("attention") == attention)
                      & (pl.col("augmentation") == augmentation))
        k = min(crs.filter(of_variant)["k"].unique().to_list())
        v_sel = {**sel, "model": model, "attention": attention, "augmentation": augmentation,
                 "seeds": sorted(runs[d.run]["seed"] for d in vdirs), "k": k}
        _classrepsim_figures(rep, crs.filter(of_variant & (pl.col("k") == k)),
                             f"{model}-{attention}-{augmentation}", attention, prefix, group,
                             v_sel, [d.manifest for d in vdirs])


def _classrepsim_figures(rep: _Report, crs, name: str, attention: str, prefix: str, group: str,
                         sel: dict, inputs: list) -> None:
    import polars as pl

    from rra.report import charts
    from rra.report.frames import stage_last_hooks

    mean = crs.filter(pl.col("measure") == "classrepsim_mean")
    if mean.height == 0:
        return
    ordered = mean.sort("pos_a")["hook_a"].unique(maintain_order=True).to_list()
    hooks = stage_last_hooks(ordered)
    sel = {**sel, "hooks": hooks}
    rep.emit(charts.classrepsim_heatmaps(mean.filter(pl.col("hook_a").is_in(hooks)),
                                         title=f"ClassRepSim class mean, {name}"),
             f"{prefix}/classrepsim-{name}", kind="metrics", group=group, inputs=inputs,
             title=f"ClassRepSim (class mean): {name}",
             caption="Scale × scale ClassRepSim S[s, t] (mean over classes and seeds) at the last "
                     f"hook of each stage, k = {sel['k']}", selection=sel)
    if attention != "none":
        return
    per_class = crs.filter((pl.col("measure") == "classrepsim") & pl.col("hook_a").is_in(hooks))
    cells = per_class.select("class", "hook_a", "scale_a", "scale_b").unique().height
    if cells == 0:
        return
    if cells > charts.max_rows():
        warnings.warn(f"{prefix}/classrepsim-class-{name}: {cells} cells exceed the plot limit; "
                      "per-class figure skipped", stacklevel=2)
        return
    rep.emit(charts.classrepsim_heatmaps(per_class, title=f"ClassRepSim per class, {name}"),
             f"{prefix}/classrepsim-class-{name}", kind="metrics", group=group, inputs=inputs,
             title=f"ClassRepSim per class: {name}",
             caption="Scale × scale ClassRepSim per class (rows) at the last hook of each stage "
                     f"(columns), mean over seeds, k = {sel['k']}", selection=sel)


def _dataset_figures(rep: _Report, dataset: str) -> None:
    import polars as pl

    from rra.report import charts
    from rra.report.frames import (accuracy_cost_frame, accuracy_frame, accuracy_sources,
                                   knn_graph_frame, knn_manifests, train_logs,
                                   weight_change_frame)

    group = f"{dataset} · training and kNN backends"
    sel = {"dataset": dataset}
    sources = accuracy_sources(rep.results_dir, dataset)
    if sources:
        cost_path = rep.results_dir / dataset / "cost.parquet"
        cost = pl.read_parquet(cost_path) if cost_path.is_file() else None
        frame = accuracy_cost_frame(accuracy_frame(sources), cost)
        what = "Accuracy, parameters and FLOPs" if cost is not None else "Accuracy"
        rep.emit(charts.accuracy_cost(frame, title=f"{what}, {dataset}"), f"{dataset}/accuracy",
                 kind="training", group=group, title=f"{what}: {dataset}",
                 inputs=[*sources, *([cost_path] if cost is not None else [])],
                 caption="Top-1 evaluation accuracy, mean ± sd over seeds"
                         + ("; parameters, FLOPs and ratios to each model's baseline (none), and "
                            "accuracy against the ratios" if cost is not None else ""),
                 selection=sel)

    logs = [p for p in train_logs(rep.results_dir) if p.parent.parent.name == dataset]
    wc = weight_change_frame(rep.results_dir, logs) if logs else None
    if wc is not None and wc.height:
        wc = charts.add_variant(wc, ("model", "attention", "augmentation"))
        for variant in ("l1", "elementwise"):
            df = wc.filter(pl.col("measure") == f"weight_change_{variant}")
            formula = ("‖ΔW‖₁ / ‖W_{t−1}‖₁" if variant == "l1"
                       else "mean |ΔW| / max(|W_{t−1}|, ε)")
            for kind, fn in (("heatmap", charts.weight_change_heatmap),
                             ("curves", charts.weight_change_curves)):
                rep.emit(fn(df, title=f"Relative weight change ({variant}), {dataset}"),
                         f"{dataset}/weight-change-{variant}-{kind}", kind="training",
                         group=group, inputs=logs,
                         title=f"Relative weight change ({variant}, {kind}): {dataset}",
                         caption=f"{formula} per conv/linear layer (module order) and epoch, "
                                 "mean over seeds; one panel per model · attention · "
                                 "augmentation",
                         selection={**sel, "measure": f"weight_change_{variant}"})

    manifests = [p for p in knn_manifests(rep.results_dir)
                 if p.parents[3].parent.name == dataset]
    graphs = knn_graph_frame(manifests) if manifests else None
    if graphs is None or not (graphs["backend_used"] == "annoy").any():
        return
    # one figure per (probe, distance, k_max): graphs of one folder share k_max; folders of
    # other analyses (other k) are not comparable in recall@k or time
    for (probe, distance, k), df in graphs.group_by(["probe", "distance", "k"], maintain_order=True):
        if not (df["backend_used"] == "annoy").any():
            continue
        used = [p for p in manifests if p.parents[1].name == probe
                and p.parent.name.startswith(f"{distance}-")]
        rep.emit(charts.knn_recall(df, title=f"Annoy vs exact kNN, {dataset} ({probe}, "
                                             f"{distance}, k = {k})"),
                 f"{dataset}/knn-{probe}-{distance}-k{k}", kind="knn", group=group, inputs=used,
                 title=f"Annoy recall and time vs exact: {dataset}, {probe}, {distance}",
                 caption="recall@k of the Annoy graphs against exact neighbours (on the manifest's "
                         "row sample) and seconds per graph, per hook and scale; mean over runs",
                 selection={**sel, "probe": probe, "distance": distance,
                            "k": sorted(df["k"].unique().to_list())})


def _hyperparam_figures(rep: _Report, dataset: str, dirs: list) -> None:
    """E2: one ``hyperparams-{variant}`` figure per model variant with a run analysed under
    several settings, and the dataset's ``e2-guideline`` table (CSV and chart); see
    :mod:`rra.report.hyperparams` for the reference setting and the definitions."""
    from collections import Counter

    import polars as pl

    from rra.report import charts
    from rra.report import hyperparams as hp
    from rra.report.frames import knn_cost_frame, parse_run, summary_frame

    per_run = Counter(d.run for d in dirs)
    several = [d for d in dirs if per_run[d.run] >= 2]
    if not several:
        return
    summary = summary_frame(several)
    if summary.height == 0:
        return
    runs = {d.run: parse_run(d.run) for d in dirs}
    ref = hp.reference_setting(summary, [(d.probe, d.distance, d.backend) for d in dirs],
                               k=rep.opts["k"], scale=rep.opts["scale"],
                               prefer=hp.config_preference(rep.config))
    group = f"{dataset} · RRA hyper-parameters (E2)"
    ref_text = (f"probe {ref.probe}, {ref.distance} distance, {ref.backend} backend, k = {ref.k}, "
                f"scale {ref.scale}")
    sel = {"dataset": dataset, "reference": {p: getattr(ref, p) for p in hp.PARAMETERS}}

    def variant_of(d) -> tuple[str, str, str]:
        return runs[d.run]["model"], runs[d.run]["attention"], runs[d.run]["augmentation"]

    tables, all_inputs = [], []
    for (model, attention, augmentation), vd in groupby(sorted(several, key=variant_of),
                                                          key=variant_of):
        vdirs = list(vd)
        name = f"{model}-{attention}-{augmentation}"
        panel = hp.panel_frame(summary.filter((pl.col("model") == model)
                                              & (pl.col("attention") == attention)
                                              & (pl.col("augmentation") == augmentation)),
                               ref, what=f"{dataset} {name}")
        if panel.height == 0:
            continue
        shown = [p for p in hp.PARAMETERS if p in set(panel["parameter"])]
        used = set()  # (seed, probe, distance, backend) of every analysis in the panel
        for p in shown:
            for seed in hp.panel_seeds(panel, p):
                for value in (hp.panel_values(panel, p) if p in hp.ANALYSIS_PARAMETERS
                              else [None]):
                    setting = {q: ref.value(q) for q in hp.ANALYSIS_PARAMETERS}
                    if value is not None:
                        setting[p] = value
                    used.add((seed, *(setting[q] for q in hp.ANALYSIS_PARAMETERS)))
        inputs = [d.manifest for d in vdirs
                  if (runs[d.run]["seed"], d.probe, d.distance, d.backend) in used]
        rep.emit(charts.hyperparam_panels(panel, parameters=hp.PARAMETERS,
                                          title=f"RRA hyper-parameters, {name}"),
                 f"{dataset}/hyperparams-{name}", kind="hyperparams", group=group,
                 inputs=inputs, title=f"RRA hyper-parameters: {name}",
                 caption="kNN class purity, kNN-vote accuracy and NNTS to logits per hook "
                         "(colour, forward order) against one parameter at a time, mean over "
                         f"seeds; the others at the reference (*): {ref_text}",
                 selection={**sel, "model": model, "attention": attention,
                            "augmentation": augmentation,
                            "values": {p: hp.panel_values(panel, p) for p in shown},
                            "seeds": {p: hp.panel_seeds(panel, p) for p in shown}})
        rows = [hp.guideline(panel, ref)]
        if "backend" in shown:
            values, seeds = hp.panel_values(panel, "backend"), hp.panel_seeds(panel, "backend")
            cdirs = [d for d in vdirs if runs[d.run]["seed"] in seeds and d.probe == ref.probe
                     and d.distance == ref.distance and d.backend in values]
            rows.append(hp.backend_cost(knn_cost_frame(cdirs), values, ref))
            inputs += [d.knn_manifest for d in cdirs if d.knn_manifest.is_file()]
            inputs += [d.path / "knn.parquet" for d in cdirs if (d.path / "knn.parquet").is_file()]
        tables.append(pl.concat(rows, how="vertical").with_columns(
            dataset=pl.lit(dataset), model=pl.lit(model), attention=pl.lit(attention),
            augmentation=pl.lit(augmentation)).select(hp.GUIDELINE_COLUMNS))
        all_inputs += inputs
    if not tables:
        return
    table = pl.concat(tables, how="vertical")
    rep.emit(charts.guideline_table(table, title=f"RRA hyper-parameter guideline, {dataset}"),
             f"{dataset}/e2-guideline", kind="hyperparams", group=group, inputs=all_inputs,
             table=table, title=f"RRA hyper-parameter guideline: {dataset}",
             caption="Per parameter: the largest change of each summary measure between two of "
                     "its values, mean over hooks (of the per-seed-mean values); per kNN backend "
                     "setting: recall@k against exact, seconds per graph and time relative to "
                     f"exact. Reference: {ref_text}. Also as CSV.",
             selection=sel)


def _stac_figures(rep: _Report, dataset: str) -> None:
    """E4: one ``stac-scales-{baseline}`` figure per scale-choice file of the dataset."""
    from rra.report import charts
    from rra.report.frames import stac_scales_files, stac_scales_frame

    for path in stac_scales_files(rep.results_dir, dataset):
        df, meta = stac_scales_frame(path)
        baseline = path.stem
        rule = (f"δ = {meta['delta']:g}" if meta["criterion"] == "agreement"
                else f"τ = {meta['tau']:g}")
        budget = meta["budget"] or {}
        cost = (f", FLOPs ratio {budget['flops_ratio']:.4f}"
                + (f" ≤ {budget['max_flops_ratio']:g}" if budget.get("max_flops_ratio") else "")
                if budget else "")
        how = ("coarsest s whose agreement is within δ of the finest pooled scale's"
               if meta["criterion"] == "agreement" else "coarsest s with S ≥ τ, else the finest")
        probe = (meta["baseline"] or {}).get("probe", "?")
        rep.emit(charts.stac_scales_chart(df, title=f"STAC scale choice, baseline {baseline} "
                                                    f"(k = {meta['k']}, {meta['criterion']}, "
                                                    f"{rule}{cost})"),
                 f"{dataset}/stac-scales-{baseline}", kind="stac",
                 group=f"{dataset} · STAC scale choice (E4)", inputs=[path],
                 title=f"Chosen STAC scales: {baseline}",
                 caption="Class-mean ClassRepSim S_v[s, full] and class-response agreement "
                         "A_v[s, full] of the baseline at the last block v of each stage against "
                         f"the pooled scale s, on the held-out probe {probe}; dashed: the "
                         f"threshold of the deciding measure ({meta['criterion']}); red: the "
                         f"chosen scale ({how}, within the FLOPs budget); ring: the criterion's "
                         "pick where the budget moved it",
                 selection={"dataset": dataset, "baseline": meta["baseline"],
                            "criterion": meta["criterion"], "tau": meta["tau"],
                            "delta": meta["delta"], "k": meta["k"], "scales": meta["scales"],
                            "budget": meta["budget"]})


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


def _layer_figures(rep: _Report, dataset: str) -> None:
    """E7–E9: the figure families of the layer analyses, per probe (module docstring)."""
    import polars as pl

    from rra.report import charts
    from rra.report.frames import layer_dirs

    for probe in sorted({d.probe for d in layer_dirs(rep.results_dir) if d.dataset == dataset}):
        dirs = [d for d in layer_dirs(rep.results_dir)
                if d.dataset == dataset and d.probe == probe]
        ctx = {"prefix": f"{dataset}/layers-{probe}",
               "group": f"{dataset} · layer analyses (E7–E9) · probe {probe}",
               "sel": {"dataset": dataset, "probe": probe}}
        for analysis, fn in (("translation", _translation_figures),
                             ("patterns", _patterns_figures), ("margins", _margins_figures),
                             ("saliency", _saliency_figures),
                             ("fragmentation", _fragmentation_figures)):
            adirs = [d for d in dirs if d.analysis == analysis]
            if adirs:
                fn(rep, adirs, charts, pl, **ctx)


def _layer_frame(dirs: list, where=None):
    """The layer table of some directories with a ``variant`` label (model · attention ·
    augmentation) and only the columns a layer figure may vary in."""
    from rra.report import charts
    from rra.report.frames import read_layer_tables

    df = read_layer_tables(dirs, where)
    df = charts.add_variant(df, ("model", "attention", "augmentation"))
    return df.drop("distance", "backend", "hook_b", "pos_b", "scale_b", "k", "alpha",
                   "class_b", "recall_target_met")


def _inputs_of(dirs: list, models=None) -> list:
    from rra.report.frames import parse_run

    return [p for d in dirs if models is None or parse_run(d.run)["model"] in models
            for p in (d.manifest, d.table)]


def _translation_figures(rep, dirs, charts, pl, *, prefix, group, sel) -> None:
    df = _layer_frame(dirs)
    scales = df["scale_a"].drop_nulls().unique().to_list()
    scale = rep.opts["scale"] if rep.opts["scale"] in scales else "full"
    for model in sorted(df["model"].unique().to_list()):
        m = df.filter(pl.col("model") == model)
        m_sel = {**sel, "model": model, "scales": sorted(m["scale_a"].unique().to_list())}
        inputs = _inputs_of(dirs, [model])
        maps = m.filter((pl.col("measure") == "translation_cosine") & (pl.col("scale_a") == scale))
        if maps.height:
            side = int(maps["dx"].max())
            rep.emit(charts.translation_maps(maps.drop("radius", "quantile", "pca_k", "class"),
                                             title=f"Translation sensitivity (cosine), {model} "
                                                   f"at scale {scale}"),
                     f"{prefix}/translation-{model}", kind="layers", group=group,
                     inputs=inputs, title=f"Translation sensitivity maps: {model}",
                     caption=f"cos(h(x), h(x shifted by (dx, dy))) per hook (columns, forward "
                             f"order) at scale {scale}, mean over the probe and the seeds, "
                             f"shifts in [−{side}, {side}]² with black fill; rows: attention · "
                             "augmentation variant (E7)",
                     selection={**m_sel, "scale": scale, "measure": "translation_cosine"})
        radial = m.filter(pl.col("measure").str.ends_with("_radial"))
        if radial.height:
            radial = radial.with_columns(pl.col("measure").replace(
                {"translation_cosine_radial": "cosine",
                 "translation_rel_change_radial": "relative change"}))
            rep.emit(charts.radial_curves(radial.drop("dx", "dy", "quantile", "pca_k",
                                                      "class"),
                                          title=f"Radial translation profiles, {model}"),
                     f"{prefix}/translation-radial-{model}", kind="layers", group=group,
                     inputs=inputs, title=f"Radial translation profiles: {model}",
                     caption="Mean of each translation map over the shifts with "
                             "max(|dx|, |dy|) = r against r: cosine (top) and relative "
                             "Euclidean change ‖h(x) − h(x')‖ / ‖h(x)‖ (bottom), per hook "
                             "(columns); solid and dashed lines: the two pooled scales; mean "
                             "over seeds (E7)", selection=m_sel)
        summary = m.filter(pl.col("measure").is_in(list(LAYER_MEASURES["translation"])))
        if summary.height:
            summary = summary.with_columns(pl.col("measure").replace(LAYER_MEASURES["translation"]))
            rep.emit(charts.hook_curves(summary.drop("dx", "dy", "radius", "quantile", "pca_k",
                                                     "class"), color="variant",
                                        band=rep.opts["band"], row="scale_a",
                                        title=f"Translation sensitivity per hook, {model}"),
                     f"{prefix}/translation-summary-{model}", kind="layers", group=group,
                     inputs=inputs, title=f"Translation sensitivity per hook: {model}",
                     caption="Mean of the cosine and relative-change maps over every shift "
                             "but (0, 0), per hook, one row per pooled scale; line: mean over "
                             "seeds (E7)", selection={**m_sel, "band": rep.opts["band"]})


def _hook_measure_figures(rep, dirs, charts, pl, analysis, stem, title, caption, *, prefix,
                          group, sel) -> None:
    """One ``hook_curves`` figure per hook group of a layer table's per-hook measures."""
    from rra.report.frames import hook_groups

    names = LAYER_MEASURES[analysis]
    df = _layer_frame(dirs, pl.col("measure").is_in(list(names)))
    for models, part in hook_groups(df):
        part = part.with_columns(pl.col("measure").replace(names))
        label = "-".join(models)
        rep.emit(charts.hook_curves(part.drop("dx", "dy", "radius", "quantile", "pca_k",
                                              "class", "scale_a"), color="variant",
                                    band=rep.opts["band"], title=f"{title}, {', '.join(models)}"),
                 f"{prefix}/{stem}-{label}", kind="layers", group=group,
                 inputs=_inputs_of(dirs, models), title=f"{title}: {', '.join(models)}",
                 caption=caption + f"; line: mean over seeds, band: "
                         f"{'min–max' if rep.opts['band'] == 'minmax' else 'mean ± sd'}",
                 selection={**sel, "models": list(models), "band": rep.opts["band"]})


def _patterns_figures(rep, dirs, charts, pl, **ctx) -> None:
    _hook_measure_figures(
        rep, dirs, charts, pl, "patterns", "patterns", "ReLU patterns and trees",
        "Per ReLU hook (forward order): channel sparsity 1 − mean(on) with on = max over the "
        "map > 0, element sparsity (share of exact zeros), unique binary codes / n, class "
        "purity of the groups of equal codes, fidelity of a decision tree on the training "
        "subset's codes to the model's predictions on the probe, its depth and leaves; "
        "colour: model · attention · augmentation (with vs without BatchNorm and "
        "augmentation, E8)", **ctx)


def _fragmentation_figures(rep, dirs, charts, pl, **ctx) -> None:
    _hook_measure_figures(
        rep, dirs, charts, pl, "fragmentation", "fragmentation", "Fragmentation",
        "Mean number of 8-connected class regions on an R × R grid over the plane through "
        "three probe images (same class / three classes), in the input space (hook input) "
        "and in each hook's output space classified by the model after the hook (E9)", **ctx)


def _margins_figures(rep, dirs, charts, pl, *, prefix, group, sel) -> None:
    from rra.report.frames import hook_groups

    hidden = _layer_frame(dirs, pl.col("measure") == "hidden_margin")
    for models, part in hook_groups(hidden):
        rep.emit(charts.margin_boxes(part.drop("dx", "dy", "radius", "pca_k", "class",
                                               "scale_a", "measure"),
                                     title=f"Normalised hidden margins, {', '.join(models)}"),
                 f"{prefix}/margins-{'-'.join(models)}", kind="layers", group=group,
                 inputs=_inputs_of(dirs, models), title=f"Hidden margins: {', '.join(models)}",
                 caption="d̃ = (z_y − z_j) / ‖∇_h (z_y − z_j)‖ / sqrt(tr Cov h) per hook "
                         "(forward order) over the correctly classified probe images (j the "
                         "runner-up class): bar from the first to the third quartile, tick at "
                         "the median, each the mean over seeds (E9)",
                 selection={**sel, "models": list(models)})
    pca = _layer_frame(dirs, pl.col("measure") == "input_margin_mean")
    if pca.height:
        rep.emit(charts.margin_vs_k(pca.drop("dx", "dy", "radius", "quantile", "class",
                                             "hook_a", "pos_a", "scale_a", "measure"),
                                    title="DeepFool input margin vs PCA subspace"),
                 f"{prefix}/margins-pca", kind="layers", group=group, inputs=_inputs_of(dirs),
                 title="Input margin vs the number of PCA directions",
                 caption="Mean DeepFool margin ‖r‖ (normalised input space, ≤ 50 steps, "
                         "overshoot 0.02) over the correctly classified attacked probe images, "
                         "with every step confined to the top-k principal directions of the "
                         "training subset; the largest k is D (unconstrained); mean over seeds "
                         "(E9)",
                 selection={**sel, "pca_k": sorted(pca["pca_k"].unique().to_list())})


def _saliency_figures(rep, dirs, charts, pl, *, prefix, group, sel) -> None:
    import numpy as np

    from rra.layers.saliency import filter_grid
    from rra.report.frames import parse_run, saliency_maps_frame

    share = _layer_frame(dirs, pl.col("measure").str.starts_with("saliency_")
                         & pl.col("class").is_null())
    if share.height:
        share = share.with_columns(pl.col("measure").str.replace(r"^saliency_", ""))
        rep.emit(charts.variant_bars(share.drop("dx", "dy", "radius", "quantile", "pca_k",
                                                "class", "hook_a", "pos_a", "scale_a"),
                                     title="Saliency concentration"),
                 f"{prefix}/saliency-share", kind="layers", group=group,
                 inputs=_inputs_of(dirs), title="Saliency concentration per variant",
                 caption="Share of the saliency mass max_c |∂S/∂x| in the top 5 % of pixels, "
                         "mean over the probe images, for the true and the predicted class; "
                         "bar: mean over seeds, rule: min–max (E9)", selection=sel)
    arrays, files = saliency_maps_frame(dirs)
    runs = sorted(arrays, key=lambda r: (parse_run(r)["model"], parse_run(r)["attention"],
                                         parse_run(r)["augmentation"], parse_run(r)["seed"]))
    shown = {}  # one seed per variant: the smallest
    for r in runs:
        run = parse_run(r)
        shown.setdefault(f"{run['model']} · {run['attention']} · {run['augmentation']}", r)
    first = arrays[next(iter(shown.values()))]
    rows = first["rows"]
    if any(not np.array_equal(arrays[r]["rows"], rows) for r in shown.values()):
        raise ValueError(f"{prefix}: the saliency runs show different probe images; they must "
                         "share one probe and saliency.images")
    size = 2 * max(first["images"].shape[1], 28)
    tiles = []
    for i in range(rows.size):
        image = first["images"][i].astype(np.float64) / 255
        image = image[..., 0] if image.shape[-1] == 1 else image
        label = f"probe row {int(rows[i])} (class {int(first['labels'][i])})"
        tiles.append(dict(row=label, row_pos=i, column="image", column_pos=0,
                          url=charts.png_url(image, 2), text="the probe image"))
        for v, (variant, r) in enumerate(shown.items()):
            a = arrays[r]
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
    tiles = pl.DataFrame(tiles)
    rep.emit(charts.image_grid(tiles, size=size, title="Saliency maps",
                               subtitle=["|∂S_c/∂x| (max over channels), each map scaled to its "
                                         "maximum; white: most salient"]),
             f"{prefix}/saliency", kind="layers", group=group,
             inputs=[*files, *(d.manifest for d in dirs)],
             title="Saliency maps of the same probe images per variant",
             caption="Each row one probe image: the image, then per variant (model · attention "
                     "· augmentation, seed " + ", ".join(
                         f"{v}: {parse_run(r)['seed']}" for v, r in shown.items())
                     + ") the saliency max_c |∂S_c/∂x| of the true and of the predicted class "
                     "(Simonyan et al. 2013), scaled to each map's maximum (E9)",
             selection={**sel, "variants": list(shown), "rows": [int(x) for x in rows]})
    grids = {variant: filter_grid(arrays[r]["filters"], fill=0.5) for variant, r in shown.items()}
    tiles = [dict(row="first-layer filters", row_pos=0, column=variant, column_pos=v,
                  url=charts.png_url(grid, 8),
                  text=f"filters (out × in × kh × kw) {arrays[shown[variant]]['filters'].shape}")
             for v, (variant, grid) in enumerate(grids.items())]
    side = 8 * max(max(g.shape[:2]) for g in grids.values())
    rep.emit(charts.image_grid(pl.DataFrame(tiles), size=side, gap=24,
                               title="First-layer filters",
                               subtitle=["one tile per filter, grey between tiles"]),
             f"{prefix}/filters", kind="layers", group=group,
             inputs=[*files, *(d.manifest for d in dirs)],
             title="First-layer filters per variant",
             caption="The weights of each variant's first convolution, one tile per filter "
                     "(RGB for three input channels, else grey), each filter scaled from its "
                     "minimum (black) to its maximum (white) (E9)",
             selection={**sel, "variants": list(shown)})


def build_report(results_dir: PathLike, reports_dir: PathLike, *,
                 config: dict | None = None) -> list[FigureRecord]:
    """Build every standard figure that ``results_dir`` has inputs for, and the index page.

    Writes ``{reports_dir}/figures/.../{figure}.{html,png,svg}`` (a new folder, so figures of
    runs no longer in the results disappear), ``{reports_dir}/index.html``, ``index.json`` and
    ``metrics.json``. ``config``: the study config; its ``report`` block sets the options
    (:data:`DEFAULTS`) and its blocks are recorded with each figure. Returns the records.

    Atomic as a whole [ours]: everything is built in a temporary folder next to ``reports_dir``
    and swapped in only when complete (:func:`swap_in`); a failure leaves the previous report
    untouched and no temporary folder behind.
    """
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    report_options(config)  # bad options fail before anything is built
    reports_dir.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{reports_dir.name}.", suffix=".tmp",
                                dir=reports_dir.parent))
    try:
        records = _build_report(results_dir, new, config)
        (new / FIGURES).mkdir(exist_ok=True)  # no figures: the old ones go too
        swap_in(new, reports_dir, OUTPUTS)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return records


def swap_in(new: Path, reports_dir: Path, names: Sequence[str]) -> None:
    """Move ``new/{name}`` onto ``reports_dir/{name}`` for each name: a file by one atomic
    rename; a folder by renaming the old one away, the new one in, then deleting the old one
    (put back if the second rename fails). ``index.html`` goes last. [ours]"""
    reports_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = new / name, reports_dir / name
        if not src.exists():
            continue
        if not src.is_dir():
            os.replace(src, dst)
            continue
        old = None
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", suffix=".tmp", dir=reports_dir))
            os.replace(dst, old / name)
        try:
            os.replace(src, dst)
        except BaseException:
            if old is not None:
                os.replace(old / name, dst)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def _build_report(results_dir: Path, reports_dir: Path, config: dict | None) -> list[FigureRecord]:
    """The figures, metrics.json and the index page, written under ``reports_dir``."""
    from rra.report.frames import datasets, metric_dirs

    rep = _Report(results_dir, reports_dir, config)
    dirs = metric_dirs(results_dir)
    try:
        for dataset in datasets(results_dir):
            by_analysis: dict[tuple, list] = {}
            for d in dirs:
                if d.dataset == dataset:
                    by_analysis.setdefault(d.analysis, []).append(d)
            for key in sorted(by_analysis):
                _metric_figures(rep, by_analysis[key])
            _hyperparam_figures(rep, dataset, [d for d in dirs if d.dataset == dataset])
            _dataset_figures(rep, dataset)
            _stac_figures(rep, dataset)
            _layer_figures(rep, dataset)
    finally:
        rep.progress.close()
    write_metrics_json(results_dir, reports_dir / "metrics.json")
    build_index(rep.records, reports_dir / "index.html", title="rra report",
                intro=f"Figures built from {results_dir.name}/ "
                      f"({len(datasets(results_dir))} dataset(s)).", notes=rep.notes)
    return rep.records


def write_metrics_json(results_dir: PathLike, out_path: PathLike) -> dict:
    """The study's key numbers for ``dvc metrics``: ``{dataset: {run: {eval_acc, train_acc,
    params, epochs}}}`` from each dataset's ``accuracy.parquet`` (datasets without one are
    left out). Small and stable, so it is committed to git and diffed between commits."""
    import polars as pl

    from rra.io import write_json

    out: dict[str, dict] = {}
    for table in sorted(Path(results_dir).glob("*/accuracy.parquet")):
        df = pl.read_parquet(table).sort("run")
        out[table.parent.name] = {row["run"]: {k: row[k] for k in ("eval_acc", "train_acc", "params", "epochs")}
                                  for row in df.iter_rows(named=True)}
    write_json(out_path, out)
    return out
