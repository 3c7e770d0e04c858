"""STAC stage: the per-stage condensation scales of ``stac-auto``, chosen from ClassRepSim.

This closes the loop analysis → design (methods.md "Scale choice for STAC" [ours]):

1. the baseline (the same model with attention ``none``, augmentation and seed from the config
   block ``stac_auto``) is trained, embedded and analysed like every run;
2. :func:`choose_scales` reads the baseline's ``classrepsim.parquet`` and, for each network
   stage, the class-mean similarity S_v[s, full] at the stage's last block v (at ``k``);
3. the ``stac-auto`` run trains the ``stac`` module with those scales (``rra train
   --attention-kwargs-file``), so its checkpoint's spec holds the scales actually used.

Scale choice per stage [ours]: with S_v[s, full] = mean over classes c of the mean over rows i of
class c of Jaccard(K_(v,s)[i], K_(v,full)[i]) (ClassRepSim, methods.md §3), the chosen scale is

    s* = min{ s : S_v[s, full] ≥ τ }      (coarsest qualifying scale),
    s* = max{ s }                         if no scale qualifies ("qualified": false),

over the integer scales s embedded at v (``rra.metrics.classrepsim.choose_stac_scale``). The
candidates are the scales present in the table: the embed stage skips scales larger than the
hook's feature map, so s* never exceeds the stage's map size. The last block of a stage is the
hook whose output the stage passes on, so it summarises what the stage's attention must keep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rra.io import PathLike, provenance, sha256_file, write_json

#: columns that identify the analysed run in a metric table (recorded as the baseline)
_IDENTITY = ("dataset", "model", "attention", "augmentation", "seed", "probe", "distance", "backend")
FULL = "full"


def stage_evidence(table: Any, hook: str, k: int, *, path: PathLike = "classrepsim table") -> dict[int, float]:
    """{s: class-mean S_hook[s, full]} at ``k`` from a ClassRepSim table (``classrepsim_mean`` rows).

    Raises ValueError naming the hook, k or scale that the table lacks, or a (hook, s) pair
    that occurs more than once (a table holding several runs or probes).
    """
    import polars as pl

    rows = table.filter(pl.col("measure") == "classrepsim_mean")
    if rows.height == 0:
        raise ValueError(f"{path}: no 'classrepsim_mean' rows (is this a classrepsim table?)")
    at_k = rows.filter(pl.col("k") == int(k))
    if at_k.height == 0:
        raise ValueError(f"{path}: no classrepsim_mean rows at k={k}; the table has k in "
                         f"{sorted(rows['k'].unique().to_list())} (set stac_auto.k to one of "
                         "knn.k)")
    at_hook = at_k.filter(pl.col("hook_a") == hook)
    if at_hook.height == 0:
        raise ValueError(f"{path}: no classrepsim_mean rows for hook {hook!r} at k={k}; hooks in "
                         f"the table: {sorted(at_k['hook_a'].unique().to_list())}")
    to_full = at_hook.filter((pl.col("scale_b") == FULL) & (pl.col("scale_a") != FULL))
    if to_full.height == 0:
        raise ValueError(f"{path}: hook {hook!r} at k={k} has no rows comparing an integer scale "
                         f"with scale {FULL!r}; scales in the table: "
                         f"{sorted(set(at_hook['scale_a'].to_list()) | set(at_hook['scale_b'].to_list()))} "
                         "(embed.scales needs 'full' and at least one integer scale)")
    evidence: dict[int, float] = {}
    for scale, value in zip(to_full["scale_a"].to_list(), to_full["value"].to_list()):
        if not str(scale).isdigit() or int(scale) < 1:
            raise ValueError(f"{path}: hook {hook!r} has scale {scale!r}, neither a positive "
                             f"integer nor {FULL!r}")
        if int(scale) in evidence:
            raise ValueError(f"{path}: hook {hook!r}, k={k}, scale {scale} occurs more than once; "
                             "the table must hold one run at one probe, distance and backend")
        evidence[int(scale)] = float(value)
    return dict(sorted(evidence.items()))


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
                  out_path: PathLike, *, tau: float, k: int) -> dict[str, Any]:
    """Choose one STAC scale per stage from a baseline's ClassRepSim table; write it as JSON.

    ``model_stages``: the baseline's ``model.stages`` (block names per stage, forward order);
    stage i is summarised at its last block ``model_stages[i][-1]``. For each stage, the
    evidence {s: S_v[s, full]} at ``k`` (:func:`stage_evidence`) goes to
    ``rra.metrics.classrepsim.choose_stac_scale(evidence, tau)`` (coarsest s with
    S_v[s, full] ≥ τ, else the finest s) [ours].

    Writes ``out_path`` (JSON) and returns its contents: ``scales`` (one int per stage, the
    ``attention_kwargs`` of ``stac``), ``tau``, ``k``, ``stages`` (per stage: stage, hook,
    scale, qualified, evidence {"s": value}), ``baseline`` (the table's identity columns),
    ``classrepsim`` (path), ``classrepsim_sha256`` and ``provenance``.
    Raises FileNotFoundError for a missing table and ValueError for a model without stages or
    a table lacking the hook, k or scales needed.
    """
    import polars as pl

    from rra.metrics.classrepsim import choose_stac_scale

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
    k = int(k)
    try:
        table = pl.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any read failure: name the file
        raise ValueError(f"cannot read ClassRepSim table {path}: {err}") from err
    missing = sorted({"measure", "hook_a", "scale_a", "scale_b", "k", "value"} - set(table.columns))
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    per_stage = []
    for i, blocks in enumerate(stages):
        hook = blocks[-1]
        choice = choose_stac_scale(stage_evidence(table, hook, k, path=path), tau)
        per_stage.append({"stage": i, "hook": hook, "scale": choice.scale,
                          "qualified": choice.qualified,
                          "evidence": {str(s): v for s, v in choice.evidence.items()}})
    result = {
        "scales": [s["scale"] for s in per_stage],
        "tau": float(tau),
        "k": k,
        "stages": per_stage,
        "baseline": _baseline_of(table, path),
        "classrepsim": str(path),
        "classrepsim_sha256": sha256_file(path),
    }
    result["provenance"] = provenance(config={"tau": float(tau), "k": k, "stages": stages})
    write_json(out_path, result)
    return result


def read_attention_kwargs(path: PathLike) -> dict[str, Any]:
    """The ``stac`` keyword arguments stored in a :func:`choose_scales` file: ``{"scales": [...]}``.

    What ``rra train --attention-kwargs-file`` and the cost stage merge into a run's
    ``attention_kwargs``. Raises FileNotFoundError / ValueError naming the file.
    """
    from rra.io import read_json

    data = read_json(path)
    scales = data.get("scales") if isinstance(data, dict) else None
    if (not isinstance(scales, list) or not scales
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scales)):
        raise ValueError(f"{path}: key 'scales' must be a non-empty list of positive integers "
                         f"(one per stage), got {scales!r}")
    return {"scales": list(scales)}
