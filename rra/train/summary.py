"""Accuracy summary of a study: every run's ``metrics.json`` as one tidy table.

One row per run: the run's identity (dataset, run, model, attention — the grid's variant name,
e.g. ``stac-auto`` — augmentation, seed) and its final numbers from ``metrics.json``
(:data:`COLUMNS`). Written as ``{stem}.parquet`` and ``{stem}.csv``.

Uncertainty and chance [ours] (docs/methods.md §4), from ``eval_acc`` and ``n_eval``:
``eval_acc_lo``, ``eval_acc_hi``: the Wilson score interval at :data:`LEVEL` (the binomial
proportion's interval that keeps its coverage near 0 and 1, where the normal one does not:
the set of p₀ with |acc − p₀| ≤ z √(p₀(1 − p₀)/n)); ``eval_acc_null``: 1/C, the expected
accuracy of guessing uniformly at random among the C classes (``model_args.num_classes`` of
``metrics.json``; exact whatever the class balance of the evaluation split);
``eval_acc_p``: one-sided p of accuracy > 1/C, 1 − Φ((acc − 1/C) / √((1/C)(1 − 1/C)/n)).
The four are null when ``metrics.json`` lacks ``num_classes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rra.io import PathLike, read_json, write_table

IDENTITY = {"dataset": "str", "run": "str", "model": "str", "attention": "str",
            "augmentation": "str", "seed": "int"}
#: the columns taken from metrics.json (written by rra.train.train)
COLUMNS = {"eval_acc": "float", "train_acc": "float", "eval_loss": "float", "train_loss": "float",
           "params": "int", "epochs": "int", "n_train": "int", "n_eval": "int",
           "seconds": "float", "device": "str"}
#: the accuracy's interval and chance level (module docstring)
CHANCE_COLUMNS = {"eval_acc_lo": "float", "eval_acc_hi": "float", "eval_acc_null": "float",
                  "eval_acc_p": "float"}
#: every column of the table, in order (the summary rule reruns when they change)
TABLE_COLUMNS = (*IDENTITY, *COLUMNS, *CHANCE_COLUMNS)
#: coverage of the accuracy's Wilson interval (the metric tables' default level)
LEVEL = 0.95


def wilson_interval(acc: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``acc`` observed on ``n`` trials."""
    from scipy.special import ndtri

    if n < 1:
        raise ValueError(f"wilson_interval: n must be at least 1, got {n}")
    z = float(ndtri(0.5 + level / 2))
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def accuracy_chance(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """:data:`CHANCE_COLUMNS` of one run's ``metrics.json`` (module docstring)."""
    from scipy.special import ndtr   # the p of rra.metrics.uncertainty, a layer above this one

    classes = (metrics.get("model_args") or {}).get("num_classes")
    n, acc = int(metrics["n_eval"]), float(metrics["eval_acc"])
    if not classes or n < 1:
        return dict.fromkeys(CHANCE_COLUMNS)
    lo, hi = wilson_interval(acc, n)
    q = 1.0 / int(classes)
    return {"eval_acc_lo": lo, "eval_acc_hi": hi, "eval_acc_null": q,
            "eval_acc_p": float(ndtr(-(acc - q) / np.sqrt(q * (1 - q) / n))) if classes > 1
            else None}


def accuracy_summary(runs: Sequence[Mapping[str, Any]], dataset: str, out_stem: PathLike) -> Any:
    """Collect the ``metrics.json`` of each run into ``{out_stem}.parquet`` (+ ``.csv``).

    ``runs``: dicts with ``model, attention, augmentation, seed`` and ``metrics`` (the path of
    the run's ``metrics.json``). Rows keep the order of ``runs``. Raises FileNotFoundError for a
    missing file and ValueError for an incomplete run or a file lacking a column.
    Returns the polars frame written.
    """
    import polars as pl

    types = {"str": pl.Utf8, "int": pl.Int64, "float": pl.Float64}
    rows = []
    for run in runs:
        missing = [k for k in ("model", "attention", "augmentation", "seed", "metrics") if k not in run]
        if missing:
            raise ValueError(f"accuracy_summary: run {dict(run)} lacks key(s) {missing}")
        path = Path(run["metrics"])
        metrics = read_json(path)
        if not metrics.get("complete", False):
            raise ValueError(f"{path}: the run is not complete (metrics.complete is false)")
        absent = [c for c in COLUMNS if c not in metrics]
        if absent:
            raise ValueError(f"{path}: missing key(s) {absent}")
        name = f"{run['model']}-{run['attention']}-{run['augmentation']}-s{int(run['seed'])}"
        rows.append({"dataset": dataset, "run": name, "model": run["model"],
                     "attention": run["attention"], "augmentation": run["augmentation"],
                     "seed": int(run["seed"]), **{c: metrics[c] for c in COLUMNS},
                     **accuracy_chance(metrics)})
    schema = {c: types[t] for c, t in {**IDENTITY, **COLUMNS, **CHANCE_COLUMNS}.items()}
    df = pl.DataFrame(rows, schema=schema)
    write_table(df, Path(out_stem))
    return df
