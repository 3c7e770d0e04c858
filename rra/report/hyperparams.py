"""E2: how the RRA summary measures move with the analysis settings, and a guideline table. [ours]

An *analysis* of a run is one metric directory ``{run}/metrics/{probe}/{distance}-{backend}``;
its tables hold several k and pooled scales. The parameters of E2 (:data:`PARAMETERS`):

- ``probe``: the probe set ``{split}-n{n}-s{seed}`` (n images per class);
- ``distance``: ``euclidean`` or ``cosine``;
- ``backend``: the kNN setting ``exact``, ``auto``, ``annoy`` or ``annoy-t{n_trees}-s{search_k}``;
- ``k``: the neighbourhood size (column ``k`` of the tables);
- ``scale``: the pooled scale of the embeddings (column ``scale_a``).

Reference setting (:func:`reference_setting`): the (probe, distance, backend) analysed for the
most runs of the dataset (the study's main grid; ties go to the config's top-level probe and
first kNN setting, then to name order), k = ``report.k`` (default: the smallest k computed in
the reference analysis) and scale = ``report.scale`` (default ``full``).

One parameter varies at a time, the others stay at the reference (:func:`panel_frame`):

- probe, distance, backend: the analyses of a run that agree with the reference on the other two
  (at the reference k and scale). A run (seed) takes part when it has ≥ 2 values; the values
  compared are those every taking-part seed has, so each value averages the same seeds;
- k and scale: the reference analysis of the seeds that take part in any of the above (for the
  scale, at each hook the scales it was embedded at).

Summary measures per hook (:data:`SUMMARY_MEASURES`): kNN class purity, kNN-vote accuracy, and
NNTS to the logits (the last hook, at the same scale). The scale panel has no NNTS to the
logits: NNTS compares two hooks at one scale, and the logits exist at ``full`` only.

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

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from rra.report.frames import scale_order

PARAMETERS = ("probe", "distance", "backend", "k", "scale")
ANALYSIS_PARAMETERS = ("probe", "distance", "backend")
SUMMARY_MEASURES = ("knn_purity", "knn_vote_accuracy", "nnts_to_logits")
PANEL_SCHEMA = {"parameter": pl.Utf8, "setting": pl.Utf8, "setting_pos": pl.Int64,
                "reference": pl.Boolean, "seed": pl.Int64, "measure": pl.Utf8,
                "hook_a": pl.Utf8, "pos_a": pl.Int64, "value": pl.Float64}
PANEL_COLUMNS = list(PANEL_SCHEMA)
GUIDELINE_COLUMNS = ["dataset", "model", "attention", "augmentation", "parameter", "values",
                     "reference", "measure", "statistic", "setting", "value", "n_hooks",
                     "n_seeds"]
GUIDELINE_SCHEMA = {c: pl.Utf8 for c in GUIDELINE_COLUMNS} | {
    "value": pl.Float64, "n_hooks": pl.Int64, "n_seeds": pl.Int64}


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


def config_preference(config: dict | None) -> dict[str, str]:
    """The config's top-level probe and first kNN setting (tie-break of the reference), or {}
    when the config lacks them."""
    try:
        from rra.config import knn_spec, probe_name

        distance, _, backend = knn_spec(config["knn"]["distance"][0],
                                        config["knn"]["backend"]).partition("-")
        return {"probe": probe_name(config["probe"]), "distance": distance, "backend": backend}
    except (KeyError, TypeError, IndexError):
        return {}


def reference_analysis(analyses: Sequence[tuple[str, str, str]],
                       prefer: dict[str, str] | None = None) -> tuple[str, str, str]:
    """The (probe, distance, backend) that occurs most often in ``analyses`` (one entry per
    analysed run); ties: the one equal to ``prefer``, then the first in name order."""
    if not analyses:
        raise ValueError("reference_analysis: no analyses given")
    counts = Counter(analyses)
    preferred = tuple((prefer or {}).get(p) for p in ANALYSIS_PARAMETERS)
    return min(counts, key=lambda a: (-counts[a], a != preferred, a))


def reference_setting(summary: pl.DataFrame, analyses: Sequence[tuple[str, str, str]], *,
                      k: int | None = None, scale: str = "full",
                      prefer: dict[str, str] | None = None) -> Reference:
    """The reference setting of a dataset: :func:`reference_analysis` of ``analyses`` (one
    (probe, distance, backend) per analysed run), ``k`` (default: the smallest k of the
    reference analysis's rows in ``summary``, or of all its rows when it has none of them)
    and ``scale``. A ``k`` that was not computed is an error."""
    probe, distance, backend = reference_analysis(analyses, prefer)
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
# Order of parameter values

def _probe_key(name: str) -> tuple:
    m = re.fullmatch(r"([a-z]+)-(?:n(\d+)|all)-s(\d+)", name)
    if m is None:
        return (1, name, 0, 0)
    return (0, m[1], int(m[2]) if m[2] else float("inf"), int(m[3]))


def _backend_key(name: str) -> tuple:
    m = re.fullmatch(r"annoy-t(\d+|d)-s(auto|-?\d+|d)", name)
    rank = {"exact": 0, "auto": 1, "annoy": 2}.get(name, 3 if m else 4)
    trees = int(m[1]) if m and m[1].isdigit() else -1
    return (rank, trees, m[2] if m else "", name)


def value_order(parameter: str, values: Sequence[Any]) -> list[str]:
    """Values of a parameter as strings in plotting order: probes by split, n and seed;
    distances by name; backends exact, auto, annoy, then ``annoy-t…-s…`` by n_trees; k
    numerically; scales 1, 2, 4, …, full."""
    names = sorted({str(v) for v in values})
    if parameter == "probe":
        return sorted(names, key=_probe_key)
    if parameter == "backend":
        return sorted(names, key=_backend_key)
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
    rows = rows.with_columns(setting=pl.col(column).cast(pl.Utf8))
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


def panel_frame(summary: pl.DataFrame, ref: Reference, *, what: str = "E2") -> pl.DataFrame:
    """The E2 small-multiple rows of one model variant (see the module docstring).

    ``summary``: :func:`rra.report.frames.summary_frame` rows of one (dataset, model,
    attention, augmentation). Returns :data:`PANEL_COLUMNS` rows (one per parameter, value,
    seed, measure, hook), empty when no run of the variant was analysed under ≥ 2 values of
    probe, distance or backend. ``what`` names the variant in warnings.
    """
    at_ref = summary.filter((pl.col("k") == ref.k) & (pl.col("scale_a") == ref.scale))
    parts, seeds_any = [], set()
    for p in ANALYSIS_PARAMETERS:
        others = [pl.col(q) == ref.value(q) for q in ANALYSIS_PARAMETERS if q != p]
        rows = at_ref.filter(pl.all_horizontal(others))
        seeds, common = _common_values(rows, p)
        if not seeds:
            continue
        if len(common) < 2:
            warnings.warn(f"{what}: the seeds {seeds} were analysed under different {p} values "
                          f"with no two values in common; {p} panel skipped", stacklevel=2)
            continue
        seeds_any |= set(seeds)
        parts.append(_panel(rows.filter(pl.col("seed").is_in(seeds)), p, p,
                            value_order(p, common), ref))
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
    schema = {c: GUIDELINE_SCHEMA[c] for c in GUIDELINE_COLUMNS[4:]}
    df = pl.DataFrame(rows, schema=schema)
    order = {f"{p}/{m}": i for i, (p, m) in enumerate(
        (p, m) for p in PARAMETERS for m in SUMMARY_MEASURES)}
    return df.sort(pl.concat_str("parameter", pl.lit("/"), "measure").replace_strict(
        order, default=len(order)), "measure")


def backend_cost(cost: pl.DataFrame, values: Sequence[str], ref: Reference) -> pl.DataFrame:
    """recall@k and time of each backend setting in ``values`` (module docstring).

    ``cost``: :func:`rra.report.frames.knn_cost_frame` rows of the backend panel's seeds at the
    reference probe and distance. Rows (same columns as :func:`guideline`, setting = the
    backend): measure ``knn_recall`` / statistic ``mean``; ``seconds_per_graph`` / ``mean``;
    ``seconds_per_graph`` / ``ratio_to_exact`` (null without an exact setting).
    """
    cost = cost.filter(pl.col("backend").is_in(list(values)))
    keys = ["seed", "hook_a", "scale_a"]
    exact = next((v for v in values if v == "exact"), None) or next(
        (v for v in values
         if (c := cost.filter(pl.col("backend") == v)).height
         and (c["backend_used"] == "exact").all()), None)
    base = (cost.filter(pl.col("backend") == exact).select(*keys, base="seconds")
            if exact is not None else None)
    joined_values = ", ".join(values)
    rows = []
    for v in values:
        c = cost.filter(pl.col("backend") == v)
        if c.height == 0:
            continue
        common = {"parameter": "backend", "values": joined_values, "reference": ref.backend,
                  "setting": v, "n_hooks": c["hook_a"].n_unique(),
                  "n_seeds": c["seed"].n_unique()}
        rows.append({**common, "measure": "knn_recall", "statistic": "mean",
                     "value": c["recall"].mean()})
        rows.append({**common, "measure": "seconds_per_graph", "statistic": "mean",
                     "value": c["seconds"].mean()})
        ratio = None
        if base is not None:
            m = c.join(base, on=keys, how="inner").drop_nulls(["seconds", "base"])
            if m.height and m["base"].sum() > 0:
                ratio = m["seconds"].sum() / m["base"].sum()
        rows.append({**common, "measure": "seconds_per_graph", "statistic": "ratio_to_exact",
                     "value": ratio})
    schema = {c: GUIDELINE_SCHEMA[c] for c in GUIDELINE_COLUMNS[4:]}
    return pl.DataFrame(rows, schema=schema)
