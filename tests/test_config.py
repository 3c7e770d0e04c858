"""Config validation: wrong keys, types and values fail at once with a message naming them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rra import config as rc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base() -> dict:
    """The default config without its experiments (the tests add what they need)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    del cfg["experiments"]
    return cfg


def validated(cfg: dict) -> dict:
    return rc.validate(copy.deepcopy(cfg))


def test_default_and_test_configs_validate(base):
    full = rc.load_config(ROOT / "config" / "config.yaml")
    assert list(rc.experiments(full)) == ["E1", "E2", "E3", "E4", "E5", "E6"]
    assert len(rc.runs_of(full)) == 23
    assert {a.experiment for a in rc.analyses(full)} == {"study", "E1", "E2", "E3", "E4", "E5", "stac_auto"}
    cfg = validated(base)
    assert cfg["knn"]["annoy"]["recall_target"] == 0.95
    test = rc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "test.yaml")
    assert test["training"]["epochs"] == 2 and test["training"]["lr"] == base["training"]["lr"]
    assert [r.name for r in rc.runs_of(test)] == [
        "lenet5-none-none-s0", "lenet5-none-standard-s0", "resnet8-none-standard-s0"]


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["knn"].update(kk=1), "'kk' was unexpected"),
    (lambda c: c.update(bogus=1), "'bogus' was unexpected"),
    (lambda c: c["training"].update(lr=-0.1), "lr"),
    (lambda c: c["training"].update(epochs="ten"), "'ten' is not of type 'integer'"),
    (lambda c: c["knn"].update(distance=["manhattan"]), "'manhattan' is not one of"),
    (lambda c: c["embed"].update(scales=[0, "full"]), "scales"),
    (lambda c: c["probe"].update(n_per_class=0), "n_per_class"),
    (lambda c: c.update(device="tpu"), "device"),
])
def test_schema_errors_name_the_key(base, mutate, needle):
    cfg = copy.deepcopy(base)
    mutate(cfg)
    with pytest.raises(Exception) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c.update(dataset="mnist6k"), "config key 'dataset': unknown dataset 'mnist6k'"),
    (lambda c: c.update(dataset="cifar10"), "config key 'data_dir'"),
    (lambda c: c.update(dataset="cifar10", data_dir="/nonexistent/rra"), "directory not found: /nonexistent/rra"),
    (lambda c: c["probe"].update(split="validation"), "config key 'probe.split'"),
    (lambda c: c["runs"][0].update(model="vgg11"), "config key 'runs[0].model': unknown model 'vgg11'"),
    (lambda c: c["runs"][1].update(attention=["nonlocal"]), "config key 'runs[1].attention'"),
    (lambda c: c["runs"][0].update(augmentation=["mixup"]), "config key 'runs[0].augmentation'"),
    (lambda c: c["attention"].update(sse={}), "config key 'attention.sse'"),
    (lambda c: c["runs"].append(copy.deepcopy(c["runs"][0])), "runs listed twice"),
    (lambda c: c["embed"].update(scales=[2, 2, "full"]), "config key 'embed.scales'"),
])
def test_semantic_errors_name_the_key(base, mutate, needle):
    cfg = copy.deepcopy(base)
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_train_spec_merges_overrides(base):
    cfg = copy.deepcopy(base)
    cfg["runs"][0]["training"] = {"lr": 0.01}
    cfg["runs"].append({"model": "resnet20", "attention": ["stac", "stac-auto"], "seeds": [1]})
    cfg = validated(cfg)
    lenet = rc.train_spec(cfg, rc.Run("lenet5", "none", "none", 0))
    resnet = rc.train_spec(cfg, rc.Run("resnet20", "none", "none", 0))
    assert lenet["lr"] == 0.01 and resnet["lr"] == cfg["training"]["lr"]
    assert lenet["epochs"] == resnet["epochs"] == cfg["training"]["epochs"]
    fixed = rc.train_spec(cfg, rc.Run("resnet20", "stac", "none", 1))
    auto = rc.train_spec(cfg, rc.Run("resnet20", "stac-auto", "none", 1), {"scales": [2, 2, 1]})
    assert fixed["attention"] == auto["attention"] == "stac"
    assert fixed["attention_kwargs"]["scales"] == [4, 2, 1]
    assert auto["attention_kwargs"]["scales"] == [2, 2, 1]
    with pytest.raises(rc.ConfigError, match="not in the config's 'runs' grid"):
        rc.train_spec(cfg, rc.Run("resnet20", "se", "none", 0))


def test_scales_and_names(base):
    cfg = validated(base)
    cfg["embed"]["scales"] = ["full", 4, 1]
    assert rc.embed_scales(cfg) == ["1", "4", "full"]
    assert rc.probe_name(cfg["probe"]) == "test-n50-s0"
    assert rc.probe_name({"split": "train", "n_per_class": "all", "seed": 3}) == "train-all-s3"
    for name in ("test-n100-s0", "train-all-s3"):
        assert rc.probe_name(rc.parse_probe(name)) == name
    with pytest.raises(rc.ConfigError, match="not of the form"):
        rc.parse_probe("test-100")
    assert rc.as_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_embed_input_setting(base):
    """embed.input: auto (default) follows the model (LeNet-5 on, ResNets off); true/false force."""
    cfg = validated(base)
    assert cfg["embed"]["input"] == "auto"
    assert rc.embed_input(cfg, "lenet5") is True
    assert rc.embed_input(cfg, "resnet20") is False
    for value in (True, False):
        cfg["embed"]["input"] = value
        validated(cfg)
        assert rc.embed_input(cfg, "lenet5") is value and rc.embed_input(cfg, "resnet20") is value
    cfg["embed"]["input"] = "yes"
    with pytest.raises(Exception, match="yes"):
        rc.validate(copy.deepcopy(cfg))
    with pytest.raises(rc.ConfigError, match="config key 'embed.input'"):
        rc.embed_input(cfg, "lenet5")
    smk = (ROOT / "rules" / "embed.smk").read_text()  # a rule param, so an edit reruns embed
    assert "rc.embed_input(config, w.model)" in smk.split("params:")[1].split("log:")[0]


def test_knn_specs():
    cfg = rc.load_config(ROOT / "config" / "config.yaml")
    assert rc.knn_spec("cosine", "exact") == "cosine-exact"
    assert rc.knn_spec("euclidean", {"backend": "annoy", "n_trees": 10, "search_k": "auto"}) == "euclidean-annoy-t10-sauto"
    assert rc.knn_spec("euclidean", {"backend": "annoy", "search_k": -1}) == "euclidean-annoy-td-s-1"
    dist, backend, opts = rc.parse_knn_spec(cfg, "euclidean-annoy-t10-s-1")
    assert (dist, backend, opts["n_trees"], opts["search_k"]) == ("euclidean", "annoy", 10, -1)
    assert rc.parse_knn_spec(cfg, "cosine-annoy")[2]["n_trees"] == cfg["knn"]["annoy"]["n_trees"]
    with pytest.raises(rc.ConfigError, match="not of the form"):
        rc.parse_knn_spec(cfg, "manhattan-exact")


def test_analyses_share_folders_with_the_union_of_k(base):
    cfg = copy.deepcopy(base)
    cfg["runs"] = [{"model": "lenet5", "attention": ["none"], "augmentation": ["none"], "seeds": [0]}]
    cfg["knn"]["k"] = [10, 50]
    cfg["experiments"] = {
        "E1": {"description": "k sweep", "k": [15, 100], "nntp_alpha": [0]},
        "E2": {"description": "probe size and backends",
               "probes": [{"split": "test", "n_per_class": 20, "seed": 0}],
               "knn": [{"distance": "cosine", "backend": "exact"},
                       {"distance": "euclidean", "backend": "annoy", "n_trees": 5, "search_k": "auto"}]},
        "E6": {"description": "dynamics", "analyse": False,
               "runs": [{"model": "resnet8", "augmentation": ["standard"], "seeds": [0, 1]}]},
    }
    cfg = validated(cfg)
    lenet = rc.Run("lenet5", "none", "none", 0)
    assert [r.name for r in rc.runs_of(cfg)] == ["lenet5-none-none-s0", "resnet8-none-standard-s0",
                                                 "resnet8-none-standard-s1"]
    cfg["probe"]["n_per_class"] = 100
    folders = {(a.probe, a.knn) for a in rc.analyses(cfg)}
    assert folders == {("test-n100-s0", "euclidean-auto"), ("test-n20-s0", "cosine-exact"),
                       ("test-n20-s0", "euclidean-annoy-t5-sauto")}
    # E1 shares the top-level folder: one graph at k_max = 100 and tables at every k
    assert rc.metrics_params(cfg, lenet, "test-n100-s0", "euclidean-auto") == {
        "k": [10, 15, 50, 100], "nntp_alpha": [0, 1], "nntp_k": [10, 15, 50, 100],
        "tables": ["nnts", "nntp", "class_response", "classrepsim", "peers", "cka"]}
    assert rc.knn_params(cfg, lenet, "test-n100-s0", "euclidean-auto")["k"] == 100
    annoy = rc.knn_params(cfg, lenet, "test-n20-s0", "euclidean-annoy-t5-sauto")
    assert (annoy["k"], annoy["n_trees"], annoy["search_k"]) == (50, 5, "auto")
    assert [a.experiment for a in rc.analyses(cfg, "E6")] == []
    # an experiment asking for NNTS and NNTP at one k only (published E1) in a folder of its own
    cfg["experiments"]["E2"].update(tables=["nnts", "nntp"], nntp_k=[5, 10])
    cfg["experiments"]["E2"]["k"] = [10, 20]
    assert rc.metrics_params(cfg, lenet, "test-n20-s0", "cosine-exact") == {
        "k": [10, 20], "nntp_alpha": [0, 1], "nntp_k": [10], "tables": ["nnts", "nntp"]}
    with pytest.raises(rc.ConfigError, match="no analysis of run"):
        rc.knn_params(cfg, lenet, "test-n20-s0", "euclidean-auto")


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["experiments"].update(E1={"description": "x", "runs": [{"model": "vgg"}]}),
     "config key 'experiments.E1.runs[0].model': unknown model 'vgg'"),
    (lambda c: c["experiments"].update(E1={"description": "x", "probes": [{"split": "val"}]}),
     "config key 'experiments.E1.probes[0].split'"),
    (lambda c: c["experiments"].update(E1={"description": "x", "runs": [
        {"model": "lenet5", "augmentation": ["none"], "seeds": [0], "training": {"lr": 0.5}}]}),
     "is also listed at 'runs[0]' with other model_kwargs/training"),
    (lambda c: c["experiments"].update(X1={"description": "x"}), "X1"),
    (lambda c: c["experiments"].update(E1={"k": [0]}), "0 is less than the minimum of 1"),
])
def test_experiment_errors(base, mutate, needle):
    cfg = copy.deepcopy(base)
    cfg.setdefault("experiments", {})
    mutate(cfg)
    with pytest.raises(Exception) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_large_k_needs_nnts_only_and_exact(tmp_path):
    """k above knn.store_k_max: NNTS (and NNTP at stored k) only, never Annoy — stopped before
    any job runs, naming the key."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg = rc.merge(base, {"experiments": {"E1": {"k": [15, 2000]}}})
    with pytest.raises(rc.ConfigError, match="knn.store_k_max.*class_response"):
        rc.validate(cfg)
    cfg["experiments"]["E1"]["tables"] = ["nnts", "nntp"]
    cfg["metrics"]["tables"] = ["nnts", "nntp"]  # the top-level analysis shares E1's folder
    cfg["experiments"]["E1"]["nntp_k"] = [2000]
    with pytest.raises(rc.ConfigError, match="metrics.nntp_k"):
        rc.validate(cfg)
    cfg["experiments"]["E1"]["nntp_k"] = [15]
    rc.validate(cfg)
    run = rc.Run("lenet5", "none", "none", 0)
    assert rc.split_k([15, 100, 2000], 1000) == (100, [2000])
    assert rc.split_k([2000], 1000) == (10, [2000])
    assert rc.knn_params(cfg, run, rc.probe_name(cfg["probe"]), "euclidean-auto")["nnts_k"] == [2000]
    cfg["knn"]["backend"] = "annoy"
    with pytest.raises(rc.ConfigError, match="knn.backend"):
        rc.validate(cfg)


def test_published_overlays_validate(tmp_path):
    def load(name: str) -> dict:
        cfg = rc.merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                       yaml.safe_load((ROOT / "config" / name).read_text()))
        cfg["data_dir"] = str(tmp_path)
        return rc.validate(cfg)

    mnist = load("published-mnist.yaml")
    assert list(rc.experiments(mnist)) == ["E1"]
    lenet = rc.Run("lenet5", "none", "none", 0)
    assert rc.metrics_params(mnist, lenet, "train-all-s0", "euclidean-exact") == {
        "k": [15, 100, 6000, 12000], "nntp_alpha": [0], "tables": ["nnts", "nntp"], "nntp_k": [15]}
    knn = rc.knn_params(mnist, lenet, "train-all-s0", "euclidean-exact")
    assert (knn["k"], knn["nnts_k"]) == (100, [6000, 12000])  # graphs at 100, the sweep above
    assert rc.embed_input(mnist, "lenet5") is True
    cifar = load("published-cifar10.yaml")
    assert set(rc.experiments(cifar)) == {"E2", "E3", "E4", "E5", "E6"}
    assert rc.train_spec(cifar, rc.Run("resnet20", "none", "standard", 0))["milestones"] == [82, 123]
