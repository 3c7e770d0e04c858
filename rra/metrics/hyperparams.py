"""E2: how the RRA summary measures move with the analysis settings, and a guideline table. [ours]

The stage :func:`e2_guideline` (rule ``e2_guideline``, ``rra e2-guideline``) reads the metric
folders of every run analysed under two or more settings and writes, under
``{results}/{dataset}/e2_guideline/``, two tidy tables (Parquet and CSV) and a manifest:
``panels`` (:data:`PANEL_COLUMNS` per model variant: the small multiples of the report's
``hyperparams-{variant}`` figures) and ``guideline`` (:data:`GUIDELINE_COLUMNS`: the report's
``e2-guideline`` table). The report only draws them.

An *analysis* of a run is one metric folder ``{run}/metrics/{probe}/{distance}-{backend}``;
its tables hold several k and pooled scales. The parameters of E2 (:data:`PARAMETERS`):

- ``probe``: the probe set ``{split}-n{n}-s{seed}`` (n images per class);
- ``distance``: ``euclidean`` or ``cosine``;
- ``backend``: the kNN setting ``exact``, ``auto``, ``annoy`` or ``annoy-t{n_trees}-s{search_k}``;
- ``k``: the neighbourhood size (column ``k`` of the tables);
- ``scale``: the pooled scale of the embeddings (column ``scale_a``).

Reference setting (:func:`reference_setting`): the reference analysis (probe, distance,
backend) that the config names (:func:`rra.config.e2_settings`: the one analysed for the most
runs, ties to the config's top-level probe and first kNN setting, then to name order), k =
``report.k`` (default: the smallest k computed in the reference analysis) and scale =
``report.scale`` (default ``full``).

One parameter varies at a time, the others stay at the reference (:func:`panel_frame`):

- probe, distance, backend: the analyses of a run that agree with the reference on the other two
  (at the reference k and scale). A run (seed) takes part when it has ≥ 2 values; the values
  compared are those every taking-part seed has, so each value averages the same seeds;
- k and scale: the reference analysis of the seeds that take part in any of the above (for the
  scale, at each hook the scales it was embedded at).

Summary measures per hook (:data:`SUMMARY_MEASURES`): kNN class purity, kNN-vote accuracy, and
NNTS to the logits (the last hook, at the same scale; :func:`nnts_to_logits`). The scale panel
has no NNTS to the logits: NNTS compares two hooks at one scale, and the logits exist at
``full`` only. Every row keeps its source row's ``lo``, ``hi`` (bootstrap interval over probe
rows), ``null`` (chance level) and ``p`` (:data:`UNCERTAINTY`, methods.md §4), null where the
table has none (``metrics.bootstrap.B`` = 0, tables written before the columns existed).

Guideline (:func:`guideline`): with x̄_h(v) the mean over seeds of a measure at hook h and
parameter value v,

    change_h       = max_v x̄_h(v) − min_v x̄_h(v)    (the largest change between two values),
    max_abs_change = mean of change_h over the hooks with ≥ 2 values.

Backend cost (:func:`backend_cost`): per backend setting, recall@k against exact (mean over
graphs, i.e. hooks × scales, and seeds; from the knn tables), seconds per graph (mean of the kNN
manifests' ``entries[].seconds``) and ``ratio_to_exact`` = Σ seconds / Σ seconds of the exact
setting over the graphs both have (the exact setting: ``exact``, else the first setting, in
order, whose graphs were all built exact, e.g. ``auto`` on small embeddings).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import polars as pl

from rra.io import PathLike, provenance, read_json, sha256_artifact, write_json, write_table
from rra.metrics.folders import MetricFolder, read_tables
from rra.runs import backend_order_key, probe_order_key, scale_order

PARAMETERS = ("probe", "distance", "backend", "k", "scale")
ANALYSIS_PARAMETERS = ("probe", "distance", "backend")
SUMMARY_MEASURES = ("knn_purity", "knn_vote_accuracy", "nnts_to_logits")
VARIANT = ("dataset", "model", "attention", "augmentation")
#: the metric tables' uncertainty columns, carried from the source rows (methods.md §4)
UNCERTAINTY = ("lo", "hi", "null", "p")
PANEL_SCHEMA = {"parameter": pl.Utf8, "setting": pl.Utf8, "setting_pos": pl.Int64,
                "reference": pl.Boolean, "seed": pl.Int64, "measure": pl.Utf8,
                "hook_a": pl.Utf8, "pos_a": pl.Int64, "value": pl.Float64,
                **{c: pl.Float64 for c in UNCERTAINTY}}
PANEL_COLUMNS = list(PANEL_SCHEMA)
GUIDELINE_COLUMNS = [*VARIANT, "parameter", "values", "reference", "measure", "statistic",
                     "setting", "value", "n_hooks", "n_seeds"]
GUIDELINE_SCHEMA = {c: pl.Utf8 for c in GUIDELINE_COLUMNS} | {
    "value": pl.Float64, "n_hooks": pl.Int64, "n_seeds": pl.Int64}
#: the stage's tables: file stem → columns
TABLES = {"panels": [*VARIANT, *PANEL_COLUMNS], "guideline": GUIDELINE_COLUMNS}
RUN_IDENTITY = ["dataset", "model", "attention", "augmentation", "seed", "probe", "distance",
                "backend"]
SUMMARY_COLUMNS = [*RUN_IDENTITY, "measure", "hook_a", "pos_a", "scale_a", "k", "value",
                   *UNCERTAINTY]


@dataclass(frozen=True)
class Reference:
    """The study's reference RRA setting; every E2 panel varies one field of it."""

    probe: str
    distance: str
    backend: str
    k: int
    scale: str

    def value(self, parameter: str) -> str:
        return str(getattr(self, parameter))

    def as_dict(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in PARAMETERS}

    def text(self) -> str:
        return (f"probe {self.probe}, {self.distance} distance, {self.backend} backend, "
                f"k = {self.k}, scale {self.scale}")


def reference_setting(summary: pl.DataFrame, analysis: Mapping[str, str], *,
                      k: int | None = None, scale: str = "full") -> Reference:
    """The reference setting: the reference ``analysis`` ({probe, distance, backend}), ``k``
    (default: the smallest k of that analysis's rows in ``summary``, or of all its rows when it
    has none of them) and ``scale``. A ``k`` that was not computed is an error."""
    probe, distance, backend = (analysis[p] for p in ANALYSIS_PARAMETERS)
    of_ref = summary.filter((pl.col("probe") == probe) & (pl.col("distance") == distance)
                            & (pl.col("backend") == backend))
    ks = sorted(set((of_ref if of_ref.height else summary)["k"].drop_nulls().to_list()))
    if not ks:
        raise ValueError("reference_setting: the summary frame has no k values")
    if k is None:
        k = ks[0]
    elif k not in ks:
        raise ValueError(f"config report.k = {k!r} was not computed in the reference analysis "
                         f"{probe}/{distance}-{backend}; available: {ks}")
    return Reference(probe, distance, backend, int(k), str(scale))


# ---------------------------------------------------------------------------------------------
# Reading the metric folders

def _with_setting(df: pl.DataFrame, folder: MetricFolder) -> pl.DataFrame:
    """The folder's own probe, distance and backend setting (e.g. ``annoy-t10-sauto``) in the
    columns of those names, whatever the table wrote there."""
    return df.with_columns(probe=pl.lit(folder.probe), distance=pl.lit(folder.distance),
                           backend=pl.lit(folder.backend))


def with_uncertainty(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with the :data:`UNCERTAINTY` columns it lacks added as nulls (Float64)."""
    return df.with_columns(pl.lit(None, pl.Float64).alias(c)
                           for c in UNCERTAINTY if c not in df.columns)


def nnts_to_logits(nnts: pl.DataFrame) -> pl.DataFrame:
    """Rows NNTS(hook, last hook) per run, scale and k, as measure ``nnts_to_logits``.

    The last hook is the one of largest forward position at that scale (the logits at
    ``full``). Output columns: those of the nnts table (``hook_b``/``pos_b`` = the last hook),
    the source rows' ``lo``, ``hi``, ``null`` and ``p`` included (null columns where the frame
    lacks them). [ours: summary of the NNTS matrix's last column]
    """
    group = [c for c in [*RUN_IDENTITY, "scale_a", "k"] if c in nnts.columns]
    df = with_uncertainty(nnts).filter(pl.col("measure") == "nnts")
    return (df.filter(pl.col("pos_b") == pl.col("pos_b").max().over(group))
              .with_columns(measure=pl.lit("nnts_to_logits")))


def summary_frame(folders: Sequence[MetricFolder]) -> pl.DataFrame:
    """The per-hook summary measures of every folder, at every scale and k.

    Measures: ``knn_purity`` and ``knn_vote_accuracy`` (class_response table) and
    ``nnts_to_logits`` (:func:`nnts_to_logits` of the nnts table). probe/distance/backend are
    the folder's setting (:func:`_with_setting`). Columns: :data:`SUMMARY_COLUMNS`, with the
    source rows' ``lo``, ``hi``, ``null``, ``p`` (null where a table lacks them).
    """
    frames = []
    for f in folders:
        response = read_tables([f], "class_response",
                               pl.col("measure").is_in(["knn_purity", "knn_vote_accuracy"]))
        nnts = _with_setting(read_tables([f], "nnts", pl.col("measure") == "nnts"), f)
        frames += [with_uncertainty(_with_setting(response, f)).select(SUMMARY_COLUMNS),
                   nnts_to_logits(nnts).select(SUMMARY_COLUMNS)]
    if not frames:
        return with_uncertainty(read_tables([], "nnts")).select(SUMMARY_COLUMNS)
    return pl.concat(frames, how="vertical")


def graph_seconds(manifest: PathLike) -> pl.DataFrame:
    """``hook_a``, ``scale_a`` and ``seconds`` (the wall time of the whole graph) of every
    graph of a kNN manifest."""
    entries = read_json(manifest).get("entries", [])
    return pl.DataFrame({"hook_a": [e["hook"] for e in entries],
                         "scale_a": [str(e["scale"]) for e in entries],
                         "seconds": [float(e["seconds"]) for e in entries]},
                        schema={"hook_a": pl.Utf8, "scale_a": pl.Utf8, "seconds": pl.Float64})


def knn_cost_frame(folders: Sequence[MetricFolder]) -> pl.DataFrame:
    """recall@k and seconds of every kNN graph behind the given metric folders.

    recall: the ``knn_recall`` rows of each folder's knn table (against exact on the kNN
    manifest's sample; 1 for graphs built exact); seconds: ``entries[].seconds`` of the kNN
    manifest (null when the manifest is gone). Columns: run identity, probe, distance, backend
    (the folder's setting), backend_used, hook_a, pos_a, scale_a, recall, seconds. Folders
    without a knn table are skipped.
    """
    keys = [*RUN_IDENTITY, "hook_a", "scale_a"]
    frames = []
    for f in folders:
        if not f.table("knn").is_file():
            continue
        rec = _with_setting(read_tables([f], "knn", pl.col("measure") == "knn_recall")
                            .rename({"backend": "backend_used"}), f)
        rec = rec.select(*keys, "backend_used", "pos_a", recall="value")
        if f.knn_manifest.is_file():
            rec = rec.join(graph_seconds(f.knn_manifest), on=["hook_a", "scale_a"], how="left")
        else:
            rec = rec.with_columns(seconds=pl.lit(None, dtype=pl.Float64))
        frames.append(rec)
    schema = {**{c: pl.Utf8 for c in keys}, "seed": pl.Int64, "backend_used": pl.Utf8,
              "pos_a": pl.Int64, "recall": pl.Float64, "seconds": pl.Float64}
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)


# ---------------------------------------------------------------------------------------------
# Order of parameter values

def value_order(parameter: str, values: Iterable[Any]) -> list[str]:
    """Values of a parameter as strings in plotting order: probes by split, n and seed;
    distances by name; backends exact, auto, annoy, then ``annoy-t…-s…`` by n_trees; k
    numerically; scales 1, 2, 4, …, full."""
    names = sorted({str(v) for v in values})
    if parameter == "probe":
        return sorted(names, key=probe_order_key)
    if parameter == "backend":
        return sorted(names, key=backend_order_key)
    if parameter == "k":
        return sorted(names, key=int)
    if parameter == "scale":
        return scale_order(names)
    if parameter == "distance":
        return names
    raise ValueError(f"unknown E2 parameter {parameter!r}; known: {list(PARAMETERS)}")


# ---------------------------------------------------------------------------------------------
# Panels and guideline

def _panel(rows: pl.DataFrame, parameter: str, column: str, values: list[str],
           ref: Reference) -> pl.DataFrame:
    pos = {v: i for i, v in enumerate(values)}
    rows = with_uncertainty(rows).with_columns(setting=pl.col(column).cast(pl.Utf8))
    rows = rows.filter(pl.col("setting").is_in(values))
    return rows.with_columns(
        parameter=pl.lit(parameter), setting_pos=pl.col("setting").replace_strict(pos),
        reference=pl.col("setting") == ref.value(parameter)).select(PANEL_COLUMNS)


def _common_values(rows: pl.DataFrame, column: str) -> tuple[list[int], set[str]]:
    """(seeds with ≥ 2 values of ``column``, the values all those seeds have)."""
    per_seed = rows.group_by("seed").agg(pl.col(column).cast(pl.Utf8).unique())
    sets = {r["seed"]: set(r[column]) for r in per_seed.iter_rows(named=True)}
    multi = {s: v for s, v in sets.items() if len(v) >= 2}
    return sorted(multi), set.intersection(*multi.values()) if multi else set()


def _analysis_panels(at_ref: pl.DataFrame, ref: Reference, what: str
                     ) -> tuple[list[pl.DataFrame], set[int]]:
    """The probe, distance and backend panels, and the seeds that take part in any."""
    parts, seeds_any = [], set()
    for p in ANALYSIS_PARAMETERS:
        others = [pl.col(q) == ref.value(q) for q in ANALYSIS_PARAMETERS if q != p]
        rows = at_ref.filter(pl.all_horizontal(others))
        seeds, common = _common_values(rows, p)
        if not seeds:
            continue
        if len(common) < 2:
            warnings.warn(f"{what}: the seeds {seeds} were analysed under different {p} values "
                          f"with no two values in common; {p} panel skipped", stacklevel=3)
            continue
        seeds_any |= set(seeds)
        parts.append(_panel(rows.filter(pl.col("seed").is_in(seeds)), p, p,
                            value_order(p, common), ref))
    return parts, seeds_any


def panel_frame(summary: pl.DataFrame, ref: Reference, *, what: str = "E2") -> pl.DataFrame:
    """The E2 small-multiple rows of one model variant (see the module docstring).

    ``summary``: :func:`summary_frame` rows of one (dataset, model, attention, augmentation).
    Returns :data:`PANEL_COLUMNS` rows (one per parameter, value, seed, measure, hook; ``lo``,
    ``hi``, ``null``, ``p`` those of the source row, null where ``summary`` lacks them), empty
    when no run of the variant was analysed under ≥ 2 values of probe, distance or backend.
    ``what`` names the variant in warnings.
    """
    at_ref = summary.filter((pl.col("k") == ref.k) & (pl.col("scale_a") == ref.scale))
    parts, seeds_any = _analysis_panels(at_ref, ref, what)
    if not parts:
        return pl.DataFrame(schema=PANEL_SCHEMA)
    of_ref = summary.filter(pl.all_horizontal([pl.col(q) == ref.value(q)
                                               for q in ANALYSIS_PARAMETERS])
                            & pl.col("seed").is_in(sorted(seeds_any)))
    across_scales = of_ref.filter((pl.col("k") == ref.k)
                                  & (pl.col("measure") != "nnts_to_logits"))
    for p, column, rows in (("k", "k", of_ref.filter(pl.col("scale_a") == ref.scale)),
                            ("scale", "scale_a", across_scales)):
        seeds, common = _common_values(rows, column)
        if len(common) >= 2:
            parts.append(_panel(rows.filter(pl.col("seed").is_in(seeds)), p, column,
                                value_order(p, common), ref))
    return pl.concat(parts, how="vertical").sort("parameter", "setting_pos", "measure",
                                                 "pos_a", "seed")


def panel_seeds(panel: pl.DataFrame, parameter: str) -> list[int]:
    return sorted(panel.filter(pl.col("parameter") == parameter)["seed"].unique().to_list())


def panel_values(panel: pl.DataFrame, parameter: str) -> list[str]:
    rows = panel.filter(pl.col("parameter") == parameter).sort("setting_pos")
    return rows["setting"].unique(maintain_order=True).to_list()


def guideline(panel: pl.DataFrame, ref: Reference) -> pl.DataFrame:
    """Per parameter and measure, ``max_abs_change`` (module docstring), with the values
    compared, the reference value, n_hooks (hooks averaged over) and n_seeds.

    Columns: parameter, values (``", "``-joined, in order), reference, measure, statistic
    (``max_abs_change``), setting (null), value, n_hooks, n_seeds. Rows in
    :data:`PARAMETERS` then :data:`SUMMARY_MEASURES` order.

    A derived decision: it compares the values (means over seeds) only and ignores the panel's
    intervals and chance levels (``lo``, ``hi``, ``null``, ``p``), which the panels figure draws.
    """
    means = panel.group_by("parameter", "setting", "measure", "hook_a").agg(
        mean=pl.col("value").mean())
    per_hook = (means.group_by("parameter", "measure", "hook_a")
                .agg(change=pl.col("mean").max() - pl.col("mean").min(), n_values=pl.len())
                .filter(pl.col("n_values") >= 2))
    out = per_hook.group_by("parameter", "measure").agg(
        value=pl.col("change").mean(), n_hooks=pl.len())
    rows = []
    for r in out.iter_rows(named=True):
        p = r["parameter"]
        rows.append({"parameter": p, "values": ", ".join(panel_values(panel, p)),
                     "reference": ref.value(p), "measure": r["measure"],
                     "statistic": "max_abs_change", "setting": None, "value": r["value"],
                     "n_hooks": r["n_hooks"], "n_seeds": len(panel_seeds(panel, p))})
    schema = {c: GUIDELINE_SCHEMA[c] for c in GUIDELINE_COLUMNS[len(VARIANT):]}
    df = pl.DataFrame(rows, schema=schema)
    order = {f"{p}/{m}": i for i, (p, m) in enumerate(
        (p, m) for p in PARAMETERS for m in SUMMARY_MEASURES)}
    return df.sort(pl.concat_str("parameter", pl.lit("/"), "measure").replace_strict(
        order, default=len(order)), "measure")


def _exact_setting(cost: pl.DataFrame, values: Sequence[str]) -> str | None:
    """``exact`` when compared, else the first setting whose graphs were all built exact."""
    return next((v for v in values if v == "exact"), None) or next(
        (v for v in values
         if (c := cost.filter(pl.col("backend") == v)).height
         and (c["backend_used"] == "exact").all()), None)


def backend_cost(cost: pl.DataFrame, values: Sequence[str], ref: Reference) -> pl.DataFrame:
    """recall@k and time of each backend setting in ``values`` (module docstring).

    ``cost``: :func:`knn_cost_frame` rows of the backend panel's seeds at the reference probe
    and distance. Rows (same columns as :func:`guideline`, setting = the backend): measure
    ``knn_recall`` / statistic ``mean``; ``seconds_per_graph`` / ``mean``;
    ``seconds_per_graph`` / ``ratio_to_exact`` (null without an exact setting).
    """
    cost = cost.filter(pl.col("backend").is_in(list(values)))
    keys = ["seed", "hook_a", "scale_a"]
    exact = _exact_setting(cost, values)
    base = (cost.filter(pl.col("backend") == exact).select(*keys, base="seconds")
            if exact is not None else None)
    rows = []
    for v in values:
        c = cost.filter(pl.col("backend") == v)
        if c.height == 0:
            continue
        common = {"parameter": "backend", "values": ", ".join(values), "reference": ref.backend,
                  "setting": v, "n_hooks": c["hook_a"].n_unique(),
                  "n_seeds": c["seed"].n_unique()}
        ratio = None
        if base is not None:
            m = c.join(base, on=keys, how="inner").drop_nulls(["seconds", "base"])
            if m.height and m["base"].sum() > 0:
                ratio = m["seconds"].sum() / m["base"].sum()
        rows += [{**common, "measure": "knn_recall", "statistic": "mean",
                  "value": c["recall"].mean()},
                 {**common, "measure": "seconds_per_graph", "statistic": "mean",
                  "value": c["seconds"].mean()},
                 {**common, "measure": "seconds_per_graph", "statistic": "ratio_to_exact",
                  "value": ratio}]
    schema = {c: GUIDELINE_SCHEMA[c] for c in GUIDELINE_COLUMNS[len(VARIANT):]}
    return pl.DataFrame(rows, schema=schema)


# ---------------------------------------------------------------------------------------------
# The stage

def analysed_twice(folders: Sequence[MetricFolder]) -> list[MetricFolder]:
    """The folders of the runs with two or more of them (the runs E2 compares)."""
    per_run = Counter((f.dataset, f.run) for f in folders)
    return [f for f in folders if per_run[(f.dataset, f.run)] >= 2]


def variant_tables(summary: pl.DataFrame, folders: Sequence[MetricFolder], ref: Reference
                   ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The panels and guideline rows of one model variant (``folders``: its runs' folders), both
    with the variant's columns :data:`VARIANT`; empty frames when it has no panel."""
    first = folders[0]
    model, attention, augmentation = first.run.variant
    ident = dict(dataset=pl.lit(first.dataset), model=pl.lit(model),
                 attention=pl.lit(attention), augmentation=pl.lit(augmentation))
    panel = panel_frame(summary.filter((pl.col("dataset") == first.dataset)
                                       & (pl.col("model") == model)
                                       & (pl.col("attention") == attention)
                                       & (pl.col("augmentation") == augmentation)),
                        ref, what=f"{first.dataset} {model}-{attention}-{augmentation}")
    if panel.height == 0:
        return (pl.DataFrame(schema=PANEL_SCHEMA).with_columns(**ident).select(TABLES["panels"]),
                pl.DataFrame(schema=GUIDELINE_SCHEMA).select(GUIDELINE_COLUMNS))
    rows = [guideline(panel, ref)]
    if "backend" in set(panel["parameter"]):
        values, seeds = panel_values(panel, "backend"), panel_seeds(panel, "backend")
        timed = [f for f in folders if f.run.seed in seeds and f.probe == ref.probe
                 and f.distance == ref.distance and f.backend in values]
        rows.append(backend_cost(knn_cost_frame(timed), values, ref))
    return (panel.with_columns(**ident).select(TABLES["panels"]),
            pl.concat(rows, how="vertical").with_columns(**ident).select(GUIDELINE_COLUMNS))


def guideline_tables(folders: Sequence[MetricFolder], reference: Mapping[str, str], *,
                     k: int | None = None, scale: str = "full"
                     ) -> tuple[dict[str, pl.DataFrame], Reference | None]:
    """The stage's tables (:data:`TABLES`) from some metric folders, and the reference setting
    (None when no run has two analyses with summary rows: the tables are empty)."""
    several = analysed_twice(sorted(folders, key=lambda f: f.path))
    summary = summary_frame(several)
    panels = [pl.DataFrame(schema=PANEL_SCHEMA | {c: pl.Utf8 for c in VARIANT})
              .select(TABLES["panels"])]
    guidelines = [pl.DataFrame(schema=GUIDELINE_SCHEMA).select(GUIDELINE_COLUMNS)]
    ref = None
    if summary.height:
        ref = reference_setting(summary, reference, k=k, scale=scale)
        for _, part in groupby(sorted(several, key=lambda f: (f.dataset, f.run.variant)),
                               key=lambda f: (f.dataset, f.run.variant)):
            panel, rows = variant_tables(summary, list(part), ref)
            panels.append(panel)
            guidelines.append(rows)
    return {"panels": pl.concat(panels, how="vertical"),
            "guideline": pl.concat(guidelines, how="vertical")}, ref


def e2_guideline(metric_manifests: Iterable[PathLike], out_dir: PathLike, *,
                 reference: Mapping[str, str], k: int | None = None,
                 scale: str = "full") -> dict[str, Any]:
    """The E2 stage: read the metric folders of ``metric_manifests`` (those of runs with a single
    analysis are left out), write ``panels`` and ``guideline`` (:data:`TABLES`, Parquet and CSV)
    and, last, ``manifest.json`` under ``out_dir``; return the manifest.

    ``reference``: the reference analysis ``{probe, distance, backend}``; ``k`` and ``scale``:
    the reference k (None: the smallest computed) and scale (:func:`reference_setting`).
    """
    folders = [MetricFolder.of(p) for p in metric_manifests]
    tables, ref = guideline_tables(folders, reference, k=k, scale=scale)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: write_table(df, out / name) for name, df in tables.items()}
    read = analysed_twice(folders)
    inputs = [f.manifest for f in read] + [f.knn_manifest for f in read
                                           if f.knn_manifest.is_file()]
    manifest = dict(
        tables=written, reference=ref.as_dict() if ref else None,
        inputs={p.as_posix(): sha256_artifact(p) for p in sorted(inputs)},
        **provenance(config={"reference": dict(reference), "k": k, "scale": scale}))
    write_json(out / "manifest.json", manifest)
    return manifest
