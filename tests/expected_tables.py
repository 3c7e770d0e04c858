"""The tiny study's tables as stored expected values (as torchvision keeps expected outputs), so a
refactor that changes a number fails: tests/test_workflow.py compares a fresh run of the tiny
study with tests/expected/tiny-study.csv.gz.

Every parquet table under results/ is read into long rows (table path with the run folder kept,
the row's key columns joined, value). Left out by design: measured seconds and the device
(accuracy table), which differ between identical runs. Regenerate after an intended change of
numbers with ``RRA_UPDATE_EXPECTED=1 .venv/bin/python -m pytest tests/test_workflow.py -k
expected`` and say in the commit why the numbers changed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import polars as pl

EXPECTED = Path(__file__).resolve().parent / "expected" / "tiny-study.csv.gz"
#: where the values were computed: torch's CPU kernels take other code paths (and round
#: otherwise) on another vector instruction set or torch version, and two training epochs carry
#: such differences into the weights, so the comparison is made only where both match
ORIGIN = EXPECTED.with_name("tiny-study.origin.json")
#: columns whose values differ between identical runs (measured, machine-dependent)
VOLATILE = ("seconds", "device")
#: float columns that name a row rather than hold a value (the margins' quartile)
FLOAT_KEYS = ("quantile",)
#: tolerance of the comparison: the tables are computed in float64 from float32 embeddings; a
#: different CPU's vector units may round a float32 product differently, nothing more
RTOL, ATOL = 1e-5, 1e-7


def long_rows(results: Path) -> pl.DataFrame:
    """(table, key, value) for every numeric cell of every parquet table under ``results``; the
    key joins the row's non-numeric and integer columns (``name=value``), so a row is found
    again whatever the table's row order."""
    frames = []
    for path in sorted(results.rglob("*.parquet")):
        rel = path.relative_to(results).as_posix()
        table = pl.read_parquet(path)
        table = table.drop([c for c in table.columns  # measured, or an unused schema column
                            if c in VOLATILE or table[c].null_count() == table.height])
        values = [c for c, t in table.schema.items() if t.is_float() and c not in FLOAT_KEYS]
        keys = [c for c in table.columns if c not in values]
        key = pl.concat_str([pl.format(f"{c}={{}}", pl.col(c).cast(pl.String).fill_null("-"))
                             for c in keys], separator=",") if keys else pl.lit("")
        for col in values:
            frames.append(table.select(pl.lit(rel).alias("table"),
                                       (key + pl.lit(f",{col}")).alias("key"),
                                       pl.col(col).cast(pl.Float64).alias("value")))
    return pl.concat(frames).sort("table", "key")


def write_expected(rows: pl.DataFrame, path: Path = EXPECTED) -> None:
    buf = io.BytesIO()
    rows.write_csv(buf, float_precision=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))


def read_expected(path: Path = EXPECTED) -> pl.DataFrame:
    return pl.read_csv(io.BytesIO(gzip.decompress(path.read_bytes())),
                       schema={"table": pl.String, "key": pl.String, "value": pl.Float64})


def origin() -> dict:
    """This machine's torch version and CPU instruction set."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def compare(results: Path) -> None:
    """Assert that the tables under ``results`` hold the stored values (or store them with
    ``RRA_UPDATE_EXPECTED=1``); skip, naming both, where the stored values come from another
    torch version or CPU instruction set (:data:`ORIGIN`)."""
    import pytest

    rows = long_rows(results)
    if os.environ.get("RRA_UPDATE_EXPECTED", "") not in ("", "0"):
        write_expected(rows)
        ORIGIN.write_text(json.dumps(origin(), indent=1) + "\n")
    stored, here = json.loads(ORIGIN.read_text()), origin()
    if stored != here:
        pytest.skip(f"the expected values were computed with {stored}, this machine has {here}: "
                    "regenerate them here to compare (tests/expected_tables.py)")
    expected = read_expected()
    missing = expected.join(rows, on=["table", "key"], how="anti")
    extra = rows.join(expected, on=["table", "key"], how="anti")
    assert missing.height == 0 and extra.height == 0, (
        f"{missing.height} stored values missing, {extra.height} new values (rows added or "
        f"removed?): {missing.head(5).rows()} {extra.head(5).rows()}")
    joined = expected.join(rows, on=["table", "key"], how="inner", suffix="_now")
    assert joined.height == expected.height, "a (table, key) pair is not unique"
    a, b = joined["value"].to_numpy(), joined["value_now"].to_numpy()
    same = np.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)
    changed = joined.filter(pl.Series(~same))
    assert changed.height == 0, (
        f"{changed.height} of {joined.height} values differ from tests/expected (a changed "
        f"number; if intended, regenerate as tests/expected_tables.py says): "
        f"{changed.head(10).rows()}")
