"""The registry of measures (rra.metrics.registry): every measure declared once with every field,
its declared symmetry and invariances hold, and the metric tables are built from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rra.metrics import MEASURES, Measure, measure_properties, measures_in
from rra.metrics.registry import KINDS, PROPERTY_COLUMNS, TAGS
from rra.metrics.tables import COMPUTED_TABLES, ROW_BUILDERS, TABLES
from test_metrics_peers import brute_knn

K = 5


def test_every_measure_has_every_field():
    assert MEASURES, "the registry is empty"
    for name, m in MEASURES.items():
        assert isinstance(m, Measure) and m.name == name
        assert callable(m.fn)
        assert m.kind in KINDS and m.tag in TAGS
        # the held-out placement's table (E11) is its own stage's, not run_tables'
        assert m.table in (*COMPUTED_TABLES, "placement") and m.outputs
        assert all(isinstance(o, str) for o in m.outputs)
        assert isinstance(m.needs_embeddings, bool)
        assert m.needs_embeddings == ("embeddings" in m.kind)
        assert m.invariances and all(isinstance(v, str) and v for v in m.invariances)
        assert isinstance(m.source, str) and m.source and isinstance(m.note, str)
        for flag in (m.symmetric, m.larger_is_more_similar):
            # None only for a measure of one representation (class response, placement)
            assert isinstance(flag, bool) or (
                flag is None and m.kind in ("graph+labels", "heldout+embeddings")), name
        assert m.tag_text.startswith(f"[{m.tag}") and m.source in m.tag_text
    # each table value of the measure column belongs to one measure
    outputs = [o for m in MEASURES.values() for o in m.outputs]
    assert len(outputs) == len(set(outputs))


def test_measure_checks_its_fields():
    m = MEASURES["mutual_knn"]
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(m, kind="triple")
    with pytest.raises(ValueError, match="tag"):
        dataclasses.replace(m, tag="borrowed")
    with pytest.raises(ValueError, match="needs_embeddings"):
        dataclasses.replace(m, needs_embeddings=True)
    with pytest.raises(ValueError, match="symmetric"):
        dataclasses.replace(m, symmetric=None)
    with pytest.raises(ValueError, match="invariances"):
        dataclasses.replace(m, invariances=())


def test_properties_table():
    df = measure_properties()
    assert df.columns == list(PROPERTY_COLUMNS)
    assert df["name"].to_list() == list(MEASURES)
    for col in ("symmetric", "larger_is_more_similar", "needs_embeddings"):
        assert df.schema[col] == pl.Boolean
    row = df.row(df["name"].to_list().index("linear_cka"), named=True)
    assert row == dict(name="linear_cka", table="cka", kind="embeddings", symmetric=True,
                       larger_is_more_similar=True, needs_embeddings=True,
                       invariances="orthogonal transforms; isotropic scaling; translation",
                       tag="source", source="Kornblith et al. 2019", note="",
                       outputs="linear_cka")
    assert df.filter(pl.col("name") == "class_response")["symmetric"].to_list() == [None]
    assert df.filter(pl.col("name") == "cycle_knn")["symmetric"].to_list() == [False]
    assert set(df.filter(pl.col("tag") == "ours")["name"]) == {
        "class_response", "classrepsim", "placement_acc", "placement_train_acc", "placement_gap",
        "placement_purity", "placement_agreement"}


def test_every_table_of_measures_has_a_builder():
    assert TABLES == (*COMPUTED_TABLES, "knn")
    assert COMPUTED_TABLES == ("nnts", "nntp", "class_response", "classrepsim", "peers", "cka")
    assert set(ROW_BUILDERS) == set(COMPUTED_TABLES)
    assert [m.name for m in measures_in("peers")] == ["mutual_knn", "cycle_knn",
                                                      "rank_similarity", "second_order_cosine"]
    with pytest.raises(ValueError, match="no registered measure writes table 'knn'"):
        measures_in("knn")


def _table_lists(node):
    """Every ``enum`` and list ``default`` naming ``nnts`` in a parsed JSON schema."""
    if isinstance(node, dict):
        for key in ("enum", "default"):
            if isinstance(node.get(key), list) and "nnts" in node[key]:
                yield tuple(node[key])
        node = list(node.values())
    if isinstance(node, list):
        for v in node:
            yield from _table_lists(v)


def test_config_schema_names_the_registered_tables():
    """The config's analysis ``tables:`` (enum and default) are the tables of the registry."""
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "schema.yaml")
                            .read_text())
    found = set(_table_lists(schema))
    assert found == {COMPUTED_TABLES}


def test_tables_write_exactly_the_registered_outputs(tmp_path):
    from rra.api import analyse

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 3)).eval()
    x, y = torch.randn(24, 1, 8, 8), torch.arange(24) % 3
    tables = analyse(model, x, y, hooks=["1", "2", "4"], scales=[1, 2, "full"], k=[3],
                     out_dir=tmp_path, progress=False)
    for table in COMPUTED_TABLES:
        written = set(tables[table]["measure"].unique().to_list())
        assert written == {o for m in measures_in(table) for o in m.outputs}, table


# ------------------------------------------------------------------------------------------
# declared symmetry and invariances, on seeded data


def _value(m: Measure, xa: np.ndarray, xb: np.ndarray, distance: str, labels: np.ndarray):
    """The measure on two representations, computed from their exact graphs as its kind says;
    results reduced to arrays of numbers."""
    ga, gb = brute_knn(xa, K, distance), brute_knn(xb, K, distance)
    if m.kind == "pair":
        return m.fn(ga, gb, K)
    if m.kind == "pair+embeddings":
        return m.fn(ga, gb, xa, xb, K, distance)
    if m.kind == "embeddings":
        return m.fn(xa, xb)
    if m.kind == "chain":
        res = m.fn([ga, gb], K)
        return np.array([*res.table.ravel(), res.persistent_all])
    if m.kind == "graph+labels":
        res = m.fn(ga, labels, K)
        return np.array([*res.P.ravel(), res.purity, res.vote_accuracy])
    if m.kind == "heldout+embeddings":  # rows 0-19 the reference, 20-29 held out
        from rra.metrics.placement import placement_rows

        rows = placement_rows(["a", "b"], {"a": xa[:20], "b": xb[:20]},
                              {"a": xa[20:], "b": xb[20:]}, labels[:20], labels[20:], K,
                              distance)
        return np.array([r["value"] for r in rows if r["measure"] in m.outputs])
    res = m.fn({"a": ga, "b": gb}, labels, K)  # scales+labels
    return np.concatenate([res.S.ravel(), res.agreement.ravel()])


def _transforms(rng: np.random.Generator, d: int) -> dict[str, callable]:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    shift = rng.normal(size=d) * 3.0
    return {"orthogonal transforms": lambda x: x @ q, "isotropic scaling": lambda x: 2.5 * x,
            "translation": lambda x: x + shift}


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("name", list(MEASURES))
def test_declared_invariances_and_symmetry_hold(name, distance):
    m = MEASURES[name]
    rng = np.random.default_rng(7)
    base = rng.normal(size=(30, 3))
    xa = base @ rng.normal(size=(3, 6)) + 0.5 * rng.normal(size=(30, 6)) + 1.0
    xb = base @ rng.normal(size=(3, 4)) + 0.5 * rng.normal(size=(30, 4)) - 2.0
    labels = np.arange(30) % 3
    ref = _value(m, xa, xb, distance, labels)
    for invariance in m.invariances:
        kind, _, scope = invariance.partition(" (")
        if scope == "euclidean distance only)" and distance != "euclidean":
            continue
        moved = _transforms(rng, xa.shape[1])[kind](xa)
        np.testing.assert_allclose(_value(m, moved, xb, distance, labels), ref, rtol=0,
                                   atol=1e-9, err_msg=f"{name}: {invariance}")
    if m.symmetric and m.kind in ("pair", "pair+embeddings", "embeddings"):
        assert _value(m, xb, xa, distance, labels) == pytest.approx(ref, abs=1e-12)
    if m.symmetric and m.kind == "chain":   # reversing the chain: T transposed, same persistent_all
        back = _value(m, xb, xa, distance, labels)
        np.testing.assert_array_equal(back[:4].reshape(2, 2), ref[:4].reshape(2, 2)[::-1, ::-1].T)
        assert back[4] == ref[4]
