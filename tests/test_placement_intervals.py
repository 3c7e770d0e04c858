"""The uncertainty columns (lo, hi, null, p) of the held-out placement table (E11) and of the
representation dynamics table (E10): every interval against a brute-force resample (the same
seeded row indices, recomputed the slow way), every chance level against exact enumeration on a
tiny case, B = 0, and the figures' bars and fading (docs/methods.md §4). [ours]"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from rra.metrics import uncertainty as U
from rra.metrics.class_response import class_response
from rra.metrics.intervals import (PlacementUncertainty, RunUncertainty, class_response_stats,
                                   heldout_seed)
from rra.metrics.placement import placement_rows, placement_table
from rra.metrics.tables import SCHEMA
from test_placement import brute_cross, brute_loo, brute_vote, embeddings


# ---------------------------------------------------------------------------------------------
# chance levels: exact enumeration of every k-subset of a tiny reference set

def _subsets(n: int, k: int) -> list[tuple[int, ...]]:
    return list(combinations(range(n), k))


@pytest.mark.parametrize("sizes, k", [([3, 2, 4], 3), ([1, 4, 2, 0], 2), ([5, 5], 4)])
def test_vote_chance_of_a_reference_draw_by_enumeration(sizes, k):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    exact = np.zeros(len(sizes))
    subsets = _subsets(labels.size, k)
    for s in subsets:
        exact[brute_vote(labels[list(s)])] += 1
    exact /= len(subsets)
    got = U.vote_null_reference(np.array(sizes), k, seed=0)
    assert got == pytest.approx(exact, abs=0.015)  # 20,000 draws: sd ≤ 0.0036
    assert got[np.array(sizes) == 0].sum() == 0.0
    # the metric tables' vote chance draws from the n − 1 *other* rows: a different number
    if min(sizes) > 0:
        assert np.abs(U.vote_null(np.array(sizes), k, seed=0) - exact).max() > 0.03


@pytest.mark.parametrize("sizes, k", [([3, 2, 4], 3), ([1, 4, 2], 1), ([2, 6], 7)])
def test_share_chance_of_a_reference_draw_by_enumeration(sizes, k):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    shares = np.array([[np.mean(labels[list(s)] == c) for c in range(len(sizes))]
                       for s in _subsets(labels.size, k)])
    mean, var = U.share_null_reference(np.array(sizes), k)
    assert mean == pytest.approx(shares.mean(axis=0), abs=1e-12)
    assert var == pytest.approx(shares.var(axis=0), abs=1e-12)


@pytest.mark.parametrize("population, k", [(7, 3), (6, 1), (5, 5), (8, 4)])
def test_jaccard_of_two_random_reference_subsets_by_enumeration(population, k):
    subsets = [set(s) for s in _subsets(population, k)]
    j = np.array([len(a & b) / len(a | b) for a in subsets for b in subsets])
    mean, var = U.subset_jaccard_null(population, k)
    assert mean == pytest.approx(j.mean(), abs=1e-12)
    assert var == pytest.approx(j.var(), abs=1e-12)
    if k < population:  # jaccard_null(n, k) draws from n − 1 rows: not the reference's n_R
        assert U.jaccard_null(population, k)[0] != pytest.approx(j.mean(), abs=1e-6)


def test_two_sided_p():
    assert U.p_two_sided(0.1, 0.0, 0.05) == pytest.approx(2 * norm.sf(2.0))
    assert U.p_two_sided(-0.1, 0.0, 0.05) == pytest.approx(2 * norm.sf(2.0))
    assert U.p_two_sided(0.0, 0.0, 0.05) == 1.0
    assert U.p_two_sided(0.2, 0.0, 0.0) == 0.0 and U.p_two_sided(0.0, 0.0, 0.0) == 1.0
    assert U.p_two_sided(0.2, None, 0.1) is None


def test_heldout_resamples_are_not_the_reference_ones():
    y = np.repeat(np.arange(3), 5)  # equal class sizes: one seed would pair the resamples
    unc = PlacementUncertainty(y, y, U.Settings(B=20, seed=0))
    assert np.array_equal(unc.ref.boot.indices(), U.RowBootstrap(y, 20, 0).indices())
    assert not np.array_equal(unc.boot.indices(), unc.ref.boot.indices())
    assert heldout_seed(0) == heldout_seed(0) != heldout_seed(1)


def test_settling_per_resample_and_its_interval_stay_on_kept_epochs():
    from rra.metrics.dynamics import SLACK
    from rra.metrics.intervals import discrete_interval, settling_resamples

    d = np.array([[0.9, 0.2, 0.6, 0.5],    # drops below τ at epoch 1, settles at its return
                  [0.6, 0.7, 0.5, 0.1],    # every D ≥ τ: the first epoch
                  [0.1, 0.2, 0.3, 0.9],    # never: the final epoch (whatever its value)
                  [0.5 - 1e-12, 0.4, 0.6, 1.0]])   # below τ at epoch 2: 5
    assert settling_resamples([0, 2, 5, 9], d, 0.5, SLACK).tolist() == [5, 0, 9, 5]
    d[3, 1] = 0.5  # now 0.5 − 1e-12 at epoch 0 counts (the slack): 0
    assert settling_resamples([0, 2, 5, 9], d, 0.5, SLACK)[3] == 0
    boot = U.RowBootstrap(np.zeros(3, int), 1, 0, level=0.5)
    samples = np.array([0, 2, 2, 5, 9, 9, 9, 9], float)
    # lower 25 % and higher 75 % quantiles: kept epochs, never interpolated (linear: 2, 9)
    assert discrete_interval(boot, samples) == (2.0, 9.0)
    assert discrete_interval(boot, np.array([0, 5, 5, 9], float)) == (0.0, 9.0)


# ---------------------------------------------------------------------------------------------
# placement: intervals against a brute-force resample, null and p by their formulas

B, SEED = 60, 5
SETTINGS = U.Settings(B=B, permutations=4, seed=SEED)


def _interval(samples, level=0.95):
    return np.quantile(np.asarray(samples, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])


@pytest.fixture(scope="module")
def placed():
    rng = np.random.default_rng(11)
    hooks = ["conv1", "conv2", "fc"]
    n_ref, m, ks = 30, 21, [3, 5]
    ref, q = embeddings(rng, hooks, n_ref, m)
    y_ref, y_q = rng.integers(0, 3, n_ref), rng.integers(0, 3, m)
    rows = placement_rows(hooks, ref, q, y_ref, y_q, ks, bootstrap=SETTINGS)
    return dict(hooks=hooks, ref=ref, q=q, y_ref=y_ref, y_q=y_q, ks=ks, rows=rows)


def test_placement_intervals_equal_brute_force_resamples(placed):
    p = placed
    y_ref, y_q, m, n_ref = p["y_ref"], p["y_q"], p["y_q"].size, p["y_ref"].size
    got = {(r["measure"], r["hook_a"], r["k"]): r for r in p["rows"]}
    idx_q = U.RowBootstrap(y_q, B, heldout_seed(SEED)).indices()       # B × m
    idx_r = U.RowBootstrap(y_ref, B, SEED).indices()                   # B × n_R
    sizes_ref = np.bincount(y_ref, minlength=3)
    m_c = np.bincount(y_q, minlength=3)
    checked_p = 0
    for k in p["ks"]:
        for pos, h in enumerate(p["hooks"]):
            nq, nr = brute_cross(p["ref"][h], p["q"][h], k), brute_loo(p["ref"][h], k)
            ok_q = np.array([brute_vote(y_ref[row]) == y for row, y in zip(nq, y_q)], float)
            ok_r = np.array([brute_vote(y_ref[row]) == y for row, y in zip(nr, y_ref)], float)
            share = np.array([np.mean(y_ref[row] == y) for row, y in zip(nq, y_q)])
            acc_b = np.array([np.mean([ok_q[i] for i in rows]) for rows in idx_q])
            train_b = np.array([np.mean([ok_r[i] for i in rows]) for rows in idx_r])
            pur_b = np.array([np.mean([share[i] for i in rows]) for rows in idx_q])
            for name, samples in (("placement_acc", acc_b), ("placement_train_acc", train_b),
                                  ("placement_gap", train_b - acc_b),
                                  ("placement_purity", pur_b)):
                row = got[name, h, k]
                assert [row["lo"], row["hi"]] == pytest.approx(_interval(samples), abs=1e-12), \
                    (name, h, k)
            # chance levels: a held-out row's k neighbours drawn at random from the n_R rows
            q_c = U.vote_null_reference(sizes_ref, k, SEED)
            acc = got["placement_acc", h, k]
            assert acc["null"] == pytest.approx(m_c @ q_c / m, abs=1e-12)
            sd = np.sqrt(m_c @ (q_c * (1 - q_c))) / m
            assert acc["p"] == pytest.approx(norm.sf((acc["value"] - acc["null"]) / sd))
            pur = got["placement_purity", h, k]
            assert pur["null"] == pytest.approx(m_c @ (sizes_ref / n_ref) / m, abs=1e-12)
            _, var = U.share_null_reference(sizes_ref, k)
            assert pur["p"] == pytest.approx(
                norm.sf((pur["value"] - pur["null"]) / (np.sqrt(m_c @ var) / m)))
            gap = got["placement_gap", h, k]
            sd_gap = np.std(train_b - acc_b, ddof=1)
            assert gap["null"] == 0.0
            assert gap["p"] == pytest.approx(2 * norm.sf(abs(gap["value"]) / sd_gap))
            # the training probe's stats are the metric tables' knn_vote_accuracy stats
            ref_stats = class_response_stats(RunUncertainty(y_ref, SETTINGS),
                                             class_response(nr, y_ref))
            vote = ref_stats["knn_vote_accuracy", None, None]
            train = got["placement_train_acc", h, k]
            assert {c: train[c] for c in U.COLUMNS} == pytest.approx(vote, abs=1e-12)
            checked_p += acc["p"] < 0.05
            if pos:
                prev = brute_cross(p["ref"][p["hooks"][pos - 1]], p["q"][p["hooks"][pos - 1]], k)
                j = np.array([len(set(a) & set(b)) / len(set(a) | set(b))
                              for a, b in zip(prev, nq)])
                ag = got["placement_agreement", p["hooks"][pos - 1], k]
                j_b = [np.mean([j[i] for i in rows]) for rows in idx_q]
                assert [ag["lo"], ag["hi"]] == pytest.approx(_interval(j_b), abs=1e-12)
                mean, var = U.subset_jaccard_null(n_ref, k)
                assert ag["null"] == pytest.approx(mean, abs=1e-12)
                assert ag["p"] == pytest.approx(norm.sf((ag["value"] - mean) / np.sqrt(var / m)))
    assert all(r["lo"] <= r["value"] + 1e-12 or r["measure"] == "placement_gap"
               for r in p["rows"])


def test_placement_B0_keeps_values_and_nulls_the_columns(placed):
    p = placed
    rows0 = placement_rows(p["hooks"], p["ref"], p["q"], p["y_ref"], p["y_q"], p["ks"],
                           bootstrap={"B": 0})
    assert [r["value"] for r in rows0] == [r["value"] for r in p["rows"]]
    assert all(r.get(c) is None for r in rows0 for c in U.COLUMNS)
    assert all(r[c] is not None for r in p["rows"] for c in ("lo", "hi", "null"))
    table = placement_table(p["hooks"], p["ref"], p["q"], p["y_ref"], p["y_q"], p["ks"],
                            bootstrap=SETTINGS, run={"model": "toy"})
    assert table.columns == list(SCHEMA)
    assert table["lo"].null_count() == 0 and table["p"].null_count() == 0
    # a shared PlacementUncertainty gives the same columns
    unc = PlacementUncertainty(p["y_ref"], p["y_q"], SETTINGS)
    again = placement_rows(p["hooks"], p["ref"], p["q"], p["y_ref"], p["y_q"], p["ks"],
                           unc=unc)
    assert again == p["rows"]


# ---------------------------------------------------------------------------------------------
# dynamics: NNTS stats as the metric tables', the settling epoch per resample by brute force

def _jaccard_rows(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return np.array([len(set(ra[:k]) & set(rb[:k])) / len(set(ra[:k]) | set(rb[:k]))
                     for ra, rb in zip(a.tolist(), b.tolist())])


def test_dynamics_intervals_equal_brute_force_resamples():
    from rra.metrics.dynamics import dynamics_rows
    from test_dynamics import brute_settling, epoch_graphs

    rng = np.random.default_rng(2)
    epochs, hooks, n = [0, 1, 3, 7], ["conv1", "relu1", "fc"], 24
    graphs = epoch_graphs(rng, epochs, hooks, n=n)
    labels = np.arange(n) % 3
    k = 4
    # τ between the hooks' D at the second-to-last epoch: the resamples settle differently
    d_prev = [_jaccard_rows(graphs[3, h], graphs[7, h], k).mean() for h in hooks]
    tau = float(np.median(d_prev)) + 1e-6
    unc = RunUncertainty(labels, SETTINGS)
    rows = dynamics_rows(lambda e, h: graphs[e, h], epochs, hooks, [k], tau=tau, unc=unc)
    got = {(r["measure"], r["hook_a"], r["epoch"]): r for r in rows}
    idx = U.RowBootstrap(labels, B, SEED).indices()
    mean, var = U.jaccard_null(n, k)
    varied = 0
    for h in hooks:
        j = {e: _jaccard_rows(graphs[e, h], graphs[7, h], k) for e in epochs}
        boot = {e: np.array([j[e][rows_b].mean() for rows_b in idx]) for e in epochs}
        for e in epochs[:-1]:
            r = got["dynamics_nnts_final", h, e]
            assert [r["lo"], r["hi"]] == pytest.approx(_interval(boot[e]), abs=1e-12)
            assert r["null"] == pytest.approx(mean, abs=1e-12)
            assert r["p"] == pytest.approx(norm.sf((r["value"] - mean) / np.sqrt(var / n)))
        diag = got["dynamics_nnts_final", h, 7]
        assert (diag["lo"], diag["hi"]) == (1.0, 1.0) and diag["null"] == pytest.approx(mean)
        for a, b in zip(epochs, epochs[1:]):
            js = _jaccard_rows(graphs[a, h], graphs[b, h], k)
            r = got["dynamics_nnts_step", h, a]
            samples = [js[rows_b].mean() for rows_b in idx]
            assert [r["lo"], r["hi"]] == pytest.approx(_interval(samples), abs=1e-12)
            assert r["null"] == pytest.approx(mean, abs=1e-12)
        settle = np.array([brute_settling(epochs, [boot[e][b] for e in epochs], tau)
                           for b in range(B)])
        [r] = [r for r in rows if r["measure"] == "dynamics_settling_epoch" and r["hook_a"] == h]
        assert r["lo"] == np.quantile(settle, 0.025, method="lower")
        assert r["hi"] == np.quantile(settle, 0.975, method="higher")
        assert r["lo"] in epochs and r["hi"] in epochs and r["null"] is None and r["p"] is None
        [s] = [r for r in rows if r["measure"] == "dynamics_settled_before_final"
               and r["hook_a"] == h]
        before = (settle < 7).astype(float)
        assert (s["lo"], s["hi"]) == (np.quantile(before, 0.025, method="lower"),
                                      np.quantile(before, 0.975, method="higher"))
        assert s["null"] is None and s["p"] is None
        varied += r["lo"] != r["hi"]
    assert varied  # the test exercises resamples that settle at different epochs
    rows0 = dynamics_rows(lambda e, h: graphs[e, h], epochs, hooks, [k], tau=tau)
    assert [r["value"] for r in rows0] == [r["value"] for r in rows]
    assert all(r.get(c) is None for r in rows0 for c in U.COLUMNS)


def test_dynamics_table_labels_bootstrap_and_row_check(tmp_path):
    import torch

    from rra.embed import dump_embeddings
    from rra.io import save_npy
    from rra.knn import build_graphs
    from rra.metrics.dynamics import dynamics_table
    from rra.metrics.uncertainty import SanityError

    torch.manual_seed(0)
    x = torch.randn(18, 1, 8, 8)
    dirs = {}
    for e in (0, 3):
        torch.manual_seed(e)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).eval()
        dump_embeddings(net, x, ["1"], ["full"], tmp_path / f"e{e}" / "embed", progress=False)
        build_graphs(tmp_path / f"e{e}" / "embed", tmp_path / f"e{e}" / "knn", k=4,
                     distance="euclidean", backend="exact", progress=False)
        dirs[e] = tmp_path / f"e{e}" / "knn"
    labels = np.arange(18) % 3
    save_npy(tmp_path / "labels.npy", labels)
    m = dynamics_table(dirs, tmp_path / "out", ks=[4], labels=tmp_path / "labels.npy",
                       bootstrap={"B": 30, "seed": 2})
    table = pl.read_parquet(tmp_path / "out" / "dynamics.parquet")
    assert m["bootstrap"]["B"] == 30 and m["stratified"]
    assert table.filter(pl.col("measure") == "dynamics_nnts_final")["lo"].null_count() == 0
    unstratified = dynamics_table(dirs, tmp_path / "out2", ks=[4], bootstrap={"B": 30})
    assert not unstratified["stratified"]
    assert pl.read_parquet(tmp_path / "out2" / "dynamics.parquet")["lo"].null_count() == 0
    off = dynamics_table(dirs, tmp_path / "out3", ks=[4], bootstrap={"B": 0})
    t3 = pl.read_parquet(tmp_path / "out3" / "dynamics.parquet")
    assert off["bootstrap"]["B"] == 0 and t3["lo"].null_count() == t3.height
    assert t3["value"].to_list() == table["value"].to_list()
    with pytest.raises(SanityError, match="labels has 17 rows but the probe has 18"):
        dynamics_table(dirs, tmp_path / "out4", ks=[4], labels=labels[:17])


# ---------------------------------------------------------------------------------------------
# figures: error bars and fading in the chart specs

def _spec_text(chart) -> str:
    import json

    return json.dumps(chart.to_dict())


def test_placement_chart_draws_bars_and_fades_chance():
    from rra.report.placement_figures import PANELS, placement_chart

    rows = []
    for measure, (panel, series) in PANELS.items():
        for pos, h in enumerate(["a", "b"]):
            chance = measure == "placement_purity" and h == "b"
            rows.append(dict(panel=panel, series=series, augmentation="none", hook_a=h,
                             pos_a=pos, seed=0, value=0.5, lo=0.4, hi=0.6, null=0.1,
                             p=0.3 if chance else 0.001))
    chart = placement_chart(pl.DataFrame(rows))
    spec = chart.to_dict()
    text = _spec_text(chart)
    assert '"y2": {"field": "ci_hi"' in text and '"field": "ci_lo"' in text
    assert "datum.chance_like" in text
    data = next(iter(spec["datasets"].values()))
    faded = {(d["panel"], d["hook_a"]) for d in data if d["chance_like"]}
    assert faded == {("held-out kNN purity", "b")}
    assert {d["ci_lo"] for d in data} == {0.4}


def test_dynamics_heatmap_fades_and_settling_chart_draws_bars():
    from rra.report.dynamics_figures import nnts_heatmap, settling_chart

    rows = []
    for h, pos in (("x", 0), ("y", 1)):
        for e in (0, 2):
            rows.append(dict(measure="dynamics_nnts_final", attention="none",
                             augmentation="none", seed=0, hook_a=h, pos_a=pos, epoch=e,
                             epoch_b=2, value=0.3, lo=0.2, hi=0.4, null=0.05,
                             p=0.5 if (h, e) == ("y", 0) else 0.0))
        rows.append(dict(measure="dynamics_settling_epoch", attention="none",
                         augmentation="none", seed=0, hook_a=h, pos_a=pos, epoch=2, epoch_b=2,
                         value=2.0, lo=0.0, hi=2.0, null=None, p=None))
    df = pl.DataFrame(rows)
    heat = nnts_heatmap(df)
    text = _spec_text(heat)
    assert "datum.chance_like" in text and "interval lo (mean over seeds)" in text
    data = next(iter(heat.to_dict()["datasets"].values()))
    assert {(d["hook_a"], d["epoch"]) for d in data if d["chance_like"]} == {("y", 0)}
    settle = settling_chart(df, title="t")
    text = _spec_text(settle)
    assert '"y2": {"field": "ci_hi"' in text
    data = next(iter(settle.to_dict()["datasets"].values()))
    assert {(d["ci_lo"], d["ci_hi"]) for d in data} == {(0.0, 2.0)}
