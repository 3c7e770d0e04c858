"""The uncertainty columns (lo, hi, null, p) of the activation-pattern (E8) and fragmentation
(E9) layer tables: every interval against a brute-force resample (the same seeded indices,
recomputed with loops), every chance level against enumeration of all permutations on a tiny
case or its definition computed the slow way, B = 0, the layers stage passing
``metrics.bootstrap``, and the figures' bars and fading (docs/methods.md §4, §8). [ours]"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import permutations

import numpy as np
import polars as pl
import pytest
import torch
from scipy.stats import norm
from torch import nn

from rra.layers.fragmentation import Fragmentation, fragmentation
from rra.layers.patterns import (PURITY_CHUNK, PURITY_STREAM, activation_patterns,
                                 agreement_null, pattern_groups, purity_null)
from rra.metrics import uncertainty as U

pytestmark = pytest.mark.usefixtures("one_thread")

COLUMNS = ("lo", "hi", "null", "p")


class Net(nn.Module):
    """conv (4@3×3) → relu → flatten → fc (5) → relu_fc → out (3), fixed random weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.relu_fc = nn.ReLU()
        self.out = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.hook_names = ["relu", "relu_fc"]

    def forward(self, x):
        return self.out(self.relu_fc(self.fc(self.relu(self.conv(x)).flatten(1))))


def _acts(model: Net, x: torch.Tensor):
    with torch.no_grad():
        a = model.relu(model.conv(x))
        b = model.relu_fc(model.fc(a.flatten(1)))
        pred = model.out(b).argmax(1)
    return {"relu": a.numpy(), "relu_fc": b.numpy()}, pred.numpy()


def _by(rows):
    return {(r["hook_a"], r["measure"]): r for r in rows}


# ---------------------------------------------------------------------------------------------
# chance levels against enumeration and the slow way

def _brute_purity(group, labels) -> float:
    groups = defaultdict(Counter)
    for g, y in zip(group, labels):
        groups[g][y] += 1
    return sum(max(c.values()) for c in groups.values()) / len(labels)


@pytest.mark.parametrize("t, m", [([0, 0, 1, 2, 2, 2, 1], [0, 1, 1, 2, 0, 2, 2]),
                                  ([0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]),
                                  ([3, 3, 3, 3, 3, 3, 3], [3, 3, 5, 5, 3, 5, 3])])
def test_fidelity_chance_equals_all_permutations(t, m):
    """E and sd of (1/n) Σ 1[t_i = m_π(i)] over all 7! correspondences π."""
    t, m = np.array(t), np.array(m)
    values = np.array([np.mean(t == m[list(p)]) for p in permutations(range(t.size))])
    mean, sd = agreement_null(t, m)
    assert mean == pytest.approx(values.mean(), abs=1e-12)
    assert sd == pytest.approx(values.std(), abs=1e-12)
    assert agreement_null([1], [1]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="one length"):
        agreement_null([0, 1], [0])


def test_purity_chance_is_the_seeded_shuffles_counted_the_slow_way():
    group = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5])
    labels = np.array([7, 7, 8, 9, 9, 8, 7, 8, 9, 9, 7, 8])
    shuffles = 2 * PURITY_CHUNK + 37  # three chunks, the last partial
    mean, sd, samples = purity_null(group, labels, seed=3, shuffles=shuffles)
    # the same shuffles: default_rng([seed, PURITY_STREAM]), chunks of PURITY_CHUNK rows
    rng = np.random.default_rng([3, PURITY_STREAM])
    classes = np.unique(labels, return_inverse=True)[1]
    slow = []
    for start in range(0, shuffles, PURITY_CHUNK):
        m = min(PURITY_CHUNK, shuffles - start)
        for row in rng.permuted(np.tile(classes, (m, 1)), axis=1):
            slow.append(_brute_purity(group, row))
    np.testing.assert_allclose(samples, slow, rtol=0, atol=1e-12)
    assert mean == pytest.approx(np.mean(slow), abs=1e-12)
    assert sd == pytest.approx(np.std(slow, ddof=1) * np.sqrt(1 + 1 / shuffles), abs=1e-12)
    # every code unique: purity 1 whatever the labels, sd 0
    m1, s1, _ = purity_null(np.arange(6), [0, 1, 0, 1, 2, 2], seed=0, shuffles=10)
    assert (m1, s1) == (1.0, 0.0)


def test_purity_chance_against_enumeration():
    group = np.array([0, 0, 0, 1, 1, 2, 3])
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    exact = np.array([_brute_purity(group, labels[list(p)])
                      for p in permutations(range(labels.size))])
    mean, sd, samples = purity_null(group, labels, seed=1, shuffles=20_000)
    assert abs(mean - exact.mean()) < 5 * exact.std() / np.sqrt(samples.size)
    assert samples.std(ddof=1) == pytest.approx(exact.std(), rel=0.05)


# ---------------------------------------------------------------------------------------------
# patterns: intervals against brute-force resamples

@pytest.fixture(scope="module")
def patterns_case():
    torch.manual_seed(0)
    model = Net()
    x, train = torch.randn(18, 1, 6, 6), torch.randn(30, 1, 6, 6)
    x[4] = -3.0
    y = np.repeat([0, 1, 2], 6)
    return model, x, y, train


def test_pattern_intervals_equal_brute_force_resamples(patterns_case):
    from sklearn.tree import DecisionTreeClassifier

    model, x, y, train = patterns_case
    settings = {"B": 60, "seed": 4, "level": 0.9}
    rows = _by(activation_patterns(model, x, y, ["relu", "relu_fc"], train=train, seed=0,
                                   device="cpu", batch_size=5, bootstrap=settings))
    acts, pred = _acts(model, x)
    acts_t, pred_t = _acts(model, train)
    idx = U.RowBootstrap(y, 60, 4, 0.9).indices()
    # the resamples keep each row's class
    assert all((y[idx[b]] == y).all() for b in range(60))
    q = [0.05, 0.95]
    n = y.size
    spread = 0
    for hook, a in acts.items():
        on = a.reshape(n, a.shape[1], -1).max(axis=2) > 0
        on_t = (acts_t[hook].reshape(len(train), on.shape[1], -1).max(axis=2) > 0)
        tree = DecisionTreeClassifier(random_state=0).fit(on_t.astype(np.uint8), pred_t)
        t = tree.predict(on.astype(np.uint8))
        brute = {"relu_channel_sparsity": [], "relu_element_sparsity": [],
                 "relu_tree_fidelity": []}
        for b in range(60):
            rs = idx[b]
            brute["relu_channel_sparsity"].append(1 - on[rs].mean())
            brute["relu_element_sparsity"].append((a[rs] == 0).mean())
            brute["relu_tree_fidelity"].append(np.mean([t[i] == pred[i] for i in rs]))
        for measure, samples in brute.items():
            r = rows[(hook, measure)]
            lo, hi = np.quantile(samples, q)
            assert (r["lo"], r["hi"]) == (pytest.approx(lo, abs=1e-12),
                                          pytest.approx(hi, abs=1e-12)), (hook, measure)
        # sparsities: no chance level
        for measure in ("relu_channel_sparsity", "relu_element_sparsity"):
            assert rows[(hook, measure)]["null"] is None and rows[(hook, measure)]["p"] is None
        # fidelity: chance from the class counts of t and the model's predictions
        fid = rows[(hook, "relu_tree_fidelity")]
        null = sum(np.sum(t == c) * np.sum(pred == c) for c in range(3)) / n ** 2
        assert fid["null"] == pytest.approx(null, abs=1e-12)
        _, sd = agreement_null(t, pred)
        if sd > 0:
            spread += 1
            assert fid["p"] == pytest.approx(norm.sf((fid["value"] - null) / sd), abs=1e-12)
        else:  # a constant tree: every correspondence agrees as often, p = 1
            assert len(set(t)) == 1 and fid["value"] == pytest.approx(null) and fid["p"] == 1.0
        # purity: chance of the same groups with shuffled labels (seed of metrics.bootstrap)
        pur = rows[(hook, "relu_pattern_purity")]
        _, group = pattern_groups(on)
        shuffled = purity_null(group, y, seed=4)[2]
        assert pur["null"] == pytest.approx(np.mean(shuffled), abs=1e-12)
        sd = np.std(shuffled, ddof=1) * np.sqrt(1 + 1 / shuffled.size)
        assert pur["p"] == pytest.approx(U.p_value(pur["value"], pur["null"], sd), abs=1e-12)
        assert pur["lo"] is None and pur["hi"] is None
        # no interval, no chance level
        for measure in ("relu_pattern_unique_fraction", "relu_tree_fidelity_train",
                        "relu_tree_depth", "relu_tree_leaves"):
            assert all(rows[(hook, measure)][c] is None for c in COLUMNS), measure
    assert spread >= 1  # the normal approximation is exercised at some hook


def test_patterns_B0_nulls_the_columns_and_keeps_the_values(patterns_case):
    model, x, y, train = patterns_case
    kw = dict(train=train, device="cpu", batch_size=7)
    off = activation_patterns(model, x, y, ["relu", "relu_fc"], bootstrap={"B": 0}, **kw)
    on = activation_patterns(model, x, y, ["relu", "relu_fc"], **kw)  # defaults: B = 200
    assert [(r["hook_a"], r["measure"], r["value"]) for r in off] == \
        [(r["hook_a"], r["measure"], r["value"]) for r in on]
    assert all(r[c] is None for r in off for c in COLUMNS)
    assert sum(r["lo"] is not None for r in on) == 6  # 3 measures × 2 hooks
    with pytest.raises(ValueError, match="metrics.bootstrap"):
        activation_patterns(model, x, y, ["relu"], bootstrap={"b": 10}, device="cpu")


def test_layers_stage_passes_metrics_bootstrap(patterns_case):
    from rra.layers.stage import _fragmentation, _patterns

    model, x, y, _ = patterns_case
    probe = type("P", (), {"inputs": x.numpy(), "labels": y})()
    s = {"seed": 0, "tree": {}, "batch_size": 9}
    off, _, _ = _patterns(model, probe, probe, model.hook_names, {**s, "bootstrap": {"B": 0}},
                          torch.device("cpu"))
    on, _, _ = _patterns(model, probe, probe, model.hook_names,
                         {**s, "bootstrap": {"B": 20, "seed": 1}}, torch.device("cpu"))
    assert all(r[c] is None for r in off for c in COLUMNS)
    assert _by(on)[("relu", "relu_tree_fidelity")]["lo"] is not None
    assert [r["value"] for r in off] == [r["value"] for r in on]
    fs = {"resolution": 4, "triplets": 3, "extend": 0.5, "kinds": ["mixed"], "seed": 0,
          "batch_size": 64}
    rows, _, _ = _fragmentation(model, probe, None, ["relu"],
                                {**fs, "bootstrap": {"B": 0}}, torch.device("cpu"))
    assert all(r[c] is None for r in rows for c in COLUMNS)
    rows, _, _ = _fragmentation(model, probe, None, ["relu"],
                                {**fs, "bootstrap": {"B": 20}}, torch.device("cpu"))
    means = [r for r in rows if r["measure"] == "fragmentation_mixed"]
    assert len(means) == 2 and all(r["lo"] <= r["value"] <= r["hi"] for r in means)


# ---------------------------------------------------------------------------------------------
# fragmentation: triplets resampled by kind

def _fragmentation_case(bootstrap) -> Fragmentation:
    g = np.random.default_rng(5)
    same = g.integers(1, 9, 7).astype(np.float64)
    same[[1, 4]] = np.nan  # collinear
    counts = {("input", "same_class"): same,
              ("input", "mixed"): g.integers(1, 20, 5).astype(np.float64),
              ("h", "same_class"): g.integers(1, 9, 7).astype(np.float64),
              ("h", "mixed"): np.full(5, np.nan)}  # every triplet collinear at h
    trip = {"same_class": np.zeros((7, 3), np.int64), "mixed": np.zeros((5, 3), np.int64)}
    return Fragmentation(hooks=["input", "h"], counts=counts, triplets=trip, maps={},
                         positions={"input": 0, "h": 1}, bootstrap=bootstrap)


def test_fragmentation_intervals_equal_brute_force_resamples():
    res = _fragmentation_case({"B": 80, "seed": 2, "level": 0.8})
    rows = {(r["hook_a"], r["measure"]): r for r in res.rows()}
    labels = np.repeat([0, 1], [7, 5])            # the kinds, in the order of res.triplets
    idx = U.RowBootstrap(labels, 80, 2, 0.8).indices()
    starts = {"same_class": 0, "mixed": 7}
    for hook in ("input", "h"):
        for kind, start in starts.items():
            v = res.counts[(hook, kind)]
            size = len(res.triplets[kind])
            samples = []
            for b in range(80):
                drawn = idx[b, start:start + size]
                assert all(start <= i < start + size for i in drawn)  # stratified by kind
                finite = [v[i - start] for i in drawn if np.isfinite(v[i - start])]
                if finite:
                    samples.append(sum(finite) / len(finite))
            r = rows[(hook, f"fragmentation_{kind}")]
            assert r["null"] is None and r["p"] is None
            if not samples:
                assert np.isnan(r["value"]) and r["lo"] is None and r["hi"] is None
                continue
            lo, hi = np.quantile(samples, [0.1, 0.9])
            assert (r["lo"], r["hi"]) == (pytest.approx(lo, abs=1e-12),
                                          pytest.approx(hi, abs=1e-12)), (hook, kind)
            assert r["value"] == pytest.approx(np.nanmean(v))
            for suffix in ("_sd", "_triplets"):
                assert all(rows[(hook, f"fragmentation_{kind}{suffix}")][c] is None
                           for c in COLUMNS)
    # the hooks share the resamples: equal counts at two hooks give equal intervals
    res.counts[("h", "same_class")] = res.counts[("input", "same_class")].copy()
    rows = {(r["hook_a"], r["measure"]): r for r in res.rows()}
    assert rows[("h", "fragmentation_same_class")]["lo"] == \
        rows[("input", "fragmentation_same_class")]["lo"]


def test_fragmentation_B0_nulls_the_columns_and_keeps_the_values():
    on, off = _fragmentation_case(None).rows(), _fragmentation_case({"B": 0}).rows()
    key = [(r["hook_a"], r["measure"]) for r in on]
    assert key == [(r["hook_a"], r["measure"]) for r in off]
    np.testing.assert_array_equal([r["value"] for r in on], [r["value"] for r in off])
    assert all(r[c] is None for r in off for c in COLUMNS)
    assert sum(r["lo"] is not None for r in on) == 3  # h's mixed triplets are all collinear


def test_fragmentation_function_carries_the_bootstrap():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model.bias.zero_()
    g = np.random.default_rng(0)
    x = g.normal(size=(12, 2)).astype(np.float32)
    y = np.arange(12) % 3
    kw = dict(resolution=6, triplets=4, kinds=["mixed"], device="cpu")
    on = fragmentation(model, x, y, ["input"], bootstrap={"B": 30, "seed": 1}, **kw).rows()
    off = fragmentation(model, x, y, ["input"], bootstrap={"B": 0}, **kw).rows()
    assert on[0]["lo"] <= on[0]["value"] <= on[0]["hi"] and off[0]["lo"] is None
    assert [r["value"] for r in on] == [r["value"] for r in off]
    with pytest.raises(ValueError, match="metrics.bootstrap"):
        fragmentation(model, x, y, ["input"], bootstrap={"B": -1}, **kw)


# ---------------------------------------------------------------------------------------------
# figures: error bars and fading in the chart specs

class _Rep:
    """What the layer figures read of a report: the band option and ``emit``."""

    opts = {"band": "minmax"}
    band_text = "min–max"

    def __init__(self):
        self.charts = {}

    def emit(self, chart, stem, **kw):
        self.charts[stem] = (chart, kw)


def _layer_dirs(tmp_path, analysis, rows_of_seed):
    from rra.io import write_json
    from rra.metrics.tables import frame
    from rra.report.frames import LayerDir

    dirs = []
    for seed in (0, 1):
        run = {"dataset": "toy", "model": "net", "attention": "none", "augmentation": "none",
               "seed": seed, "probe": "test-n2-s0"}
        d = tmp_path / "toy" / f"net-none-none-s{seed}" / "layers" / "test-n2-s0" / analysis
        d.mkdir(parents=True)
        frame(rows_of_seed(seed), run).write_parquet(d / f"{analysis}.parquet")
        write_json(d / "manifest.json", {"analysis": analysis, "run": run})
        dirs.append(LayerDir.of(d / "manifest.json"))
    return dirs


def _chart_data(rep):
    import json

    (chart, kw), = rep.charts.values()
    spec = chart.to_dict()
    return json.dumps(spec), next(iter(spec["datasets"].values())), kw


def test_patterns_figure_draws_bars_and_fades_chance(tmp_path):
    from rra.report.layer_figures import patterns_figures
    from rra.report.metric_figures import Place

    def rows(seed):
        out = []
        for pos, h in enumerate(["relu1", "relu2"]):
            c = dict(hook_a=h, pos_a=pos)
            out += [dict(c, measure="relu_channel_sparsity", value=0.5, lo=0.4, hi=0.6),
                    dict(c, measure="relu_pattern_purity", value=0.7, null=0.6,
                         p=0.3 if h == "relu2" else 0.001),
                    dict(c, measure="relu_tree_fidelity", value=0.9, lo=0.8 + 0.02 * seed,
                         hi=0.95, null=0.3, p=0.0),
                    dict(c, measure="relu_tree_depth", value=4.0)]
        return out

    rep = _Rep()
    patterns_figures(rep, _layer_dirs(tmp_path, "patterns", rows), Place("toy/l", "g", {}))
    text, data, kw = _chart_data(rep)
    assert '"y2": {"field": "ci_hi"' in text and '"field": "ci_lo"' in text
    assert "datum.chance_like" in text
    faded = {(d["measure"], d["hook_a"]) for d in data if d["chance_like"]}
    assert faded == {("pattern-group purity", "relu2")}
    ci = {(d["measure"], d["hook_a"]): (d["ci_lo"], d["ci_hi"]) for d in data}
    assert ci[("channel sparsity", "relu1")] == (pytest.approx(0.4), pytest.approx(0.6))
    assert ci[("tree fidelity (probe)", "relu2")] == (pytest.approx(0.81), pytest.approx(0.95))
    assert ci[("tree depth", "relu1")] == (None, None)
    assert "bars: bootstrap interval" in kw["caption"] and "faded" in kw["caption"]


def test_fragmentation_figure_draws_bars(tmp_path):
    from rra.report.layer_figures import fragmentation_figures
    from rra.report.metric_figures import Place

    def rows(seed):
        return [dict(hook_a=h, pos_a=pos, scale_a="full", measure=f"fragmentation_{kind}",
                     value=3.0 + pos, lo=2.0 + pos, hi=4.0 + pos + seed)
                for pos, h in enumerate(["input", "fc"]) for kind in ("same_class", "mixed")]

    rep = _Rep()
    fragmentation_figures(rep, _layer_dirs(tmp_path, "fragmentation", rows),
                          Place("toy/l", "g", {}))
    text, data, kw = _chart_data(rep)
    assert '"y2": {"field": "ci_hi"' in text
    assert {(d["hook_a"], d["ci_lo"], d["ci_hi"]) for d in data} == {("input", 2.0, 4.5),
                                                                     ("fc", 3.0, 5.5)}
    assert not any(d["chance_like"] for d in data)
    assert "bars: bootstrap interval over the triplets" in kw["caption"]
