"""Accuracy summary of a study: every run's ``metrics.json`` as one tidy table.

One row per run: the run's identity (dataset, run, model, attention — the grid's variant name,
e.g. ``stac-auto`` — augmentation, seed) and its final numbers from ``metrics.json``
(:data:`COLUMNS`). Written as ``{stem}.parquet`` and ``{stem}.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from rra.io import PathLike, read_json, write_table

IDENTITY = {"dataset": "str", "run": "str", "model": "str", "attention": "str",
            "augmentation": "str", "seed": "int"}
#: the columns taken from metrics.json (written by rra.train.train)
COLUMNS = {"eval_acc": "float", "train_acc": "float", "eval_loss": "float", "train_loss": "float",
           "params": "int", "epochs": "int", "n_train": "int", "n_eval": "int",
           "seconds": "float", "device": "str"}


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
                     "seed": int(run["seed"]), **{c: metrics[c] for c in COLUMNS}})
    schema = {c: types[t] for c, t in {**IDENTITY, **COLUMNS}.items()}
    df = pl.DataFrame(rows, schema=schema)
    write_table(df, Path(out_stem))
    return df
