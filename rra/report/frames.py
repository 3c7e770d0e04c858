"""Tidy polars frames for the report, read from the files the workflow lists. [ours]

The report reads exactly the files of its input list (:class:`rra.report.inputs.ReportInputs`),
named as in docs/design.md ("Artifacts"):

- metric folders:  ``{results}/{dataset}/{run}/metrics/{probe}/{distance}-{backend}/manifest.json``
  (:class:`rra.metrics.folders.MetricFolder`, :func:`rra.metrics.folders.read_tables`);
- kNN manifests:   ``{results}/{dataset}/{run}/knn/{probe}/{distance}-{backend}/manifest.json``
  (:func:`knn_graph_frame`);
- layer folders:   ``{results}/{dataset}/{run}/layers/{probe}/{analysis}/manifest.json``
  (:class:`LayerDir`);
- training logs:   ``{results}/{dataset}/{run}/train_log.json`` (:func:`weight_change_frame`);
- study tables:    ``{results}/{dataset}/accuracy.parquet`` and ``cost.parquet``
  (:func:`accuracy_frame`, :func:`accuracy_cost_frame`), ``stac_scales/{baseline}.json``
  (:func:`stac_scales_frame`) and the E2 guideline's ``e2_guideline/manifest.json``
  (:func:`e2_guideline_frames`).

Run, probe and kNN setting names are parsed by :mod:`rra.runs` into the columns the tables carry.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rra.io import PathLike, read_json
from rra.metrics.folders import RunFolder
from rra.runs import KnnSetting, Run


def stage_last_hooks(hooks: Sequence[str]) -> list[str]:
    """The last hook of each stage, in forward order; a stage is the hook name's first dotted
    component (``layer2.0``, ``layer2.1`` → ``layer2``; ``stem``, ``fc`` and LeNet's hooks are
    stages of their own). [ours: matches ``model.stages`` of the ResNets]"""
    last: dict[str, str] = {}
    for hook in hooks:
        last[hook.split(".")[0]] = hook
    return list(last.values())


# ---------------------------------------------------------------------------------------------
# Training logs: relative weight change and accuracy

def _layer_order(log: dict, run_dir: Path, cache: dict[str, list[str]]) -> list[str] | None:
    """Forward (module) order of the logged layers: the log's own ``weight_change_layers``
    list when present, else the module order of the model rebuilt from ``metrics.json``."""
    if isinstance(log.get("weight_change_layers"), list):
        return [str(x) for x in log["weight_change_layers"]]
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return None
    model_args = read_json(metrics_path).get("model_args")
    if not isinstance(model_args, dict):
        return None
    key = json.dumps(model_args, sort_keys=True)
    if key not in cache:
        try:
            from rra.train.checkpoint import build_from_args
            from rra.train.weight_change import tracked_weights

            cache[key] = list(tracked_weights(build_from_args(model_args)))
        except (ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{metrics_path}: cannot rebuild the model for the layer order ({err})",
                          stacklevel=2)
            return None
    return cache[key]


def weight_change_frame(files: Iterable[PathLike]) -> pl.DataFrame:
    """Relative weight change of the runs of some train logs (``train_log.json``) as a tidy
    frame.

    Columns: dataset, model, attention, augmentation, seed, measure (``weight_change_l1`` or
    ``weight_change_elementwise``), layer, pos (the layer's forward/module position), epoch,
    value.
    """
    rows: list[dict[str, Any]] = []
    cache: dict[str, list[str]] = {}
    for path in map(Path, files):
        run = Run.parse(path.parent.name)
        log = read_json(path)
        epochs = log.get("epochs")
        if not isinstance(epochs, list):
            raise ValueError(f"{path}: expected a list under 'epochs'")
        logged = list(dict.fromkeys(l for e in epochs for l in e.get("weight_change", {})))
        order = _layer_order(log, path.parent, cache)
        if order is None or set(logged) - set(order):
            order = sorted(logged)
        pos = {layer: i for i, layer in enumerate(order)}
        ident = {"dataset": path.parent.parent.name, **asdict(run)}
        for e in epochs:
            for layer, change in e.get("weight_change", {}).items():
                for variant in ("l1", "elementwise"):
                    if variant not in change:
                        raise ValueError(f"{path}: epoch {e.get('epoch')} layer {layer!r} lacks "
                                         f"{variant!r}")
                    rows.append({**ident, "measure": f"weight_change_{variant}", "layer": layer,
                                 "pos": pos[layer], "epoch": int(e["epoch"]),
                                 "value": float("nan") if change[variant] is None
                                 else float(change[variant])})
    schema = {"dataset": pl.Utf8, "model": pl.Utf8, "attention": pl.Utf8,
              "augmentation": pl.Utf8, "seed": pl.Int64, "measure": pl.Utf8, "layer": pl.Utf8,
              "pos": pl.Int64, "epoch": pl.Int64, "value": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


ACCURACY_REQUIRED = ("model", "attention", "augmentation", "seed", "eval_acc")


def accuracy_frame(files: Sequence[PathLike]) -> pl.DataFrame:
    """Final accuracy per run: columns model, attention, augmentation, seed, eval_acc and the
    accuracy's interval and chance level (``rra.train.summary.CHANCE_COLUMNS``; null where a
    table predates them).

    Reads ``accuracy.parquet`` files as they are, or ``metrics.json`` files (identity from the
    run directory name; interval and chance level computed as the summary does).
    """
    from rra.train.summary import CHANCE_COLUMNS, accuracy_chance

    frames = []
    for path in map(Path, files):
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
        else:
            run = Run.parse(path.parent.name)
            metrics = read_json(path)
            if "eval_acc" not in metrics:
                raise ValueError(f"{path}: expected an 'eval_acc' key")
            chance = accuracy_chance(metrics) if "n_eval" in metrics else {}
            df = pl.DataFrame([{**asdict(run), "eval_acc": float(metrics["eval_acc"]), **chance}])
        missing = [c for c in ACCURACY_REQUIRED if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: accuracy table lacks column(s) {missing}")
        frames.append(df.select(pl.col("model", "attention", "augmentation").cast(pl.Utf8),
                                pl.col("seed").cast(pl.Int64), pl.col("eval_acc").cast(pl.Float64),
                                *[(pl.col(c) if c in df.columns else pl.lit(None))
                                  .cast(pl.Float64).alias(c) for c in CHANCE_COLUMNS]))
    return pl.concat(frames) if frames else pl.DataFrame(
        schema={"model": pl.Utf8, "attention": pl.Utf8, "augmentation": pl.Utf8,
                "seed": pl.Int64, "eval_acc": pl.Float64,
                **{c: pl.Float64 for c in CHANCE_COLUMNS}})


def accuracy_cost_frame(accuracy: pl.DataFrame, cost: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (model, attention, augmentation): accuracy over seeds and, with ``cost``,
    parameters, FLOPs and their ratios to the model's ``none`` variant.

    acc_mean, acc_sd (ddof = 1; 0 for one seed), acc_min, acc_max, n_seeds; where the summary
    has them, acc_lo, acc_hi (the seeds' mean Wilson bounds), acc_chance and acc_p_max (the
    largest p of accuracy > chance over the seeds); ``variant`` labels
    the row (``model · attention · augmentation``). ``cost`` (cost.parquet) is joined on
    (model, attention); its ``params_ratio``/``flops_ratio`` are used when present, else
    computed against the ``none`` row of the same model. Its optional ``params_live``,
    ``flops_elementwise``, ``flops_total`` and ``flops_total_ratio`` (rra.models.cost) are
    carried along, the ratio computed the same way when only ``flops_total`` is given.
    Sorted: model, baseline first.
    """
    missing = [c for c in ACCURACY_REQUIRED if c not in accuracy.columns]
    if missing or accuracy.height == 0:
        raise ValueError(f"accuracy_cost_frame: accuracy frame is empty or lacks {missing}")
    keys = ["model", "attention", "augmentation"]
    chance = ({"acc_lo": pl.col("eval_acc_lo").mean(), "acc_hi": pl.col("eval_acc_hi").mean(),
               "acc_chance": pl.col("eval_acc_null").mean(), "acc_p_max": pl.col("eval_acc_p").max()}
              if "eval_acc_lo" in accuracy.columns
              and accuracy["eval_acc_lo"].null_count() < accuracy.height else {})
    out = (accuracy.group_by(keys)
           .agg(acc_mean=pl.col("eval_acc").mean(), acc_sd=pl.col("eval_acc").std(ddof=1),
                acc_min=pl.col("eval_acc").min(), acc_max=pl.col("eval_acc").max(),
                n_seeds=pl.col("seed").n_unique(), **chance)
           .with_columns(pl.col("acc_sd").fill_null(0.0),
                         variant=pl.concat_str(keys, separator=" · ")))
    if cost is not None:
        missing = [c for c in ("model", "attention", "params", "flops") if c not in cost.columns]
        if missing:
            raise ValueError(f"accuracy_cost_frame: cost frame lacks column(s) {missing}")
        optional = ("params_ratio", "flops_ratio", "params_live", "flops_elementwise",
                    "flops_total", "flops_total_ratio")
        c = cost.select("model", "attention", "params", "flops",
                        *[x for x in optional if x in cost.columns])
        if c.select("model", "attention").is_duplicated().any():
            raise ValueError("accuracy_cost_frame: cost frame has several rows for one "
                             "(model, attention)")
        totals = {"base_flops_total": "flops_total"} if "flops_total" in c.columns else {}
        base = c.filter(pl.col("attention") == "none").select(
            "model", base_params="params", base_flops="flops", **totals)
        c = c.join(base, on="model", how="left")
        for col, num, den in (("params_ratio", "params", "base_params"),
                              ("flops_ratio", "flops", "base_flops"),
                              ("flops_total_ratio", "flops_total", "base_flops_total")):
            if col not in c.columns and num in c.columns:
                c = c.with_columns((pl.col(num) / pl.col(den)).alias(col))
        out = out.join(c.drop("base_params", "base_flops", *totals), on=["model", "attention"],
                       how="left")
    return out.sort(["model", pl.col("attention") != "none", "attention", "augmentation"])


# ---------------------------------------------------------------------------------------------
# kNN backends: recall and time

def _recall_min(entry: dict) -> float | None:
    """The smallest recall of a kNN manifest entry over its analysed k (else its recall)."""
    if entry.get("recall_at_k"):
        return min(float(r) for r in entry["recall_at_k"].values())
    return float(entry["recall"]) if entry.get("recall") is not None else None


def knn_graph_frame(files: Sequence[PathLike]) -> pl.DataFrame:
    """One row per stored kNN graph of the given kNN manifests.

    Columns: dataset, model, attention, augmentation, seed, probe, distance, backend (the
    directory's backend setting: ``auto``, ``exact``, ``annoy`` or e.g. ``annoy-t10-sauto``),
    backend_used, n_trees (Annoy only), search_k (used), k (stored k_max), hook_a, pos_a,
    scale_a, n, d, recall (recall@k against exact on the manifest's sample; 1 for exact),
    seconds (the entry's ``seconds``: wall time of the whole graph, i.e. for Annoy the index
    build, the search_k tuning, the query and the exact neighbours of the recall sample),
    backend_label (``exact``, or ``annoy (n_trees=…, search_k=…)`` with the requested
    search_k of the manifest's options), backend_reason (why that backend ran, e.g. ``auto:
    exact predicted … vs Annoy …``; null in manifests written before it was recorded),
    recall_min_over_k (the smallest held-out recall over the analysed k, ``recall_at_k``;
    else recall), recall_target (Annoy's; null for exact), recall_target_met (False: an Annoy graph
    kept under ``knn.on_recall_miss: warn`` although below its target; True for exact; null in
    manifests older than the flag). [ours]
    """
    rows = []
    for path in map(Path, files):
        m = read_json(path)
        spec_dir, dataset, run, probe = RunFolder.identity(path, "knn")
        backend = KnnSetting.parse(spec_dir.name).setting
        hooks = list(m.get("hooks", []))
        pos = {h: i for i, h in enumerate(hooks)}
        options = m.get("options") or {}
        n_trees, search_k = options.get("n_trees"), options.get("search_k")
        annoy_label = ("annoy" if n_trees is None else f"annoy (n_trees={n_trees}"
                       + ("" if search_k is None else f", search_k={search_k}") + ")")
        for e in m.get("entries", []):
            used = e["backend"]
            if e["hook"] not in pos:
                raise ValueError(f"{path}: graph hook {e['hook']!r} is not in the manifest's hooks")
            rows.append({"dataset": dataset, **asdict(run), "probe": probe,
                         "distance": m["distance"], "backend": backend, "backend_used": used,
                         "n_trees": (int(n_trees) if used == "annoy" and n_trees is not None
                                     else None),
                         "search_k": e.get("search_k"), "k": int(m["k_max"]),
                         "hook_a": e["hook"], "pos_a": pos[e["hook"]], "scale_a": str(e["scale"]),
                         "n": int(e["n"]), "d": int(e["d"]),
                         "recall": float(e["recall"]) if e.get("recall") is not None else None,
                         "seconds": float(e["seconds"]),
                         "backend_label": annoy_label if used == "annoy" else used,
                         "backend_reason": e.get("backend_reason"),
                         "recall_min_over_k": _recall_min(e),
                         "recall_target": e.get("recall_target"),
                         "recall_target_met": e.get("recall_target_met",
                                                    True if used == "exact" else None)})
    schema = {"dataset": pl.Utf8, "model": pl.Utf8, "attention": pl.Utf8, "augmentation": pl.Utf8,
              "seed": pl.Int64, "probe": pl.Utf8, "distance": pl.Utf8, "backend": pl.Utf8,
              "backend_used": pl.Utf8, "n_trees": pl.Int64, "search_k": pl.Int64, "k": pl.Int64,
              "hook_a": pl.Utf8, "pos_a": pl.Int64, "scale_a": pl.Utf8, "n": pl.Int64,
              "d": pl.Int64, "recall": pl.Float64, "seconds": pl.Float64,
              "backend_label": pl.Utf8, "backend_reason": pl.Utf8, "recall_min_over_k": pl.Float64,
              "recall_target": pl.Float64, "recall_target_met": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def knn_backend_note(files: Sequence[PathLike]) -> str:
    """One line on the kNN backend of an analysis's graphs: ``kNN: exact, 12 graphs (largest,
    5000 × 784: auto: exact predicted … vs Annoy …)``; the reason is that of the largest graph
    (n · d). Graphs kept below their recall target (``knn.on_recall_miss: warn``) add the mark
    ``⚠ RECALL BELOW TARGET in 2 of 12 graphs: conv1@1 0.412, … (target 0.95)`` (the smallest
    held-out recall over the analysed k; at most 5 graphs named). Empty when no manifest
    exists. [ours]"""
    files = [Path(f) for f in files if Path(f).is_file()]
    if not files:
        return ""
    df = knn_graph_frame(files)
    if df.height == 0:
        return ""
    counts = df.group_by("backend_used", maintain_order=True).len()
    used = ", ".join(f"{b} {c} graph{'s' if c != 1 else ''}"
                     for b, c in counts.sort("backend_used").iter_rows())
    big = df.sort(pl.col("n") * pl.col("d"), descending=True).row(0, named=True)
    why = f" (largest, {big['n']} × {big['d']}: {big['backend_reason']})" \
        if big["backend_reason"] else ""
    missed = df.filter(pl.col("recall_target_met").eq(False))
    if missed.height:
        named = ", ".join(f"{r['hook_a']}@{r['scale_a']} {r['recall_min_over_k']:.3f}"
                          for r in missed.head(5).iter_rows(named=True))
        more = ", …" if missed.height > 5 else ""
        targets = "/".join(f"{t:g}" for t in missed["recall_target"].drop_nulls().unique().sort())
        why += (f" — ⚠ RECALL BELOW TARGET in {missed.height} of {df.height} graphs: "
                f"{named}{more} (target {targets}; kept under knn.on_recall_miss: warn)")
    return f"kNN: {used}{why}"


# ---------------------------------------------------------------------------------------------
# STAC scale choices

STAC_KEYS = ("scales", "tau", "k", "stages", "baseline")
STAGE_KEYS = ("stage", "hook", "scale", "qualified", "evidence")
#: ClassRepSim table measure → the scale-choice file's measure (rra.stac.TABLE_MEASURE)
STAC_TABLE_MEASURES = {"classrepsim_mean": "jaccard", "class_response_agreement": "agreement"}


def stac_table(path: PathLike, data: dict[str, Any]) -> Path | None:
    """The ClassRepSim table a scale-choice file (``path``, contents ``data``) was chosen from,
    if it is still there and unchanged: the file's ``classrepsim`` path as written (relative to
    the working directory or absolute) or, for a moved results folder, its last five parts
    (``{run}/metrics/{probe}/{spec}/classrepsim.parquet``) under the file's dataset folder; the
    first that exists and whose SHA-256 is the recorded ``classrepsim_sha256`` (when recorded).
    None otherwise (older files, a table rewritten since the choice)."""
    from rra.io import sha256_file

    name = data.get("classrepsim")
    if not isinstance(name, str) or not name:
        return None
    given = Path(name)
    candidates = [given]
    if len(given.parts) >= 5:
        candidates.append(Path(path).parent.parent / Path(*given.parts[-5:]))
    digest = data.get("classrepsim_sha256")
    for c in candidates:
        if c.is_file() and (digest is None or sha256_file(c) == digest):
            return c
    return None


def stac_intervals(table: PathLike, hooks: Sequence[str], k: int) -> pl.DataFrame:
    """The uncertainty columns of the scale-choice evidence, from its ClassRepSim table.

    Per (hook, measure, scale) at ``k`` and [scale, full]: ``jaccard`` (``classrepsim_mean``
    rows) its ``lo``, ``hi``, ``null``, ``p``; ``agreement`` (one ``class_response_agreement``
    row per class) the mean over classes of the per-class ``lo``, ``hi`` (the table has no
    interval of the class mean; classes resampled independently, this band is the wider) and
    no chance level (``null``, ``p`` null). Columns: hook, measure, scale, lo, hi, null, p;
    null where the table lacks the columns (``metrics.bootstrap.B`` = 0, older tables).
    """
    from rra.metrics.tables import scan_tables

    rows = (scan_tables([table])
            .filter(pl.col("measure").is_in(list(STAC_TABLE_MEASURES))
                    & (pl.col("k") == int(k)) & pl.col("hook_a").is_in(list(hooks))
                    & (pl.col("scale_b") == "full") & (pl.col("scale_a") != "full"))
            .collect())
    rows = rows.filter(pl.col("scale_a").str.contains(r"^\d+$"))
    return (rows.group_by("hook_a", "measure", "scale_a")
            .agg(lo=pl.col("lo").mean(), hi=pl.col("hi").mean(), null=pl.col("null").mean(),
                 p=pl.col("p").max())
            .select(hook=pl.col("hook_a"),
                    measure=pl.col("measure").replace_strict(STAC_TABLE_MEASURES),
                    scale=pl.col("scale_a").cast(pl.Int64), lo="lo", hi="hi", null="null",
                    p="p"))


def stac_scales_frame(path: PathLike) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One row per (stage, evidence measure, candidate scale) of a :func:`rra.stac.choose_scales`
    file, and the file's ``criterion``, ``tau``, ``delta``, ``k``, ``baseline``, ``scales``,
    ``budget`` and ``classrepsim`` (the table the intervals were read from, or None).

    Columns: stage, hook, stage_label (``stage {i} · {hook}``), measure (``jaccard``:
    class-mean ClassRepSim S_hook[scale, full]; ``agreement``: class-mean class-response
    agreement A_hook[scale, full]; both where the file holds them, else its ``evidence`` under
    its criterion), scale (int), value, criterion (whether this measure decided), chosen (the
    stage's scale, on the deciding measure), rule (the criterion's pick before the FLOPs budget,
    on the deciding measure), qualified (whether the stage's scale meets the criterion), tau
    (the stage's threshold on the deciding measure: τ, or A[s_max, full] − δ), and lo, hi, null,
    p from the ClassRepSim table the choice was read from (:func:`stac_table`,
    :func:`stac_intervals`; null when that table is gone or changed, or lacks them). [ours]
    """
    path = Path(path)
    data = read_json(path)
    missing = [k for k in STAC_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: STAC scale file lacks key(s) {missing}")
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise ValueError(f"{path}: 'stages' must be a non-empty list")
    tau = float(data["tau"])
    criterion = data.get("criterion", "jaccard")
    rows = []
    for i, st in enumerate(data["stages"]):
        lacks = [k for k in STAGE_KEYS if not isinstance(st, dict) or k not in st]
        if lacks:
            raise ValueError(f"{path}: stages[{i}] lacks key(s) {lacks}")
        if not isinstance(st["evidence"], dict) or not st["evidence"]:
            raise ValueError(f"{path}: stages[{i}].evidence must be a non-empty {{scale: value}}")
        if str(st["scale"]) not in {str(s) for s in st["evidence"]}:
            raise ValueError(f"{path}: stages[{i}] chose scale {st['scale']!r}, which is not "
                             f"among its evidence scales {sorted(st['evidence'])}")
        measures = {m: st[m] for m in ("jaccard", "agreement") if isinstance(st.get(m), dict)}
        measures[criterion] = st["evidence"]
        for measure, values in measures.items():
            decides = measure == criterion
            for scale, value in values.items():
                if not str(scale).isdigit():
                    raise ValueError(f"{path}: stages[{i}].{measure if not decides else 'evidence'} "
                                     f"has scale {scale!r}, not a positive integer")
                rows.append({"stage": int(st["stage"]), "hook": str(st["hook"]),
                             "stage_label": f"stage {st['stage']} · {st['hook']}",
                             "measure": measure, "scale": int(scale), "value": float(value),
                             "criterion": decides,
                             "chosen": decides and int(scale) == int(st["scale"]),
                             "rule": decides and int(scale) == int(st.get("rule_scale", st["scale"])),
                             "qualified": bool(st["qualified"]),
                             "tau": float(st.get("threshold", tau))})
    schema = {"stage": pl.Int64, "hook": pl.Utf8, "stage_label": pl.Utf8, "measure": pl.Utf8,
              "scale": pl.Int64, "value": pl.Float64, "criterion": pl.Boolean,
              "chosen": pl.Boolean, "rule": pl.Boolean, "qualified": pl.Boolean,
              "tau": pl.Float64}
    df = pl.DataFrame(rows, schema=schema)
    table = stac_table(path, data)
    ci_schema = {"lo": pl.Float64, "hi": pl.Float64, "null": pl.Float64, "p": pl.Float64}
    if table is not None:
        ci = stac_intervals(table, df["hook"].unique().to_list(), int(data["k"]))
        df = df.join(ci.cast(ci_schema), on=["hook", "measure", "scale"], how="left")
    else:
        df = df.with_columns(pl.lit(None, t).alias(c) for c, t in ci_schema.items())
    meta = {"criterion": criterion, "tau": tau, "delta": data.get("delta"), "k": int(data["k"]),
            "baseline": data["baseline"], "scales": list(data["scales"]),
            "budget": data.get("budget"), "classrepsim": table}
    return df.sort("stage", "measure", "scale"), meta


# ---------------------------------------------------------------------------------------------
# E2: the guideline stage's tables (rra.metrics.hyperparams)

def e2_guideline_frames(manifest: PathLike) -> tuple[pl.DataFrame, pl.DataFrame,
                                                     dict[str, Any] | None, list[Path]]:
    """The ``panels`` and ``guideline`` tables of an E2 guideline folder (beside its
    ``manifest``), its reference setting (None: no run had two analyses, the tables are empty)
    and the files read: the manifest, ``panels.parquet``, ``guideline.parquet``."""
    folder = Path(manifest).parent
    files = [Path(manifest), folder / "panels.parquet", folder / "guideline.parquet"]
    for path in files[1:]:
        if not path.is_file():
            raise FileNotFoundError(f"missing {path} (its manifest exists)")
    reference = read_json(manifest).get("reference")
    return pl.read_parquet(files[1]), pl.read_parquet(files[2]), reference, files


# ---------------------------------------------------------------------------------------------
# Layer analyses (rra/layers, E7–E9)

@dataclass(frozen=True)
class LayerDir(RunFolder):
    """One complete layer-analysis directory of one run (its manifest exists)."""

    analysis: str

    @classmethod
    def of(cls, manifest: PathLike) -> LayerDir:
        folder, dataset, run, probe = cls.identity(manifest, "layers")
        return cls(folder, dataset, run, probe, folder.name)

    @property
    def table(self) -> Path:
        return self.path / f"{self.analysis}.parquet"


def read_layer_tables(dirs: Sequence[LayerDir], where: pl.Expr | None = None) -> pl.DataFrame:
    """The tables of some layer-analysis directories, concatenated (columns of
    :data:`rra.metrics.tables.SCHEMA`; ``where`` filters while reading)."""
    from rra.metrics.tables import polars_schema, scan_tables

    for d in dirs:
        if not d.table.is_file():
            raise FileNotFoundError(f"missing layer table {d.table} (its manifest exists: the "
                                    "layers stage wrote an incomplete directory)")
    if not dirs:
        return pl.DataFrame(schema=polars_schema())
    scan = scan_tables(d.table for d in dirs)
    return (scan.filter(where) if where is not None else scan).collect()


def hook_groups(df: pl.DataFrame) -> list[tuple[list[str], pl.DataFrame]]:
    """Rows of a layer table grouped by the runs' hook lists: models whose runs have the same
    hooks share a group (ResNet-20 with and without BatchNorm), so one figure compares them on
    one hook axis. Returns ``(models, rows)`` in the order of the models' first appearance."""
    hooks = (df.select("model", "hook_a", "pos_a").unique()
             .sort("model", "pos_a").group_by("model", maintain_order=True)
             .agg(pl.col("hook_a")))
    groups: dict[tuple[str, ...], list[str]] = {}
    for model, names in hooks.iter_rows():
        groups.setdefault(tuple(names), []).append(model)
    return [(models, df.filter(pl.col("model").is_in(models))) for models in groups.values()]


def saliency_maps_frame(dirs: Sequence[LayerDir]) -> tuple[dict[Run, dict[str, Any]], list[Path]]:
    """The arrays of each saliency directory's ``maps.npz`` (images, true and predicted class
    maps, labels, predictions, probe rows, first-layer filters) by run, and the files read.
    """
    import numpy as np

    out, files = {}, []
    for d in dirs:
        path = d.path / "maps.npz"
        if not path.is_file():
            raise FileNotFoundError(f"missing {path} (its manifest exists)")
        with np.load(path) as npz:
            out[d.run] = {k: npz[k] for k in npz.files}
        files.append(path)
    return out, files
