"""lo, hi, null, p of the layer tables of translation (E7), saliency and margins (E9)
(rra.layers.intervals; methods.md §4): every interval against the same seeded resamples
recomputed image by image, the translation chance level against its definition (each image
against the translate of its partner, by hand), B = 0, and the figures' bars and fading."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from scipy.special import ndtr

from rra.layers.intervals import mc_nulls, p_less
from rra.layers.margins import HiddenMargins, deepfool, input_margin_rows, pca_basis
from rra.layers.saliency import Saliency, top_share
from rra.layers.translation import image_batches, shift_grid, translation_sensitivity
from rra.metrics.uncertainty import RowBootstrap
from rra.report import charts
from test_layers_translation import Tiny, _cos, _outputs, _shift_ref, _vec

pytestmark = pytest.mark.usefixtures("one_thread")

COLS = ("lo", "hi", "null", "p")


def _partner(batches) -> list[int]:
    """The chance level's pairing by its definition: in each image batch, image j is compared
    with the translate of image j + 1 (the last with the first)."""
    partner = {}
    for part in batches:
        for j, i in enumerate(part):
            partner[int(i)] = int(part[(j + 1) % len(part)])
    return [partner[i] for i in range(len(partner))]


def _interval(samples, level):
    s = np.asarray(samples, dtype=np.float64)
    return tuple(np.nanquantile(s, [(1 - level) / 2, (1 + level) / 2], axis=0))


# --------------------------------------------------------------------------- translation

def _per_image(model, x, hooks, s, fill, partner):
    """(hook, scale) → per-image cos, rel (NaN outside X+) and their chance pairs, shifts × n,
    each image against its own translate and against its partner's, by hand."""
    n = x.shape[0]
    base = [_outputs(model, img) for img in x]
    shifted = {d: [_outputs(model, _shift_ref(img, d[0], d[1], fill)) for img in x]
               for d in shift_grid(s)}
    out = {}
    for h in hooks:
        for sc in (["full"] if base[0][h].ndim == 1 else ["1", "full"]):
            cos, rel, cos0, rel0 = (np.full((len(shifted), n), np.nan) for _ in range(4))
            for k, d in enumerate(shift_grid(s)):
                for i in range(n):
                    u = _vec(base[i][h], sc)
                    v, w = _vec(shifted[d][i][h], sc), _vec(shifted[d][partner[i]][h], sc)
                    cos[k, i], cos0[k, i] = _cos(u, v), _cos(u, w)
                    if np.linalg.norm(u) > 0:
                        rel[k, i] = np.linalg.norm(u - v) / np.linalg.norm(u)
                        rel0[k, i] = np.linalg.norm(u - w) / np.linalg.norm(u)
            out[(h, sc)] = dict(cos=cos, rel=rel, cos0=cos0, rel0=rel0)
    return out


def _cells(s):
    """Each table row of one map measure → the shifts it averages (map cell, mean, radial)."""
    grid = shift_grid(s)
    cells = [("map", (dx, dy), [k]) for k, (dx, dy) in enumerate(grid)]
    cells.append(("mean", None, [k for k, d in enumerate(grid) if d != (0, 0)]))
    cells += [("radial", r, [k for k, d in enumerate(grid) if max(map(abs, d)) == r])
              for r in range(s + 1)]
    return cells


def _find(rows, measure, hook, scale, kind, where):
    suffix = {"map": "", "mean": "_mean", "radial": "_radial"}[kind]
    for r in rows:
        if (r["measure"] == measure + suffix and r["hook_a"] == hook and r["scale_a"] == scale
                and (kind != "map" or (r["dx"], r["dy"]) == where)
                and (kind != "radial" or r["radius"] == where)):
            return r
    raise KeyError((measure, hook, scale, kind, where))


@pytest.mark.parametrize("batch_size", [1000, 4, 1])
def test_translation_intervals_and_chance_level_by_hand(batch_size):
    torch.manual_seed(0)
    model = Tiny(bias=-0.1)
    x = torch.randn(6, 1, 6, 6).numpy()
    x[5] = 0.0  # relu (and pool) zero on it: left out of the relative change (X+)
    labels = np.array([0, 0, 0, 1, 1, 1])
    fill = np.array([-0.4242], dtype=np.float32)
    hooks, s, B, seed, level = ["conv", "relu", "fc"], 1, 40, 3, 0.9
    rows = translation_sensitivity(model, x, hooks, fill=fill, max_shift=s, device="cpu",
                                   batch_size=batch_size, labels=labels,
                                   bootstrap={"B": B, "seed": seed, "level": level})
    batches = image_batches(6, batch_size, seed)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert min(len(b) for b in batches) >= 2
    partner = _partner(batches)
    assert all(partner[i] != i for i in range(6)) and sorted(partner) == list(range(6))
    per = _per_image(model, x, hooks, s, fill, partner)
    idx = RowBootstrap(labels, B, seed, level).indices()
    checked = 0
    for (h, sc), v in per.items():
        for measure, key in (("translation_cosine", "cos"), ("translation_rel_change", "rel")):
            vals, nulls = v[key], v[key + "0"]
            inside = np.isfinite(vals[0])
            for kind, where, ks in _cells(s):
                r = _find(rows, measure, h, sc, kind, where)
                per_img = vals[ks].mean(0)                         # per image over the shifts
                assert r["value"] == pytest.approx(np.nanmean(per_img), abs=2e-5)
                boot = [np.nanmean(per_img[idx[b]]) for b in range(B)]  # drawn images, repeats
                lo, hi = _interval(boot, level)
                assert (r["lo"], r["hi"]) == pytest.approx((lo, hi), abs=2e-5)
                scores = nulls[ks].mean(0)[inside]                 # the partner's translate
                null = scores.mean()
                sd = scores.std(ddof=1) * np.sqrt(2.0 / inside.sum())
                assert r["null"] == pytest.approx(null, abs=2e-5)
                z = (r["value"] - null) / sd
                want = ndtr(z) if key == "rel" else ndtr(-z)        # rel: less than chance
                assert r["p"] == pytest.approx(want, abs=1e-4)
                checked += 1
        zero = next(r for r in rows if r["measure"] == "translation_zero_norm_fraction"
                    and r["hook_a"] == h and r["scale_a"] == sc)
        out = ~np.isfinite(v["rel"][0])
        lo, hi = _interval([out[idx[b]].mean() for b in range(B)], level)
        assert (zero["value"], zero["lo"], zero["hi"]) == pytest.approx((out.mean(), lo, hi))
        assert zero["null"] is None and zero["p"] is None
    assert checked == 5 * 2 * (9 + 1 + 2)
    # relu sees image 5 as zero: it is left out of the relative change and its chance level
    assert np.isnan(per[("relu", "full")]["rel"][0, 5])


def test_translation_B0_leaves_values_and_null_columns():
    torch.manual_seed(1)
    model = Tiny()
    x = torch.randn(5, 1, 6, 6)
    kw = dict(fill=0.0, max_shift=1, device="cpu", labels=[0, 0, 1, 1, 1])
    on = translation_sensitivity(model, x, ["conv", "fc"], bootstrap={"B": 30}, **kw)
    off = translation_sensitivity(model, x, ["conv", "fc"], bootstrap={"B": 0}, **kw)
    assert [r["value"] for r in on] == [r["value"] for r in off]
    assert all(r[c] is None for r in off for c in COLS)
    assert all(r["lo"] is not None and r["null"] is not None for r in on
               if r["measure"] == "translation_cosine")
    # the (0, 0) cell: cos 1 in every resample, a translate of another image is less similar
    centre = next(r for r in on if r["measure"] == "translation_cosine" and r["dx"] == 0
                  and r["dy"] == 0 and r["hook_a"] == "conv" and r["scale_a"] == "full")
    assert centre["lo"] == pytest.approx(1.0, abs=1e-6) and centre["null"] < 1
    # no labels: one stratum; defaults (B = 200) when bootstrap is None
    plain = translation_sensitivity(model, x, ["fc"], fill=0.0, max_shift=1, device="cpu")
    assert all(r["lo"] is not None for r in plain if r["measure"] == "translation_cosine")


def test_image_batches_and_helpers():
    for n, b in ((1, 5), (2, 1), (3, 2), (7, 3), (100, 250), (101, 50)):
        parts = image_batches(n, b, 0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        assert n < 2 or min(len(p) for p in parts) >= 2
    assert [p.tolist() for p in image_batches(9, 4, 5)] == \
        [p.tolist() for p in image_batches(9, 4, 5)]
    # the partner is uniform over the other images: each of the other 4 about 1/4 of the time
    counts = np.zeros((5, 5))
    for seed in range(2000):
        partner = _partner(image_batches(5, 100, seed))
        counts[np.arange(5), partner] += 1
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(5, dtype=bool)] / 2000
    np.testing.assert_allclose(off, 0.25, atol=0.04)
    null, sd = mc_nulls(np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]]), 3)
    np.testing.assert_allclose(null, [3.0, 2.0])
    np.testing.assert_allclose(sd, [2.0 * np.sqrt(2 / 3), 0.0])
    assert p_less(0.2, 0.5, 0.1) == pytest.approx(ndtr(-3.0))
    assert p_less(0.2, None, 0.1) is None


# --------------------------------------------------------------------------- saliency

def test_saliency_intervals_and_flat_share():
    rng = np.random.default_rng(0)
    n = 9
    true = rng.random((n, 5, 5)) ** 3
    pred = rng.random((n, 5, 5)) ** 2
    true[2] = 0.0  # no share (NaN): left out of the means and of the resampled means
    labels = np.repeat([0, 1, 2], 3)
    sal = Saliency(true=true, pred=pred, labels=labels, predicted=labels,
                   share_true=top_share(true, 0.1), share_pred=top_share(pred, 0.1), top=0.1)
    B, seed, level = 30, 2, 0.95
    rows = sal.rows({"B": B, "seed": seed})
    idx = RowBootstrap(labels, B, seed, level).indices()
    assert sal.flat_share == pytest.approx(3 / 25)  # ⌈0.1 · 25⌉ = 3 pixels
    for r in rows:
        v = sal.share_true if r["measure"].endswith("_true") else sal.share_pred
        c = r.get("class")
        mine = np.ones(n, bool) if c is None else labels == c
        assert r["value"] == pytest.approx(np.nanmean(v[mine]))
        boot = []
        for b in range(B):
            drawn = idx[b][mine]  # stratified: the class's positions hold the class's rows
            assert c is None or set(labels[drawn]) == {c}
            boot.append(np.nanmean(v[drawn]) if np.isfinite(v[drawn]).any() else np.nan)
        assert (r["lo"], r["hi"]) == pytest.approx(_interval(boot, level), abs=1e-12)
        assert r["null"] == pytest.approx(3 / 25) and r["p"] is None
    assert len(rows) == 2 * 4
    off = sal.rows({"B": 0})
    assert [r["value"] for r in off] == [r["value"] for r in rows]
    assert all(r[c] is None for r in off for c in COLS)


# --------------------------------------------------------------------------- margins

def _margin_stat(measure, q):
    def stat(x):
        x = x[np.isfinite(x)]
        return np.quantile(x, q) if measure == "hidden_margin" else x.mean()
    return stat


def test_hidden_margin_intervals_by_hand():
    rng = np.random.default_rng(4)
    n = 12
    labels = np.repeat([0, 1, 2], 4)
    a = rng.gamma(2.0, size=n)
    a[[1, 6]] = np.nan  # wrong or flat rows
    b = rng.gamma(3.0, size=n)
    hm = HiddenMargins(hooks=["a", "b"], correct=np.isfinite(a), margin={"a": a, "b": b},
                       raw={"a": a, "b": b}, spread={"a": 1.0, "b": 2.0}, flat={"a": 1, "b": 0},
                       positions={"a": 0, "b": 1}, labels=labels)
    qs, B, seed, level = [0.25, 0.5, 0.75], 50, 7, 0.8
    rows = hm.rows(qs, {"B": B, "seed": seed, "level": level})
    counts = RowBootstrap(labels, B, seed, level).indices()
    for r in rows:
        v = hm.margin[r["hook_a"]]
        if r["measure"] in ("hidden_margin_n", "hidden_margin_flat", "hidden_margin_spread"):
            assert all(r[c] is None for c in COLS)
            continue
        stat = _margin_stat(r["measure"], r.get("quantile"))
        # the resample as a multiset: each row repeated as often as it is drawn
        boot = [stat(np.repeat(v, np.bincount(counts[b], minlength=n))) for b in range(B)]
        assert r["value"] == pytest.approx(stat(v))
        assert (r["lo"], r["hi"]) == pytest.approx(_interval(boot, level), abs=1e-12)
        assert r["null"] is None and r["p"] is None
    off = hm.rows(qs, {"B": 0})
    assert [r["value"] for r in off] == [r["value"] for r in rows]
    assert all(r[c] is None for r in off for c in COLS)


def test_input_margin_intervals_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = np.random.default_rng(5).normal(size=(10, 4)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    y[[0, 7]] = (y[[0, 7]] + 1) % 3  # two wrong rows: not attacked
    train = np.random.default_rng(6).normal(size=(20, 4)).astype(np.float32)
    B, seed = 40, 1
    rows = input_margin_rows(model, x, y, train_inputs=train, ks=[2, "full"], device="cpu",
                             bootstrap={"B": B, "seed": seed})
    idx = RowBootstrap(y, B, seed).indices()
    basis = pca_basis(train, 2)
    for k, V in ((2, basis), (4, None)):
        res = deepfool(model, x, y, basis=V, device="cpu")
        m = np.where(res.attacked & res.converged, res.margin, np.nan)
        for measure, stat in (("input_margin_mean", np.mean), ("input_margin_median", np.median)):
            r = next(r for r in rows if r["measure"] == measure and r["pca_k"] == k)
            boot = []
            for b in range(B):
                drawn = m[idx[b]]
                drawn = drawn[np.isfinite(drawn)]
                boot.append(stat(drawn) if drawn.size else np.nan)
            assert r["value"] == pytest.approx(stat(m[np.isfinite(m)]))
            assert (r["lo"], r["hi"]) == pytest.approx(_interval(boot, 0.95), abs=1e-9)
            assert r["lo"] < r["hi"] and r["null"] is None and r["p"] is None
        for measure in ("input_margin_n", "input_margin_not_converged"):
            r = next(r for r in rows if r["measure"] == measure and r["pca_k"] == k)
            assert all(r[c] is None for c in COLS)


# --------------------------------------------------------------------------- figures

def _spec_text(chart) -> tuple[dict, str]:
    spec = chart.to_dict()
    return spec, json.dumps(spec)


def _data(spec: dict) -> list[dict]:
    return [r for rows in spec["datasets"].values() for r in rows]


def test_translation_figures_fade_and_draw_intervals():
    base = dict(variant="none · none", hook_a="c1", pos_a=0, measure="translation_cosine")
    maps = pl.DataFrame([
        dict(base, dx=0, dy=0, seed=s, value=1.0, lo=1.0, hi=1.0, null=0.3, p=0.0)
        for s in (0, 1)] + [
        dict(base, dx=1, dy=0, seed=s, value=0.35, lo=0.2 + 0.1 * s, hi=0.5, null=0.3, p=0.2)
        for s in (0, 1)])
    spec, text = _spec_text(charts.translation_maps(maps))
    data = {(r["dx"], r["dy"]): r for r in _data(spec)}
    assert data[(1, 0)]["chance_like"] and not data[(0, 0)]["chance_like"]
    assert data[(1, 0)]["ci_lo"] == pytest.approx(0.25) and data[(1, 0)]["p_max"] == 0.2
    assert "datum.chance_like" in text and '"ci_lo"' in text and '"chance"' in text
    radial = pl.DataFrame([dict(measure="cosine", scale_a="full", variant="v", hook_a="c1",
                                pos_a=0, radius=r, seed=0, value=1 - 0.3 * r, lo=0.9 - 0.3 * r,
                                hi=1.0 - 0.2 * r, null=0.3, p=0.01 + 0.5 * r) for r in (0, 1)])
    spec, text = _spec_text(charts.radial_curves(radial))
    layers = spec["spec"]["layer"]
    rule = next(layer for layer in layers if layer["mark"]["type"] == "rule")
    assert rule["encoding"]["y"]["field"] == "ci_lo" and rule["encoding"]["y2"]["field"] == "ci_hi"
    assert "datum.chance_like" in text
    data = {r["radius"]: r for r in _data(spec)}
    assert data[1]["chance_like"] and not data[0]["chance_like"]
    assert data[1]["ci_hi"] == pytest.approx(0.8)


def test_margin_and_saliency_figures_draw_intervals():
    hidden = pl.DataFrame([dict(variant="v", hook_a="h", pos_a=0, quantile=q, seed=0,
                                value=q * 2, lo=q * 2 - 0.1, hi=q * 2 + 0.2)
                           for q in (0.25, 0.5, 0.75)])
    spec, text = _spec_text(charts.margin_boxes(hidden))
    row = _data(spec)[0]
    assert (row["mid"], row["mid_lo"], row["mid_hi"]) == pytest.approx((1.0, 0.9, 1.2))
    assert '"mid_lo"' in text and '"mid_hi"' in text
    pca = pl.DataFrame([dict(variant="v", pca_k=k, seed=0, value=k * 0.1, lo=k * 0.08,
                             hi=k * 0.12) for k in (1, 5, 784)])
    spec, _ = _spec_text(charts.margin_vs_k(pca))
    rule = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rule")
    assert rule["encoding"]["y"]["field"] == "ci_lo"
    assert {r["pca_k"]: r["ci_hi"] for r in _data(spec)}[5] == pytest.approx(0.6)
    share = pl.DataFrame([dict(variant=v, measure="top5pct_share_true", seed=s, value=0.3 + s,
                               lo=0.25, hi=0.35, null=0.051)
                          for v in ("a", "b") for s in (0, 1)])
    spec, text = _spec_text(charts.variant_bars(share))
    layers = spec["spec"]["layer"]
    rules = [layer for layer in layers if layer["mark"]["type"] == "rule"]
    assert any(r["encoding"]["y"]["field"] == "ci_lo" for r in rules)
    assert any(r["encoding"]["y"].get("field") == "chance"
               and r["encoding"]["y"].get("aggregate") == "mean" for r in rules)
    assert all(r["chance"] == pytest.approx(0.051) for r in _data(spec))
