"""STAC stage: the per-stage condensation scales of ``stac-auto``, chosen from ClassRepSim.

This closes the loop analysis → design (methods.md "Scale choice for STAC" [ours]):

1. the baseline (the same model with attention ``none``, augmentation and seed from the config
   block ``stac_auto``) is trained, embedded and analysed like every run, on the probe
   ``stac_auto.probe`` drawn from the ``val`` split: rows carved from train that training never
   sees and that the final evaluation (test) never uses, so no design choice is fitted to test;
2. :func:`choose_scales` reads the baseline's ``classrepsim.parquet`` and, for each network
   stage, the class-mean evidence at the stage's last block v (at ``k``): ClassRepSim
   S_v[s, full] and the class-response agreement A_v[s, full];
3. per stage the criterion picks a scale (``rra.metrics.classrepsim``): ``agreement`` [ours,
   default] the coarsest s with A_v[s, full] ≥ A_v[s_max, full] − δ; ``jaccard`` the coarsest s
   with S_v[s, full] ≥ τ, else the finest;
4. :func:`fit_budget` keeps the choice within ``stac_auto.max_flops_ratio`` (FLOPs of the STAC
   model over the baseline's, ``rra.models.cost``), coarsening stages if it must;
5. the ``stac-auto`` run trains the ``stac`` module with those scales (``rra train
   --attention-kwargs-file``), so its checkpoint's spec holds the scales actually used.

The candidates are the scales present in the table: the embed stage skips scales larger than
the hook's feature map, so s* never exceeds the stage's map size. The last block of a stage is
the hook whose output the stage passes on, so it summarises what the stage's attention must keep.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rra.io import PathLike, provenance, sha256_file, write_json
from rra.models.attention import read_attention_kwargs  # noqa: F401  (choose_scales' reader)

#: columns that identify the analysed run in a metric table (recorded as the baseline)
_IDENTITY = ("dataset", "model", "attention", "augmentation", "seed", "probe", "distance", "backend")
FULL = "full"
#: criterion / measure name → the table's measure holding it (agreement: one row per class)
TABLE_MEASURE = {"jaccard": "classrepsim_mean", "agreement": "class_response_agreement"}
CRITERIA = tuple(TABLE_MEASURE)


def stage_evidence(table: Any, hook: str, k: int, *, path: PathLike = "classrepsim table",
                   measure: str = "jaccard") -> dict[int, float]:
    """{s: class-mean evidence at [s, full]} at ``k`` for ``hook`` from a ClassRepSim table:
    ``measure="jaccard"``: S_hook[s, full] (``classrepsim_mean`` rows); ``"agreement"``: the mean
    over classes of the class-response agreement (``class_response_agreement`` rows, one per
    class).

    Raises ValueError naming the hook, k or scale that the table lacks, or a (hook, s[, class])
    that occurs more than once (a table holding several runs or probes).
    """
    import polars as pl

    if measure not in TABLE_MEASURE:
        raise ValueError(f"stage_evidence: measure must be one of {CRITERIA}, got {measure!r}")
    name = TABLE_MEASURE[measure]
    rows = table.filter(pl.col("measure") == name)
    if rows.height == 0:
        raise ValueError(f"{path}: no {name!r} rows (is this a classrepsim table?)")
    at_k = rows.filter(pl.col("k") == int(k))
    if at_k.height == 0:
        raise ValueError(f"{path}: no {name} rows at k={k}; the table has k in "
                         f"{sorted(rows['k'].unique().to_list())} (set stac_auto.k to one of "
                         "knn.k)")
    at_hook = at_k.filter(pl.col("hook_a") == hook)
    if at_hook.height == 0:
        raise ValueError(f"{path}: no {name} rows for hook {hook!r} at k={k}; hooks in "
                         f"the table: {sorted(at_k['hook_a'].unique().to_list())}")
    to_full = at_hook.filter((pl.col("scale_b") == FULL) & (pl.col("scale_a") != FULL))
    if to_full.height == 0:
        raise ValueError(f"{path}: hook {hook!r} at k={k} has no rows comparing an integer scale "
                         f"with scale {FULL!r}; scales in the table: "
                         f"{sorted(set(at_hook['scale_a'].to_list()) | set(at_hook['scale_b'].to_list()))} "
                         "(embed.scales needs 'full' and at least one integer scale)")
    per_class = measure == "agreement"
    if per_class and ("class" not in to_full.columns or to_full["class"].null_count()):
        raise ValueError(f"{path}: {name} rows of hook {hook!r} lack the column 'class'")
    values: dict[int, list[float]] = {}
    seen = set()
    classes = to_full["class"].to_list() if per_class else [None] * to_full.height
    for scale, cls, value in zip(to_full["scale_a"].to_list(), classes, to_full["value"].to_list()):
        if not str(scale).isdigit() or int(scale) < 1:
            raise ValueError(f"{path}: hook {hook!r} has scale {scale!r}, neither a positive "
                             f"integer nor {FULL!r}")
        if (int(scale), cls) in seen:
            raise ValueError(f"{path}: hook {hook!r}, k={k}, scale {scale}"
                             f"{f', class {cls}' if per_class else ''} occurs more than once; "
                             "the table must hold one run at one probe, distance and backend")
        seen.add((int(scale), cls))
        values.setdefault(int(scale), []).append(float(value))
    counts = {s: len(v) for s, v in values.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"{path}: hook {hook!r}, k={k}: {name} rows per scale differ {counts}; "
                         "every scale needs one row per class")
    return {s: sum(v) / len(v) for s, v in sorted(values.items())}


def _baseline_of(table: Any, path: PathLike) -> dict[str, Any]:
    baseline = {}
    for col in _IDENTITY:
        if col not in table.columns:
            continue
        values = table[col].unique().to_list()
        if len(values) > 1:
            raise ValueError(f"{path}: column {col!r} holds several values {sorted(map(str, values))}; "
                             "the table must hold exactly one run")
        baseline[col] = values[0] if values else None
    return baseline


def choose_scales(classrepsim_path: PathLike, model_stages: Sequence[Sequence[str]],
                  out_path: PathLike, *, k: int, criterion: str, tau: float = 0.5,
                  delta: float = 0.05, max_flops_ratio: float | None = None,
                  flops_ratios: Callable[[list[list[int]]], list[float]] | None = None,
                  ) -> dict[str, Any]:
    """Choose one STAC scale per stage from a baseline's ClassRepSim table; write it as JSON.

    ``model_stages``: the baseline's ``model.stages`` (block names per stage, forward order);
    stage i is summarised at its last block ``model_stages[i][-1]``. For each stage, the
    evidence at ``k`` (:func:`stage_evidence`) of the ``criterion`` goes to
    ``rra.metrics.classrepsim``: ``agreement`` → ``choose_stac_scale_within(A, delta)``
    (coarsest s with A_v[s, full] ≥ A_v[s_max, full] − δ), ``jaccard`` →
    ``choose_stac_scale(S, tau)`` (coarsest s with S_v[s, full] ≥ τ, else the finest) [ours].

    ``flops_ratios`` (e.g. :func:`stac_flops_ratios`) maps a list of per-stage scale lists to
    their FLOPs ratios over the baseline; with it the reached ratio is recorded, and with
    ``max_flops_ratio`` the choice is kept within that budget (:func:`fit_budget`).

    Writes ``out_path`` (JSON) and returns its contents: ``scales`` (one int per stage, the
    ``attention_kwargs`` of ``stac``), ``criterion``, ``tau``, ``delta``, ``k``, ``stages``
    (per stage: stage, hook, scale, rule_scale (the criterion's pick before the budget),
    qualified, threshold, evidence {"s": value} of the criterion's measure, and ``jaccard`` /
    ``agreement``: both measures where the table holds them), ``budget`` (max_flops_ratio,
    flops_ratio, rule_scales, rule_flops_ratio, limited; None without ``flops_ratios``),
    ``baseline`` (the table's identity columns, probe included), ``classrepsim`` (path),
    ``classrepsim_sha256`` and ``provenance``.
    Raises FileNotFoundError for a missing table and ValueError for a model without stages, a
    table lacking the hook, k or scales needed, an unknown criterion, or a budget that no
    choice meets.
    """
    path, stages = _check_choice_args(classrepsim_path, model_stages, criterion,
                                      max_flops_ratio, flops_ratios)
    k = int(k)
    baseline = _read_baseline(path, k)
    per_stage = [_stage_entry(baseline, i, blocks[-1], criterion, tau, delta)
                 for i, blocks in enumerate(stages)]
    budget = _apply_budget(per_stage, flops_ratios, max_flops_ratio)
    result = {
        "scales": [s["scale"] for s in per_stage],
        "criterion": criterion,
        "tau": float(tau),
        "delta": float(delta),
        "k": k,
        "stages": per_stage,
        "budget": budget,
        "baseline": _baseline_of(baseline.table, path),
        "classrepsim": str(path),
        "classrepsim_sha256": sha256_file(path),
    }
    result["provenance"] = provenance(config={"criterion": criterion, "tau": float(tau),
                                              "delta": float(delta), "k": k, "stages": stages,
                                              "max_flops_ratio": max_flops_ratio})
    write_json(out_path, result)
    return result


def _check_choice_args(classrepsim_path: PathLike, model_stages: Sequence[Sequence[str]],
                       criterion: str, max_flops_ratio: float | None,
                       flops_ratios: Callable | None) -> tuple[Path, list[list[str]]]:
    """The checks of :func:`choose_scales`' arguments before the table is read; returns the
    table's path and the stages as lists."""
    if criterion not in CRITERIA:
        raise ValueError(f"choose_scales: criterion must be one of {list(CRITERIA)} "
                         f"(config key stac_auto.criterion), got {criterion!r}")
    if max_flops_ratio is not None and flops_ratios is None:
        raise ValueError("choose_scales: max_flops_ratio needs flops_ratios to measure it")
    path = Path(classrepsim_path)
    if not path.is_file():
        raise FileNotFoundError(f"ClassRepSim table not found: {path} (run the baseline's "
                                "metrics stage first)")
    stages = [list(s) for s in model_stages]
    if not stages:
        raise ValueError("choose_scales: the model has no residual stages (model.stages is empty, "
                         "e.g. LeNet-5); STAC needs a residual network")
    for i, blocks in enumerate(stages):
        if not blocks:
            raise ValueError(f"choose_scales: stage {i} lists no blocks")
    return path, stages


@dataclass(frozen=True)
class _Baseline:
    """The baseline's ClassRepSim table, read once: where from, the k read, the measures it holds."""

    path: Path
    table: Any
    k: int
    present: frozenset[str]

    def evidence(self, hook: str, measure: str) -> dict[int, float]:
        return stage_evidence(self.table, hook, self.k, path=self.path, measure=measure)


def _read_baseline(path: Path, k: int) -> _Baseline:
    import polars as pl

    try:
        table = pl.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any read failure: name the file
        raise ValueError(f"cannot read ClassRepSim table {path}: {err}") from err
    missing = sorted({"measure", "hook_a", "scale_a", "scale_b", "k", "value"} - set(table.columns))
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return _Baseline(path, table, k, frozenset(table["measure"].unique().to_list()))


def _stage_entry(baseline: _Baseline, stage: int, hook: str, criterion: str, tau: float,
                 delta: float) -> dict[str, Any]:
    """One stage's record: the criterion's pick at its last block ``hook`` (before the budget),
    its evidence and threshold, and both measures where the table holds them."""
    from rra.metrics.classrepsim import choose_stac_scale, choose_stac_scale_within

    evidence = baseline.evidence(hook, criterion)
    choice = (choose_stac_scale_within(evidence, delta) if criterion == "agreement"
              else choose_stac_scale(evidence, tau))
    entry = {"stage": stage, "hook": hook, "scale": choice.scale, "rule_scale": choice.scale,
             "qualified": choice.qualified, "threshold": choice.tau,
             "evidence": {str(s): v for s, v in choice.evidence.items()}}
    for measure in CRITERIA:
        if TABLE_MEASURE[measure] in baseline.present:
            values = baseline.evidence(hook, measure)
            entry[measure] = {str(s): v for s, v in values.items()}
    return entry


def _apply_budget(per_stage: list[dict[str, Any]],
                  flops_ratios: Callable[[list[list[int]]], list[float]] | None,
                  max_flops_ratio: float | None) -> dict[str, Any] | None:
    """The ``budget`` record (None without ``flops_ratios``); a stage the budget moves gets the
    budget's scale and ``qualified: False`` in ``per_stage``."""
    if flops_ratios is None:
        return None
    budget = fit_budget(per_stage, flops_ratios, max_flops_ratio)
    for entry, scale in zip(per_stage, budget["scales"]):
        if scale != entry["scale"]:
            entry["scale"], entry["qualified"] = scale, False
    del budget["scales"]
    return budget


def fit_budget(stages: Sequence[Mapping[str, Any]],
               flops_ratios: Callable[[list[list[int]]], list[float]],
               max_flops_ratio: float | None) -> dict[str, Any]:
    """Keep the per-stage choice within a FLOPs budget [ours].

    ``stages``: per stage ``scale`` (the criterion's pick), ``evidence`` {"s": value} (the
    candidates and the criterion's measure). ``flops_ratios(list of scale lists)`` gives each
    list's FLOPs over the baseline's. If the criterion's picks fit (ratio ≤ ``max_flops_ratio``,
    or no budget), they stay. Otherwise every combination of per-stage scales no finer than the
    pick is measured, and among those within the budget the one that keeps the most stages at
    their pick wins, then the largest summed evidence, then the lower ratio (then the
    lexicographically smaller scales) — a stage moved off its pick no longer meets the
    criterion, which the caller records and a warning names. If even the cheapest combination
    exceeds the budget: ValueError naming ``stac_auto.max_flops_ratio`` and that ratio
    (an explicit error rather than a silent model beyond the published envelope).

    Returns ``scales``, ``flops_ratio`` (reached), ``max_flops_ratio``, ``rule_scales``,
    ``rule_flops_ratio`` and ``limited`` (whether the budget moved a stage).
    """
    rule = [int(st["scale"]) for st in stages]
    rule_ratio = float(flops_ratios([rule])[0])
    out = {"scales": rule, "flops_ratio": rule_ratio, "max_flops_ratio": max_flops_ratio,
           "rule_scales": rule, "rule_flops_ratio": rule_ratio, "limited": False}
    if max_flops_ratio is None or rule_ratio <= max_flops_ratio:
        return out
    options = [sorted(int(s) for s in st["evidence"] if int(s) <= pick)
               for st, pick in zip(stages, rule)]
    combos = [list(c) for c in itertools.product(*options)]
    ratios = [float(r) for r in flops_ratios(combos)]
    feasible = [(c, r) for c, r in zip(combos, ratios) if r <= max_flops_ratio]
    if not feasible:
        cheapest = min(zip(ratios, combos))
        raise ValueError(f"stac-auto: no scale choice fits the FLOPs budget "
                         f"stac_auto.max_flops_ratio = {max_flops_ratio}: the criterion picks "
                         f"{rule} (FLOPs ratio {rule_ratio:.4f}) and even the cheapest candidate "
                         f"{cheapest[1]} reaches {cheapest[0]:.4f}; raise the budget or embed "
                         "coarser scales")

    def rank(item: tuple[list[int], float]) -> tuple:
        combo, ratio = item
        kept = sum(c == p for c, p in zip(combo, rule))
        score = sum(float(st["evidence"][str(c)]) for st, c in zip(stages, combo))
        return (-kept, -score, ratio, combo)

    scales, ratio = min(feasible, key=rank)
    moved = [i for i, (c, p) in enumerate(zip(scales, rule)) if c != p]
    warnings.warn(f"stac-auto: the criterion's scales {rule} exceed the FLOPs budget "
                  f"(ratio {rule_ratio:.4f} > stac_auto.max_flops_ratio = {max_flops_ratio}); "
                  f"using {scales} (ratio {ratio:.4f}), stage(s) {moved} coarser than the "
                  "criterion allows", stacklevel=2)
    return {**out, "scales": scales, "flops_ratio": ratio, "limited": True}


def stac_flops_ratios(model_args: Mapping[str, Any],
                      attention_kwargs: Mapping[str, Any] | None = None,
                      ) -> Callable[[list[list[int]]], list[float]]:
    """A ``flops_ratios`` for :func:`choose_scales`: FLOPs of the ``stac`` model with each scale
    list over the baseline's, from ``rra.models.cost.cost_table`` (the same numbers as the cost
    table). ``model_args``: a checkpoint's (``name``, ``in_channels``, ``num_classes``,
    ``image_size``, ``kwargs``); ``attention_kwargs``: the other ``stac`` arguments (``mode``).
    """
    from rra.models.cost import cost_table

    extra = {k: v for k, v in dict(attention_kwargs or {}).items() if k != "scales"}

    def ratios(scale_lists: list[list[int]]) -> list[float]:
        variants = {f"stac{list(s)}": {"attention": "stac",
                                       "attention_kwargs": {**extra, "scales": [int(x) for x in s]}}
                    for s in scale_lists}
        rows = {r["variant"]: r["flops_ratio"] for r in cost_table(
            model_args["name"], variants, model_args["in_channels"], model_args["num_classes"],
            model_args["image_size"], model_kwargs=model_args.get("kwargs") or {})}
        return [float(rows[f"stac{list(s)}"]) for s in scale_lists]

    return ratios
