"""The stac-auto loop: scale choice from hand-made ClassRepSim tables, its config checks, the
cost and accuracy tables, and (slow) the closed loop in the workflow."""

from __future__ import annotations

import copy
import json
from pathlib import Path

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
    res = choose_scales(table, STAGES, out, tau=0.5, k=5)
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
    res = choose_scales(table, STAGES, tmp_path / "s.json", tau=tau, k=5)
    assert res["scales"] == scales
    assert [s["qualified"] for s in res["stages"]] == qualified


def test_choice_at_other_k(table, tmp_path):
    assert choose_scales(table, STAGES, tmp_path / "s.json", tau=0.5, k=3)["scales"] == [1, 1, 1]


@pytest.mark.parametrize("stages, kwargs, error, needle", [
    ([["layer1.0", "layer1.1"], ["layer4.1"]], {}, ValueError, "hook 'layer4.1'"),
    (STAGES, {"k": 7}, ValueError, "k=7"),
    (STAGES, {"tau": 1.5}, ValueError, "tau must lie in [0, 1]"),
    ([], {}, ValueError, "no residual stages"),
    ([["layer1.1"], []], {}, ValueError, "stage 1 lists no blocks"),
])
def test_choice_errors(table, tmp_path, stages, kwargs, error, needle):
    args = {"tau": 0.5, "k": 5, **kwargs}
    with pytest.raises(error) as err:
        choose_scales(table, stages, tmp_path / "s.json", **args)
    assert needle in str(err.value)
    assert not (tmp_path / "s.json").exists()


def test_choice_needs_full_scale_and_one_run(tmp_path):
    rows = [r for r in classrepsim_rows() if r["scale_b"] != "full"]
    path = write_table(tmp_path / "nofull.parquet", rows)
    with pytest.raises(ValueError, match="no rows comparing an integer scale with scale 'full'"):
        choose_scales(path, STAGES, tmp_path / "s.json", tau=0.5, k=5)
    two_runs = classrepsim_rows() + classrepsim_rows(run=dict(RUN, seed=1))
    path = write_table(tmp_path / "two.parquet", two_runs)
    with pytest.raises(ValueError, match="occurs more than once"):
        choose_scales(path, STAGES, tmp_path / "s.json", tau=0.5, k=5)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        choose_scales(tmp_path / "missing.parquet", STAGES, tmp_path / "s.json", tau=0.5, k=5)
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
def base() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    del cfg["experiments"]
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
    """The choice reads ClassRepSim at stac_auto.k; that k joins the baseline's analysis folder."""
    cfg = copy.deepcopy(base)
    cfg["stac_auto"]["k"] = 7
    cfg = rc.validate(cfg)
    baseline = rc.Run("resnet8", "none", "standard", 0)
    probe, knn = rc.probe_name(cfg["probe"]), rc.knn_spec("euclidean", cfg["knn"]["backend"])
    assert 7 in rc.metrics_params(cfg, baseline, probe, knn)["k"]
    assert 7 not in rc.metrics_params(cfg, rc.Run("resnet8", "se", "standard", 0), probe, knn)["k"]


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
    with pytest.raises(Exception, match="'baseline_model' was unexpected"):
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


def test_accuracy_summary(tmp_path):
    from rra.train.summary import accuracy_summary

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
    "stac_auto": {"k": 5, "tau": 0.5},
    "experiments": {f"E{i}": {"enabled": False} for i in range(1, 7)},
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

    table = base / "metrics" / "test-n10-s0" / "euclidean-exact" / "classrepsim.parquet"
    expected = choose_scales(table, load_trained(base).stages, tmp_path / "again.json", tau=0.5, k=5)
    assert chosen["scales"] == expected["scales"] and chosen["stages"] == expected["stages"]
    assert chosen["baseline"]["attention"] == "none" and len(chosen["scales"]) == 3

    stored = torch.load(res / "resnet8-stac-auto-standard-s0" / "model.pt", weights_only=True)
    assert stored["spec"]["attention"] == "stac"
    assert stored["spec"]["attention_kwargs"]["scales"] == chosen["scales"]
    assert stored["model_args"]["attention_kwargs"]["scales"] == chosen["scales"]

    cost = {r["attention"]: r for r in pl.read_parquet(res / "cost.parquet").to_dicts()}
    assert set(cost) == {"none", "se", "stac-auto"}
    assert cost["none"]["params_ratio"] == cost["none"]["flops_ratio"] == 1.0
    assert cost["se"]["params_ratio"] > 1 and cost["stac-auto"]["params_ratio"] > 1
    assert json.loads(cost["stac-auto"]["attention_kwargs"])["scales"] == chosen["scales"]
    acc = pl.read_parquet(res / "accuracy.parquet")
    assert acc.height == 3 and set(acc["attention"]) == {"none", "se", "stac-auto"}
    assert (res / "accuracy.csv").is_file() and (res / "cost.csv").is_file()

    # changing only tau reruns the choice and what depends on it: the stac-auto run, cost, summary
    overlay.write_text(yaml.safe_dump(dict(OVERLAY, stac_auto={"k": 5, "tau": 0.9})))
    assert planned_jobs(work, (overlay,)) == {
        "stac_scales": 1, "train": 1, "embed": 1, "knn": 1, "metrics": 1, "cost": 1,
        "summary": 1, "report": 1, "all": 1}
    plan = snakemake(work, "-n", configfiles=(overlay,))
    outputs = " ".join(line for line in (plan.stdout + plan.stderr).splitlines()
                       if line.strip().startswith("output:"))
    assert "resnet8-stac-auto-standard-s0/model.pt" in outputs
    assert "resnet8-none-standard-s0/" not in outputs and "resnet8-se-standard-s0/" not in outputs
