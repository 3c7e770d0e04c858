"""``build_report``: the standard figures of the files the workflow lists. [ours]

The report reads exactly the files of its input list (:class:`rra.report.inputs.ReportInputs`:
the metric, kNN and layer manifests, train logs, study tables, STAC choices and the E2
guideline that the config's study made; never a search of the results folder) and draws the
figures below, one module per group: :mod:`rra.report.metric_figures` (per analysis),
:mod:`rra.report.study_figures` (per dataset), :mod:`rra.report.layer_figures` (layer
analyses), :mod:`rra.report.placement_figures` (held-out placement). Each family has a caption for ``snakemake --report`` in docs/report/figures.rst.

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
per dataset and probe of the representation dynamics ``{dataset}/{probe}/`` (E10):
  ``dynamics-{model}``         hook × kept-epoch heat map of NNTS to the final model, one row
                               per variant, beside the layer × epoch relative weight change
                               (l1, E6) of the same runs;
  ``dynamics-settling-{model}`` settling epoch per hook (first kept epoch from which NNTS to
                               the final model stays ≥ τ), one line per variant (with and
                               without augmentation), mean and band over seeds;
  ``knn-{probe}-{distance}``   Annoy recall@k and time against exact, when some graph used Annoy
                               (E2);
  ``hyperparams-{model}-{attention}-{augmentation}``
                               kNN purity, kNN-vote accuracy and NNTS to logits per hook against
                               probe, distance, backend, k and scale, one at a time, the others
                               at the reference setting, when a run of the variant has ≥ 2
                               analyses differing in probe, distance or backend (E2: drawn from
                               the ``panels`` table of :mod:`rra.metrics.hyperparams`);
  ``e2-guideline``             the E2 guideline table (also ``e2-guideline.csv``): per parameter
                               the mean over hooks of each measure's largest change across the
                               parameter's values; per backend setting recall@k, seconds per
                               graph and time relative to exact (its ``guideline`` table);
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
                               triplets (E9);
per dataset and held-out placement ``{dataset}/{heldout}-in-{reference}/{distance}/`` (E11,
:mod:`rra.report.placement_figures`):
  ``placement-{model}``        per hook: kNN-vote accuracy of the training probe (leave-one-out,
                               dashed) and of the held-out probe placed in its kNN model
                               (solid), their gap, the held-out purity and the agreement of
                               consecutive hooks' held-out neighbour sets; one line per variant,
                               mean and band over seeds, at the report's scale and k (else the
                               placement's smallest k).

The index ends with the "Measures" table: each registered measure's properties
(:func:`rra.metrics.measure_properties`). A figure whose inputs are not listed is skipped. Under each analysis's heading the index says which
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rra.io import PathLike, sha256_artifact, sha256_file
from rra.report.index import FigureRecord, build_index
from rra.report.inputs import ReportInputs

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
    "dynamics": ("dynamics", "training", "runs", "probe", "embed", "knn", "report"),
    "placement": ("probe", "embed", "knn", "experiments", "report"),
}


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


class Report:
    """Collects figures: saves each chart, hashes inputs (once per file), records config."""

    def __init__(self, inputs: ReportInputs, reports_dir: Path, config: dict | None):
        from tqdm.auto import tqdm

        self.inputs, self.reports_dir = inputs, reports_dir
        self.config = config
        self.opts = report_options(config)
        self.records: list[FigureRecord] = []
        self.notes: dict[str, str] = {}  # a line under a group's heading (the kNN backend)
        self._sha: dict[Path, str] = {}
        self.progress = tqdm(desc="report figures", unit="figure", disable=None)

    @property
    def band_text(self) -> str:
        """What the seed band of the curves shows."""
        return "min–max" if self.opts["band"] == "minmax" else "mean ± sd"

    def pick(self, values: Sequence[Any], name: str) -> Any:
        """The option ``name`` (``k``, ``alpha``) if among the computed ``values``, the smallest
        value when the option is None; an option that was not computed is an error."""
        wanted = self.opts[name]
        values = sorted(v for v in values if v is not None)
        if wanted is None:
            return values[0]
        if wanted not in values:
            raise ValueError(f"config report.{name} = {wanted!r} was not computed; "
                             f"available: {values}")
        return wanted

    def show_path(self, path: Path) -> str:
        """A file's path as the index shows it: from the results folder's name on."""
        results = self.inputs.results_dir
        try:
            return (Path(results.name) / path.relative_to(results)).as_posix()
        except ValueError:
            return path.as_posix()

    def hashes(self, paths: Iterable[Path]) -> dict[str, str]:
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
            config=config, inputs=self.hashes(inputs)))
        self.progress.update(1)


def build_report(inputs: ReportInputs | PathLike, reports_dir: PathLike, *,
                 config: dict | None = None) -> list[FigureRecord]:
    """Build every standard figure of ``inputs`` (a :class:`ReportInputs`, or the JSON list
    file the report rule writes) and the index page; no other file is read.

    Writes ``{reports_dir}/figures/.../{figure}.{html,png,svg}`` (a new folder, so figures of
    runs no longer listed disappear), ``{reports_dir}/index.html``, ``index.json`` and
    ``metrics.json``. ``config``: the study config; its ``report`` block sets the options
    (:data:`DEFAULTS`) and its blocks are recorded with each figure. Returns the records.

    Atomic as a whole [ours]: everything is built in a temporary folder next to ``reports_dir``
    and swapped in only when complete (:func:`swap_in`); a failure leaves the previous report
    untouched and no temporary folder behind.
    """
    if not isinstance(inputs, ReportInputs):
        inputs = ReportInputs.read(inputs)
    missing = [p for paths in inputs.files.values() for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"report inputs missing: {[str(p) for p in missing[:5]]}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    reports_dir = Path(reports_dir)
    report_options(config)  # bad options fail before anything is built
    reports_dir.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{reports_dir.name}.", suffix=".tmp",
                                dir=reports_dir.parent))
    try:
        records = _build_report(inputs, new, config)
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


def _dataset_figures(rep: Report, dataset: str) -> None:
    """Every figure of one dataset, in the index's order: per analysis, E2, training and kNN
    backends, STAC, layer analyses."""
    from rra.metrics.folders import MetricFolder
    from rra.report import study_figures as study
    from rra.report.dynamics_figures import dynamics_figures
    from rra.report.layer_figures import layer_figures
    from rra.report.metric_figures import analysis_figures
    from rra.report.placement_figures import placement_figures

    by_analysis: dict[tuple, list] = {}
    for folder in map(MetricFolder.of, rep.inputs.of_dataset("metrics", dataset)):
        by_analysis.setdefault(folder.analysis, []).append(folder)
    for key in sorted(by_analysis):
        analysis_figures(rep, by_analysis[key])
    study.e2_figures(rep, dataset)
    study.accuracy_figure(rep, dataset)
    study.weight_change_figures(rep, dataset)
    dynamics_figures(rep, dataset)
    study.knn_recall_figures(rep, dataset)
    study.stac_figures(rep, dataset)
    layer_figures(rep, dataset)
    placement_figures(rep, dataset)


def _build_report(inputs: ReportInputs, reports_dir: Path,
                  config: dict | None) -> list[FigureRecord]:
    """The figures, metrics.json and the index page, written under ``reports_dir``."""
    rep = Report(inputs, reports_dir, config)
    try:
        for dataset in inputs.datasets():
            _dataset_figures(rep, dataset)
    finally:
        rep.progress.close()
    from rra.metrics import measure_properties

    write_metrics_json(inputs["accuracy"], reports_dir / "metrics.json")
    build_index(rep.records, reports_dir / "index.html", title="rra report",
                intro=f"Figures built from {inputs.results_dir.name}/ "
                      f"({len(inputs.datasets())} dataset(s)).", notes=rep.notes,
                measures=measure_properties().to_dicts())
    return rep.records


def write_metrics_json(tables: Iterable[PathLike], out_path: PathLike) -> dict:
    """The study's key numbers for ``dvc metrics``: ``{dataset: {run: {eval_acc, train_acc,
    params, epochs}}}`` from each dataset's ``accuracy.parquet`` among ``tables`` (datasets
    without one are left out). Small and stable, so it is committed to git and diffed between
    commits."""
    import polars as pl

    from rra.io import write_json

    out: dict[str, dict] = {}
    for table in sorted(Path(t) for t in tables if Path(t).name == "accuracy.parquet"):
        df = pl.read_parquet(table).sort("run")
        out[table.parent.name] = {row["run"]: {k: row[k] for k in ("eval_acc", "train_acc",
                                                                   "params", "epochs")}
                                  for row in df.iter_rows(named=True)}
    write_json(out_path, out)
    return out
