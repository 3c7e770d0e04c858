"""The stac-auto loop: scale choice from hand-made ClassRepSim tables, its config checks, the
cost and accuracy tables, and (slow) the closed loop in the workflow."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rra import config as rc
from rra.io import sha256_file, write_json
from rra.stac import choose_scales, read_attention_kwargs

ROOT = Path(__file__).resolve().parent.parent
STAGES = [["layer1.0", "layer1.1"], ["layer2.0", "layer2.1"], ["layer3.0", "layer3.1"]]
RUN = dict(dataset="mnist5k", model="resnet14", attention="none", augmentation="standard", seed=0,
           probe="test-n10-s0", distance="euclidean", backend="exact")

# class-mean S[s, full] per (hook, k): what choose_scales must read
EVIDENCE = {
    ("layer1.1", 5): {1: 0.2, 2: 0.55, 4: 0.8},   # τ=0.5 → 2: coarsest qualifying (4 also does)
    ("layer2.1", 5): {1: 0.5, 2: 0.4, 4: 0.9},    # τ=0.5 → 1: equality qualifies; not monotone
    ("layer3.1", 5): {1: 0.1, 2: 0.2},            # τ=0.5 → none qualifies → finest, 2
    ("layer1.0", 5): {1: 0.9, 2: 0.9, 4: 0.9},    # not a stage's last block: must be ignored
    ("layer1.1", 3): {1: 0.9, 2: 0.9, 4: 0.9},    # another k: must be ignored at k=5
    ("layer2.1", 3): {1: 0.9, 2: 0.9, 4: 0.9},
    ("layer3.1", 3): {1: 0.9, 2: 0.9},
}


def classrepsim_rows(evidence=EVIDENCE, run=RUN) -> list[dict]:
    """Rows as rra.metrics.tables writes them, plus distractors a wrong filter would pick up."""
    rows = []
    for (hook, k), by_scale in evidence.items():
        scales = [str(s) for s in by_scale] + ["full"]
        for a in scales:
            for b in scales:
                if a == b:
                    value = 1.0
                elif b == "full":
                    value = by_scale[int(a)]
                elif a == "full":
                    value = 0.99      # the transposed pair: scale_a must be the integer one
                else:
                    value = 0.98
                common = dict(run, hook_a=hook, hook_b=hook, scale_a=a, scale_b=b, k=k)
                rows.append(dict(common, measure="classrepsim_mean", value=value))
                rows.append(dict(common, measure="classrepsim_spread", value=0.97))
                for c in range(2):   # per-class rows of another measure name
                    rows.append(dict(common, measure="classrepsim", **{"class": c}, value=0.96))
    return rows


def write_table(path: Path, rows: list[dict]) -> Path:
    import polars as pl

    from rra.metrics.tables import polars_schema

    pl.DataFrame(rows, schema=polars_schema(), strict=False).write_parquet(path)
    return path


@pytest.fixture
def table(tmp_path) -> Path:
    return write_table(tmp_path / "classrepsim.parquet", classrepsim_rows())


def test_choice_per_stage_at_last_block(table, tmp_path):
    out = tmp_path / "scales.json"
    res = choose_scales(table, STAGES, out, tau=0.5, k=5, criterion="jaccard")
    assert res["scales"] == [2, 1, 2]
    assert [s["hook"] for s in res["stages"]] == ["layer1.1", "layer2.1", "layer3.1"]
    assert [s["qualified"] for s in res["stages"]] == [True, True, False]
    assert res["stages"][0]["evidence"] == {"1": 0.2, "2": 0.55, "4": 0.8}
    assert res["stages"][2]["evidence"] == {"1": 0.1, "2": 0.2}
    assert res["tau"] == 0.5 and res["k"] == 5
    assert res["baseline"] == RUN
    assert res["classrepsim_sha256"] == sha256_file(table)
    assert res["provenance"]["config"]["stages"] == STAGES
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert read_attention_kwargs(out) == {"scales": [2, 1, 2]}


@pytest.mark.parametrize("tau, scales, qualified", [
    (0.0, [1, 1, 1], [True, True, True]),      # everything qualifies: the coarsest
    (0.56, [4, 4, 2], [True, True, False]),
    (0.9, [4, 4, 2], [False, True, False]),    # stage 0: 0.8 < 0.9, none qualifies → finest
    (1.0, [4, 4, 2], [False, False, False]),
])
def test_choice_follows_tau(table, tmp_path, tau, scales, qualified):
    res = choose_scales(table, STAGES, tmp_path / "s.json", tau=tau, k=5, criterion="jaccard")
    assert res["scales"] == scales
    assert [s["qualified"] for s in res["stages"]] == qualified


def test_choice_at_other_k(table, tmp_path):
    assert choose_scales(table, STAGES, tmp_path / "s.json", tau=0.5, k=3, criterion="jaccard")["scales"] == [1, 1, 1]


@pytest.mark.parametrize("stages, kwargs, error, needle", [
    ([["layer1.0", "layer1.1"], ["layer4.1"]], {}, ValueError, "hook 'layer4.1'"),
    (STAGES, {"k": 7}, ValueError, "k=7"),
    (STAGES, {"tau": 1.5}, ValueError, "tau must lie in [0, 1]"),
    ([], {}, ValueError, "no residual stages"),
    ([["layer1.1"], []], {}, ValueError, "stage 1 lists no blocks"),
])
def test_choice_errors(table, tmp_path, stages, kwargs, error, needle):
    args = {"tau": 0.5, "k": 5, "criterion": "jaccard", **kwargs}
    with pytest.raises(error) as err:
        choose_scales(table, stages, tmp_path / "s.json", **args)
    assert needle in str(err.value)
    assert not (tmp_path / "s.json").exists()


def test_choice_needs_full_scale_and_one_run(tmp_path):
    rows = [r for r in classrepsim_rows() if r["scale_b"] != "full"]
    path = write_table(tmp_path / "nofull.parquet", rows)
    with pytest.raises(ValueError, match="no rows comparing an integer scale with scale 'full'"):
        choose_scales(path, STAGES, tmp_path / "s.json", tau=0.5, k=5, criterion="jaccard")
    two_runs = classrepsim_rows() + classrepsim_rows(run=dict(RUN, seed=1))
    path = write_table(tmp_path / "two.parquet", two_runs)
    with pytest.raises(ValueError, match="occurs more than once"):
        choose_scales(path, STAGES, tmp_path / "s.json", tau=0.5, k=5, criterion="jaccard")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        choose_scales(tmp_path / "missing.parquet", STAGES, tmp_path / "s.json", tau=0.5, k=5, criterion="jaccard")
    bad = tmp_path / "bad.json"
    write_json(bad, {"scales": [2, 0]})
    with pytest.raises(ValueError, match="bad.json: key 'scales'"):
        read_attention_kwargs(bad)


def test_cli_train_merges_scales_into_spec(monkeypatch, tmp_path):
    from rra import cli

    seen = {}
    monkeypatch.setattr("rra.train.loop.train", lambda spec, data, out, device, **kw: seen.update(spec))
    write_json(tmp_path / "s.json", {"scales": [4, 2, 1], "tau": 0.5})
    spec = {"model": "resnet8", "attention": "stac", "attention_kwargs": {"mode": "bilinear"}}
    assert cli.main(["train", "--spec", json.dumps(spec), "--data", "d", "--out", "o",
                     f"--attention-kwargs-file={tmp_path / 's.json'}"]) == 0
    assert seen["attention_kwargs"] == {"mode": "bilinear", "scales": [4, 2, 1]}
    assert cli.main(["train", "--spec", json.dumps(spec), "--data", "d", "--out", "o",
                     "--attention-kwargs-file="]) == 0
    assert seen["attention_kwargs"] == {"mode": "bilinear"}


# --- configuration ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    del cfg["experiments"]
    cfg["results_dir"] = str(tmp_path_factory.mktemp("config") / "results")  # no checkout's data
    cfg["runs"] = [{"model": "resnet8", "attention": ["none", "se", "stac-auto"],
                    "augmentation": ["standard"], "seeds": [0]},
                   {"model": "resnet8", "attention": ["stac-auto"], "augmentation": ["none"],
                    "seeds": [1]}]
    return cfg


def test_stac_auto_config_valid(base):
    cfg = rc.validate(copy.deepcopy(base))
    assert rc.stac_baseline(cfg, "resnet8") == rc.Run("resnet8", "none", "standard", 0)
    variants = rc.cost_variants(cfg)
    assert [(v["model"], v["attention"], v["module"]) for v in variants] == [
        ("resnet8", "none", "none"), ("resnet8", "se", "se"), ("resnet8", "stac-auto", "stac")]
    assert variants[2]["attention_kwargs"] == {"mode": "nearest"}   # scales come from the file
    assert variants[1]["attention_kwargs"] == {"reduction": 16}


def test_stac_auto_adds_the_baseline_analysis_at_its_k(base):
    """The choice reads ClassRepSim at stac_auto.k on the val probe (stac_auto.probe): a folder
    of its own, apart from the test-probe analyses the final numbers come from."""
    cfg = copy.deepcopy(base)
    cfg["stac_auto"]["k"] = 7
    cfg = rc.validate(cfg)
    baseline = rc.Run("resnet8", "none", "standard", 0)
    probe, knn = rc.stac_probe(cfg), rc.knn_spec("euclidean", cfg["knn"]["backend"])
    assert probe == "val-all-s0"
    assert rc.metrics_params(cfg, baseline, probe, knn) == {
        "k": [7], "nntp_alpha": [0, 1], "tables": ["classrepsim"], "nntp_k": [],
        "bootstrap": {"B": 200, "permutations": 20, "seed": 0, "level": 0.95}}
    test_probe = rc.probe_name(cfg["probe"])
    assert test_probe.startswith("test-")
    assert 7 not in rc.metrics_params(cfg, baseline, test_probe, knn)["k"]
    stac = [a for a in rc.analyses(cfg) if a.experiment == "stac_auto"]
    assert [(a.run, a.probe) for a in stac] == [(baseline, "val-all-s0")] * 2


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["stac_auto"].update(baseline_seed=3),
     "config key 'stac_auto': run 'resnet8-stac-auto-standard-s0' takes its STAC scales from the "
     "baseline run 'resnet8-none-standard-s3'"),
    (lambda c: c["stac_auto"].update(baseline_augmentation="none"), "'resnet8-none-none-s0'"),
    (lambda c: c["embed"].update(scales=[1, 2, 4]), "config key 'embed.scales'"),
    (lambda c: c["embed"].update(scales=["full"]), "config key 'embed.scales'"),
    (lambda c: c["runs"][1].update(model_kwargs={"x": 1}), "must be the same model"),
    (lambda c: c["runs"].append({"model": "lenet5", "attention": ["stac-auto"]}),
     "config key 'runs[2].attention': model 'lenet5' has no residual blocks"),
])
def test_stac_auto_config_errors(base, mutate, needle):
    cfg = copy.deepcopy(base)
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_baseline_model_key_is_gone(base):
    cfg = copy.deepcopy(base)
    cfg["stac_auto"]["baseline_model"] = "resnet20"
    with pytest.raises(Exception, match="'stac_auto.baseline_model': unknown key"):
        rc.validate(cfg)


# --- cost and accuracy tables ----------------------------------------------------------------

def test_cost_stage_rows(tmp_path):
    from rra.models import build_model
    from rra.models.cost import cost_stage, count_flops, count_params

    write_json(tmp_path / "s.json", {"scales": [4, 2, 1]})
    variants = [
        {"model": "resnet8", "attention": "none", "module": "none", "attention_kwargs": {}},
        {"model": "resnet8", "attention": "se", "module": "se", "attention_kwargs": {"reduction": 8}},
        {"model": "resnet8", "attention": "stac-auto", "module": "stac", "attention_kwargs": {},
         "attention_kwargs_file": str(tmp_path / "s.json")},
    ]
    df = cost_stage("mnist5k", variants, tmp_path / "cost")
    assert (tmp_path / "cost.parquet").is_file() and (tmp_path / "cost.csv").is_file()
    rows = {r["attention"]: r for r in df.to_dicts()}
    for label, attention, kwargs in (("none", "none", {}), ("se", "se", {"reduction": 8}),
                                     ("stac-auto", "stac", {"scales": [4, 2, 1]})):
        model = build_model("resnet8", in_channels=1, num_classes=10, image_size=28,
                            attention=attention, attention_kwargs=kwargs)
        assert rows[label]["params"] == count_params(model)
        assert rows[label]["flops"] == count_flops(model, (1, 28, 28))
        assert json.loads(rows[label]["attention_kwargs"]) == kwargs
    assert rows["none"]["params_ratio"] == rows["none"]["flops_ratio"] == 1.0
    assert rows["se"]["params_ratio"] == pytest.approx(rows["se"]["params"] / rows["none"]["params"])
    assert rows["stac-auto"]["flops_extra"] == rows["stac-auto"]["flops"] - rows["none"]["flops"]


@pytest.mark.parametrize("acc, n", [(0.5, 10), (0.0, 7), (1.0, 40), (0.93, 1000)])
def test_wilson_interval_inverts_the_score_test(acc, n):
    """Brute force: the Wilson interval is the set of p0 whose score test does not reject,
    |acc − p0| ≤ z √(p0 (1 − p0) / n), found on a fine grid."""
    from statistics import NormalDist

    from rra.train.summary import wilson_interval

    z = NormalDist().inv_cdf(0.975)
    p0 = np.linspace(0, 1, 200_001)
    kept = p0[np.abs(acc - p0) <= z * np.sqrt(p0 * (1 - p0) / n) + 1e-15]
    lo, hi = wilson_interval(acc, n)
    assert lo == pytest.approx(kept.min(), abs=1e-5) and hi == pytest.approx(kept.max(), abs=1e-5)


def test_accuracy_summary(tmp_path):
    from statistics import NormalDist

    from rra.io import read_json
    from rra.train.summary import accuracy_summary, wilson_interval

    runs = []
    for i, attn in enumerate(["none", "stac-auto"]):
        path = tmp_path / f"{attn}.json"
        write_json(path, {"complete": True, "eval_acc": 0.5 + i / 10, "train_acc": 0.6,
                          "eval_loss": 1.0, "train_loss": 0.9, "params": 100 + i, "epochs": 2,
                          "n_train": 20, "n_eval": 10, "seconds": 1.5, "device": "cpu"})
        runs.append({"model": "resnet8", "attention": attn, "augmentation": "standard",
                     "seed": 0, "metrics": str(path)})
    df = accuracy_summary(runs, "mnist5k", tmp_path / "accuracy")
    assert df["run"].to_list() == ["resnet8-none-standard-s0", "resnet8-stac-auto-standard-s0"]
    assert df["eval_acc"].to_list() == [0.5, 0.6] and df["params"].to_list() == [100, 101]
    assert df["eval_acc_null"].null_count() == 2          # no num_classes in metrics.json
    write_json(tmp_path / "none.json", {**read_json(tmp_path / "none.json"),
                                        "model_args": {"num_classes": 4}})
    df = accuracy_summary(runs, "mnist5k", tmp_path / "accuracy")
    row = df.row(0, named=True)
    assert (row["eval_acc_lo"], row["eval_acc_hi"]) == pytest.approx(wilson_interval(0.5, 10))
    assert row["eval_acc_null"] == 0.25
    assert row["eval_acc_p"] == pytest.approx(1 - NormalDist().cdf(0.25 / (0.75 / 40) ** 0.5))
    write_json(tmp_path / "none.json", {"complete": False})
    with pytest.raises(ValueError, match="not complete"):
        accuracy_summary(runs, "mnist5k", tmp_path / "accuracy")


# --- the closed loop in the workflow (slow) --------------------------------------------------

OVERLAY = {
    "dataset_options": {"test_per_class": 20},   # 200 test images: quick evaluation
    "training": {"epochs": 1, "batch_size": 20, "max_train_per_class": 20},
    "probe": {"split": "test", "n_per_class": 10, "seed": 0},
    "runs": [{"model": "resnet8", "attention": ["none", "se", "stac-auto"],
              "augmentation": ["standard"], "seeds": [0]}],
    "embed": {"scales": [1, 2, 4, "full"], "batch_size": 50},
    "knn": {"k": [3, 5], "distance": ["euclidean"], "backend": "exact"},
    "metrics": {"nntp_alpha": [0]},
    "stac_auto": {"k": 5, "delta": 0.05},
    "experiments": {f"E{i}": {"enabled": False} for i in range(1, 12)},  # E7–E11 of test.yaml too
}


@pytest.mark.slow
def test_stac_auto_closed_loop(tmp_path):
    import polars as pl
    import torch

    from test_workflow import planned_jobs, snakemake

    overlay = tmp_path / "stac.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    work = tmp_path / "study"
    snakemake(work, configfiles=(overlay,))
    res = work / "results" / "mnist5k"
    base = res / "resnet8-none-standard-s0"
    scales_file = res / "stac_scales" / "resnet8-none-standard-s0.json"
    chosen = json.loads(scales_file.read_text())

    from rra.train import load_trained

    from rra.train.checkpoint import read_model_file

    # the choice read the baseline's analysis of the val probe (held out from training)
    table = base / "metrics" / "val-all-s0" / "euclidean-exact" / "classrepsim.parquet"
    expected = choose_scales(table, load_trained(base).stages, tmp_path / "again.json", k=5,
                             criterion="agreement", delta=0.05, max_flops_ratio=1.02,
                             flops_ratios=stac_flops_ratios(read_model_file(base)["model_args"],
                                                            {"mode": "nearest"}))
    assert chosen["scales"] == expected["scales"] and chosen["stages"] == expected["stages"]
    assert chosen["baseline"]["attention"] == "none" and len(chosen["scales"]) == 3
    assert chosen["baseline"]["probe"] == "val-all-s0" and chosen["criterion"] == "agreement"
    data = json.loads((work / "results" / "data" / "mnist5k" / "manifest.json").read_text())
    assert data["val"]["n_per_class"] == 50 and data["splits"]["val"]["n"] == 500
    assert data["splits"]["train"]["class_counts"] == [430] * 10   # 500 − 20 test − 50 val

    stored = torch.load(res / "resnet8-stac-auto-standard-s0" / "model.pt", weights_only=True)
    assert stored["spec"]["attention"] == "stac"
    assert stored["spec"]["attention_kwargs"]["scales"] == chosen["scales"]
    assert stored["model_args"]["attention_kwargs"]["scales"] == chosen["scales"]

    cost = {r["attention"]: r for r in pl.read_parquet(res / "cost.parquet").to_dicts()}
    assert set(cost) == {"none", "se", "stac-auto"}
    assert cost["none"]["params_ratio"] == cost["none"]["flops_ratio"] == 1.0
    assert cost["se"]["params_ratio"] > 1 and cost["stac-auto"]["params_ratio"] > 1
    assert json.loads(cost["stac-auto"]["attention_kwargs"])["scales"] == chosen["scales"]
    assert cost["stac-auto"]["flops_ratio"] == chosen["budget"]["flops_ratio"] <= 1.02
    acc = pl.read_parquet(res / "accuracy.parquet")
    assert acc.height == 3 and set(acc["attention"]) == {"none", "se", "stac-auto"}
    assert (res / "accuracy.csv").is_file() and (res / "cost.csv").is_file()

    # changing only delta reruns the choice and what depends on it: the stac-auto run, cost, summary
    overlay.write_text(yaml.safe_dump(dict(OVERLAY, stac_auto={"k": 5, "delta": 0.2})))
    assert planned_jobs(work, (overlay,)) == {
        "stac_scales": 1, "train": 1, "embed": 1, "knn": 1, "metrics": 1, "cost": 1,
        "summary": 1, "report": 1, "all": 1}
    plan = snakemake(work, "-n", configfiles=(overlay,))
    outputs = " ".join(line for line in (plan.stdout + plan.stderr).splitlines()
                       if line.strip().startswith("output:"))
    assert "resnet8-stac-auto-standard-s0/model.pt" in outputs
    assert "resnet8-none-standard-s0/" not in outputs and "resnet8-se-standard-s0/" not in outputs


# --- the agreement criterion, the FLOPs budget, the val probe ---------------------------------

from rra.metrics.classrepsim import choose_stac_scale, choose_stac_scale_within  # noqa: E402
from rra.stac import fit_budget, stac_flops_ratios  # noqa: E402

# Class-mean evidence at the last block of each stage of a ResNet-20 after a short training,
# s = 1, 2, 4 (docs/methods.md, "Scale choice for STAC"): J = ClassRepSim S[s, full],
# A = class-response agreement A[s, full].
ISSUE_CIFAR = {"J": [{1: 0.06, 4: 0.15}, {1: 0.08, 4: 0.30}],            # CIFAR-10-format (issue #12)
               "A": [{1: 0.67, 2: 0.69, 4: 0.72}, {1: 0.70, 2: 0.72, 4: 0.79},
                     {1: 0.88, 2: 0.92, 4: 0.95}]}
MNIST5K = {"J": [{1: 0.113, 2: 0.308, 4: 0.478}, {1: 0.269, 2: 0.492, 4: 0.629},
                 {1: 0.420, 2: 0.600, 4: 0.723}],
           "A": [{1: 0.570, 2: 0.841, 4: 0.904}, {1: 0.879, 2: 0.936, 4: 0.961},
                 {1: 0.971, 2: 0.984, 4: 0.989}]}
MNIST5K_VAL = [{1: 0.622, 2: 0.856, 4: 0.887}, {1: 0.875, 2: 0.950, 4: 0.951},  # default study,
               {1: 0.976, 2: 0.982, 4: 0.988}]                                    # val-all-s0
CIFAR_FIXTURE = [{1: 0.837, 2: 0.844, 4: 0.876}, {1: 0.819, 2: 0.833, 4: 0.856},
                 {1: 0.834, 2: 0.885, 4: 0.919}]


def test_jaccard_rule_cannot_choose_on_this_evidence():
    """The first rule (S ≥ τ = 0.5) qualifies nothing at the early stages: finest scale, [4, 4]."""
    picks = [choose_stac_scale(e, 0.5) for e in ISSUE_CIFAR["J"]]
    assert [(c.scale, c.qualified) for c in picks] == [(4, False), (4, False)]
    assert [choose_stac_scale(e, 0.5).scale for e in MNIST5K["J"]] == [4, 4, 2]


@pytest.mark.parametrize("evidence, delta, scales", [
    (ISSUE_CIFAR["A"], 0.05, [1, 4, 2]),   # 0.72 − 0.67 = δ exactly: qualifies (float slack)
    (MNIST5K["A"], 0.05, [4, 2, 1]),       # coarse pooling loses class composition early
    (MNIST5K_VAL, 0.05, [2, 2, 1]),
    (CIFAR_FIXTURE, 0.05, [1, 1, 2]),
    (MNIST5K["A"], 0.10, [2, 1, 1]),
    (MNIST5K["A"], 0.0, [4, 4, 4]),        # δ = 0: only the finest pooled scale
    (MNIST5K["A"], 1.0, [1, 1, 1]),
])
def test_agreement_rule_picks_coarse_scales(evidence, delta, scales):
    picks = [choose_stac_scale_within(e, delta) for e in evidence]
    assert [c.scale for c in picks] == scales
    assert all(c.qualified and c.criterion == "agreement" for c in picks)
    assert [c.tau for c in picks] == pytest.approx([e[max(e)] - delta for e in evidence])


@pytest.mark.parametrize("evidence, delta, needle", [
    ({1: 0.5}, -0.1, "delta must lie in [0, 1]"),
    ({1: 0.5}, float("nan"), "delta must lie in [0, 1]"),
    ({}, 0.05, "no candidate scales"),
    ({1: 1.5}, 0.05, "is not in [0, 1]"),
])
def test_agreement_rule_errors(evidence, delta, needle):
    with pytest.raises(ValueError) as err:
        choose_stac_scale_within(evidence, delta)
    assert needle in str(err.value)


def agreement_rows(evidence: list[dict[int, float]], hooks=("layer1.1", "layer2.1", "layer3.1"),
                   k=5, run=RUN) -> list[dict]:
    """class_response_agreement rows (2 classes at value ± 0.01: the class mean is the value)."""
    rows = []
    for hook, by_scale in zip(hooks, evidence):
        for s, value in by_scale.items():
            for c, off in ((0, -0.01), (1, 0.01)):
                rows.append(dict(run, hook_a=hook, hook_b=hook, scale_a=str(s), scale_b="full",
                                 k=k, measure="class_response_agreement", **{"class": c},
                                 value=value + off))
                rows.append(dict(run, hook_a=hook, hook_b=hook, scale_a="full", scale_b=str(s),
                                 k=k, measure="class_response_agreement", **{"class": c},
                                 value=0.5))  # the transposed pair must be ignored
    return rows


@pytest.fixture
def both_table(tmp_path) -> Path:
    return write_table(tmp_path / "both.parquet", classrepsim_rows() + agreement_rows(MNIST5K["A"]))


def test_choose_scales_by_agreement_records_both_measures(both_table, tmp_path):
    res = choose_scales(both_table, STAGES, tmp_path / "s.json", k=5, criterion="agreement",
                        delta=0.05)
    assert res["scales"] == [4, 2, 1] and res["criterion"] == "agreement"
    st = res["stages"]
    assert [s["qualified"] for s in st] == [True, True, True]
    assert st[0]["agreement"] == pytest.approx({"1": 0.570, "2": 0.841, "4": 0.904})
    assert st[0]["evidence"] == st[0]["agreement"]
    assert st[0]["jaccard"] == {"1": 0.2, "2": 0.55, "4": 0.8}   # EVIDENCE at layer1.1, k=5
    assert st[1]["threshold"] == pytest.approx(0.961 - 0.05)
    assert res["budget"] is None and res["delta"] == 0.05
    # the same table under the first rule: the Jaccard evidence decides
    assert choose_scales(both_table, STAGES, tmp_path / "j.json", k=5, criterion="jaccard",
                         tau=0.5)["scales"] == [2, 1, 2]
    with pytest.raises(ValueError, match="criterion must be one of"):
        choose_scales(both_table, STAGES, tmp_path / "x.json", k=5, criterion="purity")
    jaccard_only = write_table(tmp_path / "j.parquet", classrepsim_rows())
    with pytest.raises(ValueError, match="no 'class_response_agreement' rows"):
        choose_scales(jaccard_only, STAGES, tmp_path / "x.json", k=5, criterion="agreement")
    dup = write_table(tmp_path / "dup.parquet", classrepsim_rows() + agreement_rows(MNIST5K["A"])
                      + agreement_rows(MNIST5K["A"]))
    with pytest.raises(ValueError, match="class 0 occurs more than once"):
        choose_scales(dup, STAGES, tmp_path / "x.json", k=5, criterion="agreement")
    short = [r for r in agreement_rows(MNIST5K["A"]) if not (r["scale_a"] == "1" and r["class"] == 1)]
    gap = write_table(tmp_path / "gap.parquet", classrepsim_rows() + short)
    with pytest.raises(ValueError, match=r"rows per scale differ \{1: 1, 2: 2, 4: 2\}"):
        choose_scales(gap, STAGES, tmp_path / "x.json", k=5, criterion="agreement")


def additive(costs: list[dict[int, float]]):
    """A flops_ratios stand-in: 1 + the sum of per-stage costs; records each call."""
    calls = []

    def ratios(scale_lists):
        calls.append([list(s) for s in scale_lists])
        return [1.0 + sum(c[s] for c, s in zip(costs, scales)) for scales in scale_lists]
    ratios.calls = calls
    return ratios


COSTS = [{1: 0.001, 2: 0.002, 4: 0.004}, {1: 0.001, 2: 0.004, 4: 0.016},
         {1: 0.002, 2: 0.008, 4: 0.032}]


def stages_of(evidence, picks):
    return [{"scale": p, "evidence": {str(s): v for s, v in e.items()}}
            for e, p in zip(evidence, picks)]


def test_budget_keeps_a_choice_that_fits():
    ratios = additive(COSTS)
    out = fit_budget(stages_of(MNIST5K["A"], [4, 2, 1]), ratios, 1.02)
    assert out == {"scales": [4, 2, 1], "flops_ratio": pytest.approx(1.010), "max_flops_ratio": 1.02,
                   "rule_scales": [4, 2, 1], "rule_flops_ratio": pytest.approx(1.010),
                   "limited": False}
    assert ratios.calls == [[[4, 2, 1]]]   # one measurement when the picks fit


def test_budget_coarsens_the_cheapest_loss_and_warns():
    """[4, 4, 4] costs 1.052 > 1.02. No two stages can keep their pick (the cheapest such,
    [4, 4, 1], costs 1.022), so one does; among those within the budget the largest summed
    agreement wins: [4, 2, 2] (0.904 + 0.936 + 0.984) over e.g. [1, 4, 1] and [4, 1, 1]."""
    ratios = additive(COSTS)
    with pytest.warns(UserWarning, match=r"exceed the FLOPs budget .* using \[4, 2, 2\]"):
        out = fit_budget(stages_of(MNIST5K["A"], [4, 4, 4]), ratios, 1.02)
    assert out["scales"] == [4, 2, 2] and out["limited"] is True
    assert out["flops_ratio"] == pytest.approx(1.016) and out["flops_ratio"] <= 1.02
    assert out["rule_flops_ratio"] == pytest.approx(1.052)
    # every candidate is no finer than the pick, all 27 measured in one call
    assert len(ratios.calls[1]) == 27


def test_budget_that_nothing_meets_is_an_error():
    with pytest.raises(ValueError, match=r"stac_auto.max_flops_ratio = 1.001.*cheapest "
                                         r"candidate \[1, 1, 1\] reaches 1.0040"):
        fit_budget(stages_of(MNIST5K["A"], [4, 2, 1]), additive(COSTS), 1.001)


def test_choose_scales_within_budget_records_the_ratio(both_table, tmp_path):
    with pytest.warns(UserWarning, match="exceed the FLOPs budget"):
        res = choose_scales(both_table, STAGES, tmp_path / "s.json", k=5, criterion="agreement",
                            delta=0.0, max_flops_ratio=1.02, flops_ratios=additive(COSTS))
    assert res["scales"] == [4, 2, 2]
    assert [s["rule_scale"] for s in res["stages"]] == [4, 4, 4]
    assert [s["qualified"] for s in res["stages"]] == [True, False, False]
    assert res["budget"]["flops_ratio"] == pytest.approx(1.016)
    assert res["budget"]["max_flops_ratio"] == 1.02 and res["budget"]["limited"] is True
    assert read_attention_kwargs(tmp_path / "s.json") == {"scales": [4, 2, 2]}
    with pytest.raises(ValueError, match="max_flops_ratio needs flops_ratios"):
        choose_scales(both_table, STAGES, tmp_path / "x.json", k=5, criterion="agreement",
                      max_flops_ratio=1.02)


def test_stac_flops_ratios_are_the_cost_tables(tmp_path):
    """The ratio the choice records is the one the cost table reports for stac-auto."""
    from rra.models.cost import cost_stage

    args = {"name": "resnet8", "in_channels": 1, "num_classes": 10, "image_size": 28,
            "attention": "none", "attention_kwargs": {}, "kwargs": {}}
    ratios = stac_flops_ratios(args, {"mode": "nearest", "scales": [9, 9, 9]})
    r = ratios([[4, 2, 1], [1, 1, 1]])
    assert r[1] < r[0] and r[1] > 1.0
    write_json(tmp_path / "s.json", {"scales": [4, 2, 1]})
    df = cost_stage("mnist5k", [
        {"model": "resnet8", "attention": "none", "module": "none", "attention_kwargs": {}},
        {"model": "resnet8", "attention": "stac-auto", "module": "stac",
         "attention_kwargs": {"mode": "nearest"}, "attention_kwargs_file": str(tmp_path / "s.json")},
    ], tmp_path / "cost")
    assert df.filter(df["attention"] == "stac-auto")["flops_ratio"][0] == r[0]


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["stac_auto"]["probe"].update(split="test"),
     "config key 'stac_auto.probe.split': the STAC scale choice is a design decision and must "
     "read the held-out split 'val', not 'test'"),
    (lambda c: c["val"].update(n_per_class=0),
     "config key 'stac_auto.probe.split': dataset 'mnist5k' has splits ['train', 'test'], not "
     "'val' (split 'val' exists when val.n_per_class > 0)"),
    (lambda c: c["stac_auto"]["probe"].update(n_per_class=60),
     "config key 'stac_auto.probe.n_per_class': 60 rows per class, but class 0 of split 'val' has 50"),
    (lambda c: c["stac_auto"].update(max_flops_ratio=1.0), "stac_auto.max_flops_ratio"),
    (lambda c: c["stac_auto"].update(criterion="purity"), "stac_auto.criterion"),
    (lambda c: c["stac_auto"].update(delta=1.5), "stac_auto.delta"),
])
def test_stac_auto_val_and_budget_config_errors(base, mutate, needle):
    cfg = copy.deepcopy(base)
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_val_split_exists_only_when_carved(base):
    cfg = copy.deepcopy(base)
    cfg["runs"] = [{"model": "resnet8"}]
    cfg["probe"] = {"split": "val", "n_per_class": 10, "seed": 0}
    assert rc.prepared_splits(rc.validate(copy.deepcopy(cfg))) == ("train", "test", "val")
    cfg["val"] = {"n_per_class": 0}
    with pytest.raises(rc.ConfigError, match=r"config key 'probe.split'.*not 'val' \(split 'val' "
                                             r"exists when val.n_per_class > 0\)"):
        rc.validate(cfg)
    cfg = copy.deepcopy(base)
    cfg.update(dataset="imagenet64", data_dir=str(ROOT), runs=[{"model": "resnet8"}])
    with pytest.raises(rc.ConfigError, match="config key 'val.n_per_class': dataset 'imagenet64' "
                                             "has its own 'val' split"):
        rc.validate(cfg)


def test_stac_scales_rule_reads_the_val_probe(tmp_path):
    """The workflow's scale choice reads the baseline's analysis of the val probe, not test."""
    from test_workflow import snakemake

    overlay = tmp_path / "stac.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    plan = snakemake(tmp_path / "study", "-n", "-p", configfiles=(overlay,))
    text = plan.stdout + plan.stderr
    block = text[text.index("rule stac_scales:"):]
    block = block[:block.index("\n\n")]
    assert "resnet8-none-standard-s0/metrics/val-all-s0/euclidean-exact/manifest.json" in block
    assert "test-n10-s0" not in block
    assert "--criterion agreement" in text and "--max-flops-ratio 1.02" in text
    assert "--val-per-class 50 --val-seed 0" in text
