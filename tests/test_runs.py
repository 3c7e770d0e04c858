"""rra.runs: the one grammar of the study's folder names (runs, probes, kNN settings, scales),
as the config, the workflow's wildcards and the report use it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rra import runs as rn

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, run", [
    ("lenet5-none-standard-s0", rn.Run("lenet5", "none", "standard", 0)),
    ("resnet20-stac-auto-standard-s3", rn.Run("resnet20", "stac-auto", "standard", 3)),
    ("resnet8nobn-cbam-none-s12", rn.Run("resnet8nobn", "cbam", "none", 12)),
])
def test_run_names_round_trip(name, run):
    assert rn.Run.parse(name) == run and run.name == name
    assert run.variant == (run.model, run.attention, run.augmentation)
    assert rn.RUN_FORMAT.format(**vars(run)) == name


@pytest.mark.parametrize("name", ["stac_scales", "data", "e2_guideline", "lenet5-none-s0",
                                  "Lenet5-none-none-s0", "lenet5-none-none-s", "lenet5-none-none"])
def test_other_folders_are_not_runs(name):
    assert rn.parse_run(name) is None
    with pytest.raises(ValueError, match="is not '{model}-{attention}-{augmentation}-s{seed}'"):
        rn.Run.parse(name)


def test_probe_and_knn_names():
    for name, probe in (("test-n12-s0", rn.Probe("test", 12, 0)),
                        ("val-all-s0", rn.Probe("val", "all", 0))):
        assert rn.Probe.parse(name) == probe and probe.name == name
    with pytest.raises(ValueError, match="split-nN-sS"):
        rn.Probe.parse("test-12")
    for name, setting in (("euclidean-auto", "auto"), ("cosine-exact", "exact"),
                          ("euclidean-annoy", "annoy"),
                          ("euclidean-annoy-t10-sauto", "annoy-t10-sauto"),
                          ("cosine-annoy-td-s-1", "annoy-td-s-1")):
        knn = rn.KnnSetting.parse(name)
        assert (knn.name, knn.setting) == (name, setting)
    assert rn.KnnSetting.of("euclidean", {"backend": "annoy", "search_k": -1}).name == \
        "euclidean-annoy-td-s-1"
    assert rn.KnnSetting.of("cosine", {"backend": "exact", "n_trees": 3}).name == "cosine-exact"
    for bad in ("manhattan-exact", "euclidean", "euclidean-exact-t5-s3", "cosine-annoy-t5"):
        with pytest.raises(ValueError, match="distance-backend"):
            rn.KnnSetting.parse(bad)


def test_wildcard_constraints_match_exactly_what_parses():
    """The workflow's constraints (rules/common.smk takes rn.WILDCARDS) are the parsers'
    grammar: group-free, so Snakemake can join them, and they accept what parses."""
    assert all(re.compile(p).groups == 0 for p in rn.WILDCARDS.values())
    backend = re.compile(rn.BACKEND)
    for name in ("auto", "exact", "annoy", "annoy-t10-sauto", "annoy-td-s-1"):
        assert backend.fullmatch(name) and rn.KnnSetting.parse(f"euclidean-{name}")
    for name in ("exact-t5-s3", "annoy-t5"):
        assert not backend.fullmatch(name)
    probe = re.compile(rn.PROBE)
    assert probe.fullmatch("test-n12-s0") and probe.fullmatch("val-all-s0")
    assert not probe.fullmatch("test-12-s0")
    smk = (ROOT / "rules" / "common.smk").read_text()
    assert "**rn.WILDCARDS" in smk and "rn.RUN_FORMAT" in smk


def test_orders():
    assert rn.scale_order(["full", "10", "2", "1", 4, None]) == ["1", "2", "4", "10", "full"]
    assert sorted(["test-all-s0", "test-n100-s0", "test-n20-s0", "odd"],
                  key=rn.probe_order_key) == ["test-n20-s0", "test-n100-s0", "test-all-s0", "odd"]
    assert sorted(["annoy-t50-s-1", "auto", "annoy-t10-sauto", "exact", "annoy"],
                  key=rn.backend_order_key) == ["exact", "auto", "annoy", "annoy-t10-sauto",
                                                "annoy-t50-s-1"]


def test_no_second_grammar():
    """The name grammar lives in rra/runs.py only: no other module or workflow file writes a
    pattern of run, probe or kNN setting names."""
    needles = (r"-s(\d+)", r"-s\d+", "(?:-auto)?", "(-auto)?", "auto|-?", "n(\\d+)|")
    files = [p for p in [*(ROOT / "rra").rglob("*.py"), *(ROOT / "rules").glob("*.smk"),
                         ROOT / "Snakefile"] if p.name != "runs.py"]
    found = [(p.relative_to(ROOT).as_posix(), n) for p in files for n in needles
             if n in p.read_text()]
    assert found == []
