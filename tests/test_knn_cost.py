"""The cost model behind ``backend: auto`` (rra/knn/cost.py, rra.knn.choose_backend)."""

from __future__ import annotations

import inspect

import pytest
import yaml

from rra.knn import choose_backend, knn_annoy
from rra.knn.cost import ANNOY_DEFAULTS, CostModel, cost_model, exact_seconds


def test_annoy_defaults_match_knn_annoy():
    params = inspect.signature(knn_annoy).parameters
    assert {name: params[name].default for name in ANNOY_DEFAULTS} == ANNOY_DEFAULTS


@pytest.mark.parametrize("d", [64, 784, 4704])
def test_auto_picks_exact_at_60k(d):
    # measured (README, issue #10): exact beats tuned Annoy at 60,000 rows for these d
    for threads in (1, 2, 16):
        dec = choose_backend(60_000, d, 100, "auto", threads=threads)
        assert dec["backend"] == "exact" and dec["requested"] == "auto"
        assert dec["reason"].startswith("auto: exact predicted")
        assert dec["predicted_s"]["exact"] < dec["predicted_s"]["annoy"]
        assert not dec["annoy_recall_reachable"]  # Gaussian worst case: search_k ≥ n


def test_exact_prediction_near_measured():
    m = CostModel()
    # README's table (k = 10) and issue #10 (k = 100), this 2-core machine
    for n, d, k, measured in [(60_000, 64, 10, 3.48), (60_000, 512, 10, 15.7),
                              (60_000, 4096, 10, 94.3), (60_000, 4704, 100, 171.0)]:
        assert 0.7 < exact_seconds(n, d, k, 2, m) / measured < 1.5
    two = exact_seconds(60_000, 512, 10, 2, m)
    assert exact_seconds(60_000, 512, 10, 4, m) == pytest.approx(two / 2)  # scales with threads


def test_auto_picks_annoy_where_predicted_faster_and_reachable():
    # a million rows of tiny dimension: the n² products outgrow Annoy's n log n build and
    # n · search_k queries, and Annoy's default search_k reaches recall 0.95 at d ≤ 8
    dec = choose_backend(1_000_000, 8, 10, "auto", threads=2)
    assert dec["backend"] == "annoy" and dec["annoy_recall_reachable"]
    assert dec["predicted_s"]["annoy"] < dec["predicted_s"]["exact"]
    assert dec["reason"].startswith("auto: Annoy predicted")
    assert dec["annoy_search_k"] == 50 * 11
    # a user's faster exact search (e.g. a bigger matrix library) moves it back to exact
    fast = choose_backend(1_000_000, 8, 10, "auto", threads=2,
                          cost={"pair_seconds": 1e-11, "product_speed": 1e12})
    assert fast["backend"] == "exact"
    # and a made-up slow exact search picks Annoy at a small size
    slow = choose_backend(5_000, 8, 10, "auto", threads=2, cost={"pair_seconds": 1e-6})
    assert slow["backend"] == "annoy"


def test_unreachable_recall_forces_exact():
    slow = {"pair_seconds": 1e-3}  # exact predicted far slower than Annoy
    assert choose_backend(5_000, 8, 10, "auto", threads=2, cost=slow)["annoy_recall_reachable"]
    cases = [
        ({"recall_target": 1.0}, "search_k ≥ n"),              # recall 1: a brute force
        ({"max_search_k": 100}, "max_search_k = 100"),           # below the default search_k
        ({"search_k": 20}, "the fixed search_k = 20"),
    ]
    for opts, text in cases:
        dec = choose_backend(5_000, 8, 10, "auto", threads=2, cost=slow, **opts)
        assert dec["backend"] == "exact" and not dec["annoy_recall_reachable"], opts
        assert text in dec["reason"], dec["reason"]
        assert dec["predicted_s"]["annoy"] < dec["predicted_s"]["exact"]  # faster, yet exact
    # high d: the worst-case rule needs search_k ≥ n
    dec = choose_backend(5_000, 512, 10, "auto", threads=2, cost=slow)
    assert dec["backend"] == "exact" and "search_k ≥ n" in dec["reason"]


def test_explicit_backend_respected():
    for backend in ("exact", "annoy"):
        dec = choose_backend(1_000_000, 8, 10, backend)
        assert dec == {"backend": backend, "requested": backend,
                       "reason": f"requested {backend}", "predicted_s": None}
    assert choose_backend(60_000, 4704, 100, "annoy")["backend"] == "annoy"


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown kNN backend"):
        choose_backend(100, 8, 5, "faiss")
    with pytest.raises(ValueError, match="unknown kNN cost constant"):
        cost_model({"product_sped": 1.0})
    with pytest.raises(ValueError, match="positive number"):
        cost_model({"product_speed": 0})
    with pytest.raises(ValueError, match="n_trees"):
        choose_backend(100, 8, 5, "auto", n_trees=0)
    with pytest.raises(ValueError, match="unknown Annoy option"):
        choose_backend(100, 8, 5, "auto", n_tree=4)
    assert cost_model({"product_speed": 1e12}).product_speed == 1e12


def test_config_cost_overrides_reach_knn_options():
    from pathlib import Path

    from rra import config as rc

    root = Path(__file__).resolve().parent.parent
    cfg = rc.load_config(root / "config" / "config.yaml")
    assert cfg["knn"]["cost"] == {} and "exact_budget" not in cfg["knn"]
    assert "cost" not in rc.parse_knn_spec(cfg, "euclidean-auto")[2]  # defaults: not in params
    cfg["knn"]["cost"] = {"product_speed": 2.0e11}
    cfg = rc.validate(cfg)
    assert rc.parse_knn_spec(cfg, "euclidean-auto")[2]["cost"] == {"product_speed": 2.0e11}
    cfg["knn"]["cost"] = {"product_sped": 2.0e11}
    with pytest.raises(Exception, match="product_sped"):
        rc.validate(cfg)
    for name in ("published-mnist", "published-cifar10"):  # certified graphs at 50k–60k rows
        published = yaml.safe_load((root / "config" / f"{name}.yaml").read_text())
        assert published["knn"]["backend"] == "exact", name
