"""Uncertainty and chance levels of the metric tables (rra.metrics.uncertainty, .intervals)
against brute force: the stratified bootstrap against a loop over its resamples, the exact
chance levels against full enumeration of the row permutations, the Monte-Carlo nulls against
their definition, the p-values, the edge cases, the sanity checks firing, and the tables
carrying the columns."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import polars as pl
import pytest

from rra.io import save_npy
from rra.knn import build_graphs, knn_exact
from rra.metrics import uncertainty as U
from rra.metrics.cka import cka_gram, linear_cka
from rra.metrics.class_response import class_response
from rra.metrics.intervals import CkaBoot, RunUncertainty, peer_scores, peer_stats
from rra.metrics.nnts import jaccard_per_row, nnts
from rra.metrics.tables import COMPUTED_TABLES, SCHEMA, run_tables


def random_graph(rng, n, k):
    return np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False)
                     for i in range(n)]).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# bootstrap

def test_bootstrap_matches_brute_force_loop():
    rng = np.random.default_rng(0)
    labels = np.repeat([2, 0, 5], [7, 4, 9])
    rng.shuffle(labels)
    v = rng.normal(size=labels.size)
    boot = U.RowBootstrap(labels, B=50, seed=3)
    idx = boot.indices()
    assert (labels[idx] == labels[None, :]).all()          # stratified: a row's class is kept
    brute = np.array([v[row].mean() for row in idx])
    np.testing.assert_allclose(boot.mean(v), brute, rtol=0, atol=1e-12)
    for c, cls in enumerate(boot.classes):
        where = labels == cls
        brute_c = np.array([v[row[where]].mean() for row in idx])
        np.testing.assert_allclose(boot.class_means(v)[:, c], brute_c, rtol=0, atol=1e-12)
    again = U.RowBootstrap(labels, B=50, seed=3)
    np.testing.assert_array_equal(again.W_sorted, boot.W_sorted)      # same seed, same resamples
    assert not np.array_equal(U.RowBootstrap(labels, B=50, seed=4).W_sorted, boot.W_sorted)
    lo, hi = boot.interval(brute)
    assert lo == pytest.approx(np.quantile(brute, 0.025)) and hi == pytest.approx(
        np.quantile(brute, 0.975))


def test_bootstrap_one_class_and_constant_values():
    labels = np.zeros(12, dtype=np.int64)
    boot = U.RowBootstrap(labels, B=20, seed=0)
    ones = np.ones(12)
    assert boot.class_means(ones).shape == (20, 1)
    lo, hi = boot.interval(boot.mean(ones))
    assert lo == hi == 1.0


# ---------------------------------------------------------------------------------------------
# exact chance levels against enumeration

def subsets_jaccard(n, k):
    items = range(n - 1)
    js = [len(set(a) & set(b)) / len(set(a) | set(b))
          for a in itertools.combinations(items, k) for b in itertools.combinations(items, k)]
    return float(np.mean(js)), float(np.var(js))


@pytest.mark.parametrize("n, k", [(5, 1), (7, 2), (8, 3), (6, 5)])
def test_jaccard_null_against_enumeration_of_subsets(n, k):
    mean, var = U.jaccard_null(n, k)
    ref_mean, ref_var = subsets_jaccard(n, k)
    assert mean == pytest.approx(ref_mean, abs=1e-12) and var == pytest.approx(ref_var, abs=1e-12)
    m_mean, _ = U.overlap_null(n, k)
    assert m_mean == pytest.approx(k / (n - 1))


def test_relabelled_graph_nnts_averages_to_the_exact_null_over_all_permutations():
    """Full enumeration of the n! row correspondences: the mean NNTS of a with b relabelled is
    E[J] exactly, per row, for any graphs (the claim behind the exact null)."""
    rng = np.random.default_rng(1)
    n, k = 6, 2
    a, b = random_graph(rng, n, k), random_graph(rng, n, k)
    mean, var = U.jaccard_null(n, k)
    rows = np.array([jaccard_per_row(a, U.relabel_graph(b, np.array(p)), k)
                     for p in itertools.permutations(range(n))])
    np.testing.assert_allclose(rows.mean(axis=0), mean, atol=1e-12)
    np.testing.assert_allclose(rows.var(axis=0), var, atol=1e-12)
    mutual = np.array([peer_scores("mutual_knn", a, U.relabel_graph(b, np.array(p)))
                       for p in itertools.permutations(range(n))])
    m_mean, m_var = U.overlap_null(n, k)
    np.testing.assert_allclose(mutual.mean(axis=0), m_mean, atol=1e-12)
    np.testing.assert_allclose(mutual.var(axis=0), m_var, atol=1e-12)


def test_relabel_graph_definition():
    rng = np.random.default_rng(2)
    n, k = 9, 3
    b = random_graph(rng, n, k)
    perm = rng.permutation(n)
    inv = np.argsort(perm)
    got = U.relabel_graph(b, perm)
    for i in range(n):
        assert got[i].tolist() == [inv[j] for j in b[perm[i]]]
        assert i not in got[i]


def test_composition_null_against_all_label_shuffles():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    n, k = labels.size, 3
    graph = random_graph(rng, n, k)
    Ps = [class_response(graph, labels[list(p)], k).P for p in itertools.permutations(range(n))]
    p0, v0 = U.composition_null(np.bincount(labels), k)
    np.testing.assert_allclose(np.mean(Ps, axis=0), p0, atol=1e-12)
    # one row's share: hypergeometric variance
    rows = [class_response(graph, labels[list(p)], k).row_fractions[0]
            for p in itertools.permutations(range(n)) if labels[p[0]] == 0]
    np.testing.assert_allclose(np.var(rows, axis=0), v0[0], atol=1e-12)


def test_vote_null_against_all_label_shuffles():
    rng = np.random.default_rng(4)
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    n, k = labels.size, 3
    graph = random_graph(rng, n, k)
    acc = [class_response(graph, labels[list(p)], k).vote_accuracy_per_class
           for p in itertools.permutations(range(n))]
    q = U.vote_null(np.bincount(labels), k, seed=0)
    np.testing.assert_allclose(np.mean(acc, axis=0), q, atol=0.01)   # Monte-Carlo, 20,000 draws


def test_cka_null_against_all_permutations():
    rng = np.random.default_rng(5)
    n = 6
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    ga, gb = cka_gram(x, "x"), cka_gram(y, "y")
    biased = [linear_cka(x, y[list(p)]) for p in itertools.permutations(range(n))]
    debiased = [linear_cka(x, y[list(p)], debiased=True) for p in itertools.permutations(range(n))]
    assert np.mean(biased) == pytest.approx(
        U.cka_null(ga.self_trace, gb.self_trace, ga.sq_norms.sum(), gb.sq_norms.sum(), n),
        abs=1e-12)
    assert np.mean(debiased) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("case", ["gaussian", "heavy-row", "duplicates-and-rank-one"])
def test_cka_null_sd_against_all_permutations(case):
    """The exact permutation sd of CKA (RV coefficient moments; debiased: √(2/(n(n − 3)))),
    against the spread over all n! row permutations."""
    from rra.metrics.intervals import cka_chance, cka_stats

    rng = np.random.default_rng(15)
    n = 7
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2)) ** 2
    if case == "heavy-row":
        x[0] *= 6.0                                       # one row dominates tr(K²)
    if case == "duplicates-and-rank-one":
        x[1] = x[2]
        y = rng.normal(size=(n, 1))                       # β_L = 1
    ga, gb = cka_gram(x, "x"), cka_gram(y, "y")
    for debiased in (False, True):
        values = [linear_cka(x, y[list(p)], debiased=debiased)
                  for p in itertools.permutations(range(n))]
        null, sd = cka_chance(ga.self_trace, ga.sq_norms, gb.self_trace, gb.sq_norms, debiased)
        assert null == pytest.approx(np.mean(values), abs=1e-12)
        assert sd == pytest.approx(np.std(values), rel=1e-9)
        value = linear_cka(x, y, debiased=debiased)
        st = cka_stats(ga.self_trace, ga.sq_norms, gb.self_trace, gb.sq_norms, debiased, value)
        assert st["lo"] is None and st["hi"] is None
        assert st["p"] == pytest.approx(U.p_value(value, null, sd))
    assert U.cka_debiased_null_sd(3) is None and U.cka_null_sd(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3) is None


def test_cka_self_stats_match_the_gram_matrix():
    from rra.metrics.cka import cka_self_stats

    rng = np.random.default_rng(16)
    for shape in ((40, 3), (12, 30)):                      # the feature and the Gram form
        x = rng.normal(size=shape).astype(np.float32)
        g = cka_gram(x, "x")
        kk, a = cka_self_stats(x, "x", block_rows=5)
        assert kk == pytest.approx(g.self_trace, rel=1e-10)
        np.testing.assert_allclose(a, g.sq_norms, rtol=1e-10)


def test_cka_bootstrap_matches_recomputing_on_each_resample():
    rng = np.random.default_rng(6)
    n = 24
    labels = np.arange(n) % 3
    x = rng.normal(size=(n, 5))
    x[5] = x[4]                                                  # duplicated rows
    y = x @ rng.normal(size=(5, 4)) + 0.5 * rng.normal(size=(n, 4))
    u = RunUncertainty(labels, U.Settings(B=30, permutations=8, seed=1))
    cb = CkaBoot(u)
    ga, gb = cka_gram(x, "x"), cka_gram(y, "y")
    idx = u.boot.indices()
    for debiased in (False, True):
        got = cb.resampled(ga, gb, debiased)
        ref = [linear_cka(x[row], y[row], debiased=debiased) for row in idx]
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
        perm_ref = [linear_cka(x, y[p], debiased=debiased) for p in u.perms]
        np.testing.assert_allclose(cb.permuted(ga, gb, debiased), perm_ref, rtol=1e-9, atol=1e-12)
        st = cb.stats(ga, gb, debiased, linear_cka(x, y, debiased=debiased))
        assert st["lo"] <= st["hi"] and set(st) == set(U.COLUMNS)
        assert st["p"] < 0.01                                      # related: far above chance
        assert np.mean(cb.permuted(ga, gb, debiased)) < st["lo"]   # related: above chance


# ---------------------------------------------------------------------------------------------
# Monte-Carlo nulls and p-values

@pytest.mark.parametrize("name", ["cycle_knn", "rank_similarity"])
def test_monte_carlo_null_against_its_definition(name):
    rng = np.random.default_rng(7)
    n, k = 40, 4
    labels = np.arange(n) % 2
    a, b = random_graph(rng, n, k), random_graph(rng, n, k)
    u = RunUncertainty(labels, U.Settings(B=10, permutations=5, seed=2))
    scores = peer_scores(name, a, b)
    st = peer_stats(u, name, a, b, scores, float(scores.mean()))
    samples = []
    for perm, block in zip(u.perms, u.blocks):
        bp = U.relabel_graph(b, perm)
        for i in block:
            if name == "cycle_knn":
                samples.append(float(any(i in a[j] for j in bp[i])))
            else:
                samples.append(float(peer_scores(name, a[i:i + 1], bp[i:i + 1])[0]))
    assert sorted(np.concatenate(u.blocks).tolist()) == list(range(n))  # disjoint, all rows
    null, sd = U.mc_null(np.array(samples), n)
    assert st["null"] == pytest.approx(null, abs=1e-12)
    assert st["p"] == pytest.approx(U.p_value(float(scores.mean()), null, sd), abs=1e-12)


def test_second_order_cosine_null_uses_relabelled_distances():
    rng = np.random.default_rng(8)
    n, k = 30, 3
    x, y = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    a, b = knn_exact(x, k, progress=False)[0], knn_exact(y, k, progress=False)[0]
    from rra.metrics.peers import pairwise_distances, second_order_cosine

    dist = (pairwise_distances(x), pairwise_distances(y))
    scores = peer_scores("second_order_cosine", a, b, dist)
    assert scores.mean() == pytest.approx(second_order_cosine(a, b, x, y, k), abs=1e-12)
    perm = rng.permutation(n)
    from rra.metrics.intervals import _null_rows

    rows = np.arange(n)
    got = _null_rows("second_order_cosine", a, b, perm, rows, dist)
    ref = peer_scores("second_order_cosine", a, knn_exact(y[perm], k, progress=False)[0],
                    (dist[0], pairwise_distances(y[perm])))
    np.testing.assert_allclose(got, ref, atol=1e-12)     # relabelling b = permuting y's rows


def test_p_values():
    assert U.p_value(1.0, 1.0, 0.5) == pytest.approx(0.5)
    assert U.p_value(1.0 + 1.6448536269514722, 1.0, 1.0) == pytest.approx(0.05)
    assert U.p_value(0.2, 0.1, 0.0) == 0.0 and U.p_value(0.1, 0.1, 0.0) == 1.0
    assert U.p_value(0.2, None, None) is None
    assert U.p_value(0.0, 0.5, 0.1) > 0.99


def test_k_at_n_minus_one_collapses_interval_and_is_chance():
    rng = np.random.default_rng(9)
    n = 8
    a, b = random_graph(rng, n, n - 1), random_graph(rng, n, n - 1)
    u = RunUncertainty(np.arange(n) % 2, U.Settings(B=20, permutations=4))
    j = jaccard_per_row(a, b)
    overall, per_class = u.nnts(j, n - 1)
    assert overall["lo"] == overall["hi"] == 1.0 == overall["null"]
    assert overall["p"] == 1.0 and all(c["p"] == 1.0 for c in per_class)
    assert U.jaccard_null(n, n - 1) == (1.0, 0.0)


def test_settings_validation():
    assert not U.Settings.of({"B": 0}).enabled and U.Settings.of(None).B == 200
    for bad, match in (({"B": -1}, "B must"), ({"level": 1.0}, "level"),
                       ({"permutations": 1}, "permutations"), ({"b": 3}, "unknown")):
        with pytest.raises(ValueError, match=match):
            U.Settings.of(bad)


def test_config_rejects_bad_bootstrap_settings(tmp_path):
    from pathlib import Path

    from rra.config import ConfigError, load_config

    root = Path(__file__).resolve().parents[1] / "config"
    cfg = load_config(root / "config.yaml")
    assert cfg["metrics"]["bootstrap"] == {"B": 200, "permutations": 20, "seed": 0, "level": 0.95}
    for bad, key in (("{B: -3}", "metrics.bootstrap.B"), ("{level: 1}", "metrics.bootstrap.level"),
                     ("{permutations: 1}", "metrics.bootstrap.permutations"),
                     ("{b: 2}", "metrics.bootstrap")):
        overlay = tmp_path / "o.yaml"
        overlay.write_text(f"metrics: {{bootstrap: {bad}}}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(root / "config.yaml", overlay)


# ---------------------------------------------------------------------------------------------
# sanity checks

def test_sanity_checks_fire(monkeypatch):
    rng = np.random.default_rng(10)
    n, k = 200, 5
    a = random_graph(rng, n, k)
    U.check_self(a, k, "here")
    z = U.check_shuffled(a, a, k, rng.permutation(n), "here")
    assert abs(z) <= U.SHUFFLE_Z
    with pytest.raises(U.SanityError, match="shuffled-row control"):
        U.check_shuffled(a, a, k, np.arange(n), "nnts, hooks x vs shuffled y")   # no shuffle
    with pytest.raises(U.SanityError, match="kNN graph h@full has 3 rows but the probe has 4"):
        U.check_rows(4, {"labels.npy": np.zeros(4), "kNN graph h@full": np.zeros((3, 2))}, "x")
    import importlib

    nnts_module = importlib.import_module("rra.metrics.nnts")   # the package exports nnts()
    monkeypatch.setattr(nnts_module, "jaccard_from_overlap", lambda m, k: np.full(len(m), 0.9))
    with pytest.raises(U.SanityError, match="itself"):
        U.check_self(a, k, "hook 'conv1'")


def test_shuffled_control_spread_matches_the_null_sd():
    """The tolerance's sd (per-row null sd / √n, rows treated as independent) against the spread
    of real relabellings of clustered kNN graphs."""
    rng = np.random.default_rng(11)
    n, k = 600, 10
    centres = rng.normal(size=(6, 5)) * 4
    x = centres[np.arange(n) % 6] + rng.normal(size=(n, 5))
    a = knn_exact(x, k, progress=False)[0]
    b = knn_exact(x + rng.normal(size=x.shape), k, progress=False)[0]
    values = [nnts(a, U.relabel_graph(b, rng.permutation(n)), k) for _ in range(300)]
    mean, var = U.jaccard_null(n, k)
    assert np.mean(values) == pytest.approx(mean, abs=4 * np.sqrt(var / n / 300))
    assert 0.75 < np.std(values) / np.sqrt(var / n) < 1.33


# ---------------------------------------------------------------------------------------------
# the tables

def tiny_run(tmp_path, n=90, classes=3, wrong_n=False):
    rng = np.random.default_rng(12)
    labels = np.arange(n) % classes
    base = rng.normal(size=(n, 6)) + 3 * np.eye(6)[labels][:, :6]
    emb = tmp_path / "embed"
    emb.mkdir()
    entries = []
    for h, hook in enumerate(["h0", "h1", "h2"]):
        x = np.tanh(base @ rng.normal(size=(6, 6 + h)))
        for scale, y in (("1", x[:, :3]), ("full", x)):
            name = f"{hook}@{scale}.npy"
            save_npy(emb / name, np.asarray(y, dtype=np.float32))
            entries.append({"hook": hook, "scale": scale, "file": name, "shape": list(y.shape)})
    save_npy(emb / "labels.npy", labels[: n - 1] if wrong_n else labels)
    (emb / "manifest.json").write_text(json.dumps(
        {"hooks": ["h0", "h1", "h2"], "scales": ["1", "full"], "entries": entries, "n": n}))
    build_graphs(emb, tmp_path / "knn", k=6, distance="euclidean", backend="exact",
                 progress=False)
    return emb, tmp_path / "knn"


RUN = {"dataset": "t", "model": "m", "attention": "none", "augmentation": "none", "seed": 0,
       "probe": "p"}
#: measures documented without a chance level (null and p empty)
NO_CHANCE = {"nntp_edges", "nntp_runs", "nntp_persistent_all", "classrepsim_spread",
             "class_response_agreement"}


def test_tables_carry_the_columns_and_keep_their_values(tmp_path):
    emb, knn = tiny_run(tmp_path)
    on = run_tables(emb, knn, tmp_path / "on", ks=[3, 6], alphas=[0], run=RUN,
                    bootstrap={"B": 40, "permutations": 4, "seed": 1})
    off = run_tables(emb, knn, tmp_path / "off", ks=[3, 6], alphas=[0], run=RUN,
                     bootstrap={"B": 0})
    assert on["bootstrap"]["B"] == 40 and off["bootstrap"]["B"] == 0
    assert list(SCHEMA)[-4:] == list(U.COLUMNS)
    for name in COMPUTED_TABLES:
        a = pl.read_parquet(tmp_path / "on" / f"{name}.parquet")
        b = pl.read_parquet(tmp_path / "off" / f"{name}.parquet")
        assert a.height > 0 and a.columns == list(SCHEMA)
        assert a.drop(U.COLUMNS).equals(b.drop(U.COLUMNS)), name     # values unchanged
        assert b.select(U.COLUMNS).null_count().sum_horizontal().item() == 4 * b.height
        assert a["lo"].null_count() == 0 and a["hi"].null_count() == 0, name
        chance = a.filter(~pl.col("measure").is_in(NO_CHANCE))
        assert chance["null"].null_count() == 0, name
        assert chance["p"].null_count() == 0, name
        assert a.filter(pl.col("measure").is_in(NO_CHANCE))["null"].null_count() == \
            a.filter(pl.col("measure").is_in(NO_CHANCE)).height
    nnts_t = pl.read_parquet(tmp_path / "on" / "nnts.parquet").filter(pl.col("measure") == "nnts")
    assert (nnts_t["lo"] <= nnts_t["value"] + 1e-12).all()
    assert (nnts_t["value"] <= nnts_t["hi"] + 1e-12).all()
    null3 = U.jaccard_null(90, 3)[0]
    assert nnts_t.filter(pl.col("k") == 3)["null"].to_list() == pytest.approx(
        [null3] * nnts_t.filter(pl.col("k") == 3).height)
    assert (nnts_t["p"] < 0.05).all()                     # related hooks: far above chance


def test_tables_refuse_graphs_of_other_rows(tmp_path):
    emb, knn = tiny_run(tmp_path, wrong_n=True)
    with pytest.raises(U.SanityError, match="labels.npy has 89 rows but the probe has 90"):
        run_tables(emb, knn, tmp_path / "m", ks=[3], alphas=[0], run=RUN)


def test_tables_shuffled_control_fires_on_a_leaking_measure(tmp_path, monkeypatch):
    """A relabelling that forgets to relabel (a bug that leaks the row correspondence) stops the
    analysis, naming the hooks, scale and k."""
    emb, knn = tiny_run(tmp_path)
    monkeypatch.setattr(U, "relabel_graph", lambda idx, perm: idx)
    with pytest.raises(U.SanityError, match=r"hooks 'h0' vs shuffled 'h2' at scale 1, k = 6"):
        run_tables(emb, knn, tmp_path / "m", ks=[6], alphas=[0], run=RUN, tables=["nnts"])


def test_math_of_the_vote_chance_one_class():
    q = U.vote_null(np.array([10]), 3, seed=0)
    assert q.tolist() == [1.0]
    p0, v0 = U.composition_null(np.array([10]), 3)
    assert p0.tolist() == [[1.0]] and v0.tolist() == [[0.0]]
    assert math.isclose(U.overlap_null(10, 9)[0], 1.0)


# ---------------------------------------------------------------------------------------------
# figures

def chart_rows(seeds=(0, 1), with_columns=True):
    from rra.metrics.tables import frame

    rows = []
    for seed in seeds:
        for pos, hook in enumerate(["a", "b", "c"]):
            extra = dict(lo=0.1 * pos, hi=0.1 * pos + 0.2, null=0.05,
                         p=0.5 if hook == "a" or (hook == "b" and seed == 1) else 0.001)
            rows.append(dict(seed=seed, measure="knn_purity", hook_a=hook, pos_a=pos, k=3,
                             scale_a="full", augmentation="none", attention="none",
                             value=0.1 * pos + 0.1, **(extra if with_columns else {})))
            for pb, hb in enumerate(["a", "b", "c"]):
                rows.append(dict(seed=seed, measure="nnts", hook_a=hook, hook_b=hb, pos_a=pos,
                                 pos_b=pb, k=3, scale_a="full", augmentation="none",
                                 attention="none", value=0.5,
                                 **(extra if with_columns else {})))
    return frame(rows, {"dataset": "t", "model": "m", "probe": "p"})


@pytest.mark.parametrize("with_columns", [True, False])
def test_figures_draw_intervals_and_fade_chance_values(with_columns):
    from rra.report import charts

    df = chart_rows(with_columns=with_columns)
    curves = charts.hook_curves(df.filter(pl.col("measure") == "knn_purity"))
    spec = curves.to_dict()
    layers = spec["spec"]["layer"]
    marks = [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in layers]
    assert marks == ["area", "line", "rule", "point"]
    assert layers[2]["encoding"]["y"]["field"] == "ci_lo"
    assert layers[3]["encoding"]["opacity"]["condition"]["test"] == "datum.chance_like"
    data = next(iter(spec["datasets"].values()))
    faded = {r["hook_a"]: r["chance_like"] for r in data}
    assert faded == ({"a": True, "b": True, "c": False} if with_columns
                     else {"a": False, "b": False, "c": False})
    if with_columns:
        c = next(r for r in data if r["hook_a"] == "c")
        assert (c["ci_lo"], c["ci_hi"], c["chance"]) == pytest.approx((0.2, 0.4, 0.05))
    heat = charts.nnts_heatmap(df.filter(pl.col("measure") == "nnts"), column=None).to_dict()
    assert heat["encoding"]["opacity"]["condition"]["test"] == "datum.chance_like"


def test_above_the_dense_size_the_chance_levels_stay(tmp_path, monkeypatch):
    """Above DENSE_MAX_ROWS (no n × n matrices) CKA keeps its exact chance level and p (no
    interval) and second-order cosine its Monte-Carlo null from the embeddings: the same numbers
    as the dense path; between CKA_MAX_ROWS and DENSE_MAX_ROWS CKA has no interval either."""
    from rra.metrics import intervals, tables

    emb, knn = tiny_run(tmp_path)
    kw = dict(ks=[6], alphas=[0], run=RUN, tables=["peers", "cka"],
              bootstrap={"B": 30, "permutations": 3})
    run_tables(emb, knn, tmp_path / "dense", **kw)
    monkeypatch.setattr(intervals, "CKA_MAX_ROWS", 0)
    run_tables(emb, knn, tmp_path / "no-boot", **kw)
    monkeypatch.setattr(tables, "DENSE_MAX_ROWS", 0)
    run_tables(emb, knn, tmp_path / "plain", **kw)
    for folder in ("no-boot", "plain"):
        for name in ("peers", "cka"):
            d = pl.read_parquet(tmp_path / "dense" / f"{name}.parquet")
            p = pl.read_parquet(tmp_path / folder / f"{name}.parquet")
            for column in ("value", "null", "p"):
                np.testing.assert_allclose(d[column].to_numpy(), p[column].to_numpy(),
                                           rtol=1e-9, atol=1e-10, err_msg=f"{folder} {name}")
            if name == "peers":
                np.testing.assert_allclose(d["lo"].to_numpy(), p["lo"].to_numpy(), atol=1e-10)
        cka = pl.read_parquet(tmp_path / folder / "cka.parquet")
        assert cka["lo"].null_count() == cka["hi"].null_count() == cka.height
        assert cka["null"].null_count() == cka["p"].null_count() == 0
    soc = pl.read_parquet(tmp_path / "plain" / "peers.parquet").filter(
        pl.col("measure") == "second_order_cosine")
    assert soc.height > 0 and soc["null"].null_count() == 0 and soc["p"].null_count() == 0


def test_api_analyse_returns_the_columns(tmp_path):
    import torch

    from rra.api import analyse

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3)).eval()
    x, y = torch.randn(40, 3, 2, 2), torch.arange(40) % 2
    on = analyse(model, x, y, hooks=["1", "2", "3"], k=4, progress=False,
                 bootstrap={"B": 25, "permutations": 3})
    off = analyse(model, x, y, hooks=["1", "2", "3"], k=4, progress=False, bootstrap={"B": 0})
    for name in ("nnts", "class_response", "peers"):
        assert on[name].columns == list(SCHEMA) and on[name]["lo"].null_count() == 0, name
        assert off[name]["lo"].null_count() == off[name].height, name
        assert on[name].drop(U.COLUMNS).equals(off[name].drop(U.COLUMNS)), name


def test_shuffled_control_allows_for_hubs():
    """Graphs whose rows share their neighbours (hubs: here every row's k nearest are the same
    k rows) correlate the rows' overlaps under one relabelling, so the per-row sd / √n is far
    too small; the control then takes the spread of more relabellings and passes, while a
    graph compared with itself unshuffled still fails."""
    n, k = 200, 100
    hubs = np.arange(k + 1)
    graph = np.array([[j for j in hubs if j != i][:k] for i in range(n)])
    mean, var = U.jaccard_null(n, k)
    rng = np.random.default_rng(3)
    perms = [rng.permutation(n) for _ in range(5)]
    from rra.metrics.nnts import nnts
    naive = [abs(nnts(graph, U.relabel_graph(graph, p), k) - mean) / np.sqrt(var / n) for p in perms]
    assert max(naive) > U.SHUFFLE_Z          # the per-row sd alone would call a false alarm
    for p in perms:
        assert abs(U.check_shuffled(graph, graph, k, p, "hubs")) <= U.SHUFFLE_Z
    with pytest.raises(U.SanityError):
        U.check_shuffled(graph, graph, k, np.arange(n), "hubs, no shuffle")
