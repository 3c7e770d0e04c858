"""Config validation: wrong keys, types and values fail at once with a message naming them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from rra import config as rc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """The default config without its experiments (the tests add what they need), with a
    results_dir of its own: class counts must not come from a checkout's prepared data."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    del cfg["experiments"]
    cfg["results_dir"] = str(tmp_path_factory.mktemp("config") / "results")
    return cfg


def validated(cfg: dict) -> dict:
    return rc.validate(copy.deepcopy(cfg))


def test_default_and_test_configs_validate(base):
    full = rc.load_config(ROOT / "config" / "config.yaml")
    assert list(rc.experiments(full))[:9] == ["E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8", "E9"]
    assert list(rc.experiments(full))[-1] == "E11" and len(rc.placements(full)) == 8
    assert len(rc.runs_of(full)) == 24  # E8 adds ResNet-20 without BatchNorm
    assert {a.experiment for a in rc.analyses(full)} == {"study", "E1", "E2", "E3", "E4", "E5",
                                                         "E10", "stac_auto"}
    cfg = validated(base)
    assert cfg["knn"]["annoy"]["recall_target"] == 0.95
    test = rc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "test.yaml")
    assert test["training"]["epochs"] == 2 and test["training"]["lr"] == base["training"]["lr"]
    assert [r.name for r in rc.runs_of(test)] == [
        "lenet5-none-none-s0", "lenet5-none-standard-s0", "resnet8-none-standard-s0",
        "resnet8nobn-none-standard-s0"]
    assert len(rc.layer_analyses(test)) == 2 + 2 + 3 * 2 + 2


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["knn"].update(kk=1), "config key 'knn.kk': unknown key; allowed in 'knn': annoy, "
                                      "backend, cost, distance, k,"),
    (lambda c: c.update(bogus=1), "config key 'bogus': unknown key; allowed at the top level: "
                                  "attention, data_dir, dataset,"),
    (lambda c: c["training"].update(lr=-0.1),
     "config key 'training.lr': -0.1 is less than or equal to the minimum of 0"),
    (lambda c: c["training"].update(epochs="ten"),
     "config key 'training.epochs': 'ten' is not of type 'integer'"),
    (lambda c: c["knn"].update(distance=["manhattan"]),
     "config key 'knn.distance[0]': 'manhattan' is not one of ['euclidean', 'cosine']"),
    (lambda c: c["embed"].update(scales=[0, "full"]),
     "config key 'embed.scales[0]': 0 is not allowed; expected integer >= 1 or one of ['full']"),
    (lambda c: c["probe"].update(n_per_class=0),
     "config key 'probe.n_per_class': 0 is not allowed"),
    (lambda c: c.update(device="tpu"), "config key 'device': 'tpu' does not match"),
    (lambda c: c["runs"][0].pop("model"), "config key 'runs[0]': 'model' is a required property"),
    (lambda c: c.update(runs={"model": "lenet5"}),
     "config key 'runs': {'model': 'lenet5'} is not of type 'array'"),
])
def test_schema_errors_name_the_key(base, mutate, needle):
    """One short line naming the key and what is allowed; never the schema or the config."""
    cfg = copy.deepcopy(base)
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message and len(message) < 400
    assert "$schema" not in message and "description" not in message


@pytest.mark.parametrize("key, value", [("lr", float("nan")), ("lr", float("inf")),
                                        ("weight_decay", float("nan")), ("momentum", float("nan")),
                                        ("gamma", float("inf"))])
def test_non_finite_numbers_are_refused(base, key, value):
    """YAML's .nan / .inf pass the schema's ranges (every comparison with nan is false)."""
    cfg = copy.deepcopy(base)
    cfg["training"][key] = value
    with pytest.raises(rc.ConfigError, match=f"config key 'training.{key}': {value} is not a "
                                             "finite number"):
        rc.validate(cfg)
    cfg = copy.deepcopy(base)
    cfg["runs"][0]["training"] = {key: value}
    with pytest.raises(rc.ConfigError, match=rf"config key 'runs\[0\].training.{key}'"):
        rc.validate(cfg)
    cfg = yaml.safe_load(f"training: {{lr: {'.nan' if value != value else '.inf'}}}")
    with pytest.raises(rc.ConfigError, match="config key 'training.lr'"):
        rc.check_finite(cfg)


def test_schema_defaults_match_snakemake_validate(base):
    """Our validator fills exactly the defaults that snakemake.utils.validate fills."""
    from snakemake.utils import validate as snakemake_validate

    for overlay in ("test.yaml", "published-mnist.yaml"):
        cfg = rc.merge(copy.deepcopy(base), yaml.safe_load((ROOT / "config" / overlay).read_text()))
        ours, theirs = copy.deepcopy(cfg), copy.deepcopy(cfg)
        rc.schema_validate(ours)
        snakemake_validate(theirs, str(rc.SCHEMA))
        assert ours == theirs and ours["knn"]["annoy"]["n_trees"] == 50


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


def test_e2_folders_and_settings():
    """The E2 guideline compares the runs analysed under two or more settings; its reference
    is the analysis of the most runs (the main grid's), report.k and report.scale."""
    full = rc.load_config(ROOT / "config" / "config.yaml")
    folders = rc.e2_folders(full)
    assert {run.name for run, _, _ in folders} == {"lenet5-none-none-s0",
                                                   "resnet20-none-standard-s0"}
    assert len(folders) == 2 * 3 + 2  # E2's probes × kNN settings; the STAC baseline's two
    assert len(rc.analysis_folders(full)) < len(rc.analyses(full))  # experiments share folders
    assert rc.e2_settings(full) == {
        "reference": {"probe": "test-n50-s0", "distance": "euclidean", "backend": "auto"},
        "k": None, "scale": "full"}
    test = rc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "test.yaml")
    assert rc.e2_folders(test) == []  # one analysis per run: no E2 job
    a, b = ("p", "euclidean", "auto"), ("p", "euclidean", "annoy-t10-sauto")
    assert rc.reference_analysis([a, b]) == b  # a tie: name order, or the config's
    assert rc.reference_analysis([a, b], {"probe": "p", "distance": "euclidean",
                                          "backend": "auto"}) == a


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
        "tables": ["nnts", "nntp", "class_response", "classrepsim", "peers", "cka"],
        "bootstrap": {"B": 200, "permutations": 20, "seed": 0, "level": 0.95}}
    assert rc.knn_params(cfg, lenet, "test-n100-s0", "euclidean-auto")["k"] == 100
    annoy = rc.knn_params(cfg, lenet, "test-n20-s0", "euclidean-annoy-t5-sauto")
    assert (annoy["k"], annoy["n_trees"], annoy["search_k"]) == (50, 5, "auto")
    assert [a.experiment for a in rc.analyses(cfg, "E6")] == []
    # one block of settings per analysing experiment, unset fields from the top level
    study, e1, e2 = rc.analysis_blocks(cfg)
    assert (study.experiment, e1.experiment, e2.experiment) == ("study", "E1", "E2")
    assert (e1.ks, e1.alphas, e1.probes, e1.knns) == ((15, 100), (0,), study.probes, study.knns)
    assert (e2.ks, e2.probes, e2.tables) == (study.ks, ("test-n20-s0",), study.tables)
    # an experiment asking for NNTS and NNTP at one k only (published E1) in a folder of its own
    cfg["experiments"]["E2"].update(tables=["nnts", "nntp"], nntp_k=[5, 10])
    cfg["experiments"]["E2"]["k"] = [10, 20]
    assert rc.metrics_params(cfg, lenet, "test-n20-s0", "cosine-exact") == {
        "k": [10, 20], "nntp_alpha": [0, 1], "nntp_k": [10], "tables": ["nnts", "nntp"],
        "bootstrap": {"B": 200, "permutations": 20, "seed": 0, "level": 0.95}}
    with pytest.raises(rc.ConfigError, match="no analysis of run"):
        rc.knn_params(cfg, lenet, "test-n20-s0", "euclidean-auto")


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["experiments"].update(E1={"description": "x", "runs": [{"model": "vgg"}]}),
     "config key 'experiments.E1.runs[0].model': unknown model 'vgg'"),
    (lambda c: c["experiments"].update(E1={"description": "x", "probes": [{"split": "holdout"}]}),
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
    cfg["probe"] = {"split": "train", "n_per_class": 300, "seed": 0}  # n = 3000 > k
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
        "k": [15, 100, 6000, 12000], "nntp_alpha": [0], "tables": ["nnts", "nntp"], "nntp_k": [15],
        "bootstrap": {"B": 200, "permutations": 20, "seed": 0, "level": 0.95}}
    knn = rc.knn_params(mnist, lenet, "train-all-s0", "euclidean-exact")
    assert (knn["k"], knn["nnts_k"]) == (100, [6000, 12000])  # graphs at 100, the sweep above
    assert rc.embed_input(mnist, "lenet5") is True
    cifar = load("published-cifar10.yaml")
    assert set(rc.experiments(cifar)) == {"E2", "E3", "E4", "E5", "E6", "E7", "E8", "E9",
                                          "E10", "E11"}
    assert {(p.reference, p.heldout) for p in rc.placements(cifar)} == {
        ("train-n500-s0", "test-n100-s0")}
    frag = [a for a in rc.layer_analyses(cifar) if a.analysis == "fragmentation"]
    assert {a.run.model for a in frag} == {"resnet20"} and all(
        '"triplets":50' in a.params and '"resolution":50' in a.params for a in frag)
    assert rc.train_spec(cifar, rc.Run("resnet20", "none", "standard", 0))["milestones"] == [82, 123]


# ------------------------------------------------ every bad input stopped before work starts

@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["knn"].update(k=[10, 500]),
     "config key 'knn.k': k = 500 must be smaller than the probe size n = 500 of probe "
     "test-n50-s0 ('probe': 50 per class × 10 classes)"),
    (lambda c: c["experiments"].update(E1={"description": "x", "k": [15, 600]}),
     "config key 'experiments.E1.k': k = 600 must be smaller than the probe size n = 500"),
    (lambda c: c["experiments"].update(E2={"description": "x", "k": [5, 200], "probes": [
        {"split": "test", "n_per_class": 20, "seed": 0}]}),
     "config key 'experiments.E2.k': k = 200 must be smaller than the probe size n = 200 of probe "
     "test-n20-s0 ('experiments.E2.probes[0]': 20 per class × 10 classes)"),
    (lambda c: c["experiments"].update(E2={"description": "x", "probes": [
        {"split": "test", "n_per_class": 4, "seed": 0}]}),
     "config key 'knn.k': k = 50 must be smaller than the probe size n = 40 of probe test-n4-s0 "
     "('experiments.E2.probes[0]': 4 per class × 10 classes)"),
    (lambda c: c["probe"].update(n_per_class=101),
     "config key 'probe.n_per_class': 101 rows per class, but class 0 of split 'test' has 100 "
     "(the registry's class counts of mnist5k test)"),
    (lambda c: (c["probe"].update(n_per_class="all"), c["knn"].update(k=[10, 1000])),
     "config key 'knn.k': k = 1000 must be smaller than the probe size n = 1000 of probe "
     "test-all-s0 ('probe': every row of split 'test'"),
    (lambda c: (c["dataset_options"].update(test_per_class=20),
                c["probe"].update(n_per_class="all"), c["knn"].update(k=[10, 200])),
     "config key 'knn.k': k = 200 must be smaller than the probe size n = 200 of probe test-all-s0 "
     "('probe': every row of split 'test', the registry's class counts of mnist5k test)"),
])
def test_k_at_least_the_probe_size_fails_at_load(base, mutate, needle):
    """k ≥ n (a row has n − 1 others) used to pass, then fail in the kNN job after every
    training."""
    cfg = copy.deepcopy(base)
    cfg["experiments"] = {}
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_k_just_below_the_probe_size_passes(base):
    cfg = copy.deepcopy(base)
    cfg["knn"]["k"] = [10, 499]  # n = 50 × 10 = 500
    rc.validate(cfg)
    assert rc.probe_size(cfg, cfg["probe"]) == 500
    assert rc.probe_size(cfg, {"split": "test", "n_per_class": "all", "seed": 0}) == 1000


def test_real_dataset_sizes_from_the_registry_then_from_the_prepared_files(base, tmp_path):
    """MNIST's class counts are known before its files are read (test: 892 fives); once the data
    are prepared, the counts in the prepared manifest rule, if it matches the config."""
    cfg = copy.deepcopy(base)
    cfg.update(dataset="mnist", data_dir=str(tmp_path / "src"), results_dir=str(tmp_path / "res"))
    (tmp_path / "src").mkdir()
    cfg["probe"]["n_per_class"] = 893
    with pytest.raises(rc.ConfigError, match=r"config key 'probe.n_per_class': 893 rows per class, "
                                             r"but class 5 of split 'test' has 892"):
        rc.validate(copy.deepcopy(cfg))
    cfg["probe"]["n_per_class"] = 892
    rc.validate(copy.deepcopy(cfg))
    # prepared files of fewer images: their counts are what the probe gets
    counts = [30] * 10
    src = str(tmp_path / "src" / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    prepared = {"dataset": "mnist", "options": {}, "val": cfg.get("val"),
                "splits": {"test": {"class_counts": counts, "sources": [{"path": src}]}}}
    (tmp_path / "res" / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "res" / "data" / "mnist" / "manifest.json").write_text(json.dumps(prepared))
    with pytest.raises(rc.ConfigError, match=r"class 0 of split 'test' has 30 \(counted in "):
        rc.validate(copy.deepcopy(cfg))
    assert rc.split_class_counts(cfg, "test")[0] == tuple(counts)
    # a manifest of another data_dir (or other options) is stale: back to the registry
    other = dict(cfg, data_dir=str(tmp_path / "src2"))
    assert rc.split_class_counts(other, "test") == ((980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                      974, 1009), "the registry's class counts of "
                                                                  "mnist test")
    other = dict(cfg, dataset_options={"unknown": 1})
    assert rc.split_class_counts(other, "test")[0][5] == 892


def test_probe_requirements_and_the_prepare_check(base):
    """The same rule at load (registry counts) and in the prepare job (counted in the files)."""
    cfg = validated(base)
    reqs = {r["probe"]: r for r in rc.probe_requirements(cfg)}
    assert reqs["test-n50-s0"]["k"] == 50 and reqs["test-n50-s0"]["k_key"] == "knn.k"
    small = {"test": ((5,) * 10, "counted in the files of test")}
    with pytest.raises(rc.ConfigError, match=r"config key 'probe.n_per_class': 50 rows per class, "
                                             r"but class 0 of split 'test' has 5 \(counted in the "
                                             r"files of test\)"):
        rc.check_probes(list(reqs.values()), lambda s: small.get(s, (None, "")), 10)
    rc.check_probes(list(reqs.values()), lambda s: ((60,) * 10, "x"), 10)
    every = [{**reqs["test-n50-s0"], "n_per_class": "all"}]
    with pytest.raises(rc.ConfigError, match="k = 50 must be smaller than the probe size n = 50"):
        rc.check_probes(every, lambda s: ((5,) * 10, "counted"), 10)
    rc.check_probes(every, lambda s: (None, ""), 10)  # unknown until the files are read


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["report"].update(scale=8),
     "config key 'report.scale': 8 is not a computed scale; "
     "embed.scales = ['1', '2', '4', 'full']"),
    (lambda c: c["embed"].update(scales=[1, 2]),
     "config key 'report.scale': 'full' is not a computed scale"),
    (lambda c: c["report"].update(k=20),
     "config key 'report.k': k = 20 is not computed for test-n50-s0 / euclidean-auto / lenet5 "
     "(k there: [10, 50]); use one that every analysis computes: [10, 50] or null"),
    (lambda c: c["report"].update(alpha=2),
     "config key 'report.alpha': alpha = 2 is not computed for test-n50-s0 / euclidean-auto "
     "(alpha there: [0, 1])"),
    (lambda c: c["metrics"].update(nntp_alpha=[1]),
     "config key 'report.alpha': alpha = 0 is not computed"),
    (lambda c: c["metrics"].update(nntp_k=[20]),
     "config key 'metrics.nntp_k': NNTP at k = [20], which knn.k = [10, 50] does not compute"),
])
def test_report_and_nntp_options_checked_at_load(base, mutate, needle):
    """These used to fail in the last job (report.k, alpha) or give a partial report with exit
    status 0 (report.scale), or be dropped without a word (nntp_k)."""
    cfg = copy.deepcopy(base)
    cfg["report"] = {}
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_report_k_must_be_computed_by_every_analysis(base):
    cfg = copy.deepcopy(base)
    cfg["experiments"] = {"E2": {"description": "x", "k": [5, 10],
                                 "probes": [{"split": "test", "n_per_class": 20, "seed": 0}]}}
    cfg["report"] = {"k": 10, "scale": 2, "alpha": 1}
    rc.validate(copy.deepcopy(cfg))
    cfg["report"]["k"] = 50
    with pytest.raises(rc.ConfigError, match=r"'report.k': k = 50 is not computed for test-n20-s0 "
                                             r"/ euclidean-auto / lenet5 \(k there: \[5, 10\]\); "
                                             r"use one that every analysis computes: \[10\]"):
        rc.validate(cfg)


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["dataset_options"].update(test_per_class=500),
     "config key 'dataset_options': dataset 'mnist5k': option test_per_class must be in [1, 499]"),
    (lambda c: c["dataset_options"].update(test_size=5),
     "config key 'dataset_options': dataset 'mnist5k': unknown option(s) test_size"),
    (lambda c: c["runs"][1].update(model_kwargs={"widht": 2}),
     "config key 'runs[1].model_kwargs' (run resnet20-none-none-s0): model 'resnet20': unknown "
     "keyword argument(s) ['widht']"),
    (lambda c: (c["runs"][1].update(attention=["none", "se"]),
                c["attention"].update(se={"reductio": 2})),
     "config key 'attention.se' (run resnet20-se-none-s0): attention 'se': unknown keyword "
     "argument(s) ['reductio']"),
    (lambda c: c["training"].update(momentum=0),
     "config key 'training.nesterov' (run lenet5-none-none-s0): training spec key 'nesterov': "
     "Nesterov momentum needs momentum > 0"),
    (lambda c: c["runs"][0].update(training={"schedule": "step", "milestones": [3, 2]}),
     "config key 'runs[0].training.milestones' (run lenet5-none-none-s0)"),
])
def test_dataset_model_and_training_options_checked_at_load(base, mutate, needle):
    """They used to fail in the prepare or training job (after other trainings had run)."""
    cfg = copy.deepcopy(base)
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def layer_config(base: dict, **layers) -> dict:
    """``base`` with experiment E7 running the given layer analyses on LeNet-5 and ResNet-20."""
    cfg = copy.deepcopy(base)
    cfg["experiments"] = {"E7": {"description": "x", "analyse": False, "layers": layers, "runs": [
        {"model": "lenet5", "augmentation": ["none", "standard"]},
        {"model": "resnet20", "augmentation": ["standard"]}]}}
    return cfg


def test_layer_analyses_of_the_default_study_and_their_settings(base):
    full = rc.load_config(ROOT / "config" / "config.yaml")
    la = rc.layer_analyses(full)
    assert len(la) == 17 and {a.probe for a in la} == {"test-n10-s0"}
    assert {(a.experiment, a.analysis) for a in la} == {
        ("E7", "translation"), ("E8", "patterns"), ("E9", "margins"), ("E9", "saliency"),
        ("E9", "fragmentation")}
    assert {a.run.model for a in la if a.analysis == "fragmentation"} == {"lenet5"}
    assert {a.run.name for a in rc.layer_analyses(full, "E8")} == {
        "resnet20-none-none-s0", "resnet20-none-standard-s0", "resnet20nobn-none-none-s0"}
    params = rc.layer_params(full, rc.Run("resnet20", "none", "none", 0), "test-n10-s0",
                             "patterns")
    assert params == {"batch_size": 250, "seed": 0, "tree": {}, "train": "train-n50-s0",
                      "bootstrap": full["metrics"]["bootstrap"]}
    assert params["bootstrap"]["B"] == 200
    frag = rc.layer_params(full, rc.Run("lenet5", "none", "none", 0), "test-n10-s0",
                           "fragmentation")
    assert frag["batch_size"] == 2500 and frag["triplets"] == 2 and "models" not in frag
    with pytest.raises(rc.ConfigError, match="no layer analysis 'patterns' of run"):
        rc.layer_params(full, rc.Run("lenet5", "none", "none", 0), "test-n10-s0", "patterns")
    needs = {r["probe"]: r for r in rc.probe_requirements(full)}
    assert needs["test-n10-s0"]["k"] == 0 and needs["test-n10-s0"]["probe_key"] == "layers.probe"
    # the trees' training subset is also E11's placement reference, whose graph is at k = 50
    assert needs["train-n50-s0"]["k"] == 50 and needs["train-n50-s0"]["probe_key"] == \
        "experiments.E11.placement.reference"
    # schema defaults are the spec's settings (seed-measures.md)
    defaults = validated({k: v for k, v in base.items() if k != "layers"})["layers"]
    assert defaults["fragmentation"]["triplets"] == 50 and defaults["fragmentation"][
        "resolution"] == 50 and defaults["margins"]["pca_k"] == [1, 5, 25, "full"]
    assert defaults["translation"] == {"max_shift": 4, "scales": [1, "full"]}


def test_experiment_overrides_the_layers_block_per_analysis(base):
    cfg = layer_config(base, translation={"max_shift": 2,
                                          "probe": {"split": "test", "n_per_class": 5}},
                       margins={})
    cfg = validated(cfg)
    la = {(a.run.name, a.analysis): a for a in rc.layer_analyses(cfg)}
    assert la[("lenet5-none-none-s0", "translation")].probe == "test-n5-s0"
    assert rc.layer_params(cfg, rc.Run("lenet5", "none", "none", 0), "test-n5-s0",
                           "translation")["max_shift"] == 2
    assert la[("lenet5-none-none-s0", "margins")].probe == "test-n10-s0"


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["experiments"]["E7"]["layers"].update(translation={"max_shfit": 2}),
     "config key 'experiments.E7.layers.translation.max_shfit': unknown key; allowed in "
     "'experiments.E7.layers.translation': batch_size, max_shift, models, probe, scales"),
    (lambda c: c["experiments"]["E7"]["layers"].update(translation={"scales": [0]}),
     "config key 'experiments.E7.layers.translation.scales[0]': 0 is not allowed"),
    (lambda c: c["experiments"]["E7"]["layers"].update(bogus={}),
     "config key 'experiments.E7.layers.bogus': unknown key"),
    (lambda c: c["layers"].update(translation={"max_shift": 28}),
     "config key 'layers.translation.max_shift': 28 must be smaller than the image side 28"),
    (lambda c: c["experiments"]["E7"]["layers"].update(translation={"scales": [1, 1]}),
     "config key 'experiments.E7.layers.translation.scales': repeated scale in [1, 1]"),
    (lambda c: c["layers"].update(patterns={"tree": {"max_depth": -1}}),
     "config key 'layers.patterns.tree': The 'max_depth' parameter"),
    (lambda c: c["layers"].update(patterns={"tree": {"random_state": 1}}),
     "config key 'layers.patterns.tree': random_state is the analysis's seed"),
    (lambda c: c["layers"].update(patterns={"tree": {"depth": 2}}),
     "config key 'layers.patterns.tree': "),
    (lambda c: c["experiments"]["E7"]["layers"].update(margins={"pca_k": [1, 600]}),
     "config key 'experiments.E7.layers.margins.pca_k': k = 600 exceeds the rank n − 1 = 499 of "
     "the training subset ('layers.margins.train'); use k ≤ 499 or 'full'"),
    (lambda c: c["layers"].update(margins={"train": {"split": "train", "n_per_class": 1000}}),
     "config key 'layers.margins.train.n_per_class': 1000 rows per class, but class 0 of split "
     "'train'"),
    (lambda c: c["layers"].update(probe={"split": "test", "n_per_class": 101}),
     "config key 'layers.probe.n_per_class': 101 rows per class, but class 0 of split 'test' "
     "has 100"),
    (lambda c: c["layers"].update(probe={"split": "tset", "n_per_class": 5}),
     "config key 'layers.probe.split': dataset 'mnist5k' has splits"),
    (lambda c: c["experiments"]["E7"]["layers"].update(fragmentation={"models": ["vgg11"]}),
     "config key 'experiments.E7.layers.fragmentation.models': model(s) ['vgg11'] are not among "
     "the runs of experiment E7 (['lenet5', 'resnet20'])"),
    (lambda c: c["experiments"]["E7"]["layers"].update(fragmentation={
        "probe": {"split": "test", "n_per_class": 2}}),
     "config key 'experiments.E7.layers.fragmentation.probe.n_per_class': same_class triplets "
     "need 3 probe rows of a class, the probe has 2 per class"),
    (lambda c: c["experiments"]["E7"]["layers"].update(fragmentation={"kinds": []}),
     "config key 'experiments.E7.layers.fragmentation.kinds': [] should be non-empty"),
    (lambda c: c["experiments"]["E7"]["layers"].update(saliency={"images": 101}),
     "config key 'experiments.E7.layers.saliency.images': 101 images in the grid, the probe "
     "has 100 rows"),
    (lambda c: c["experiments"]["E7"]["layers"].update(saliency={"top": 0}),
     "config key 'experiments.E7.layers.saliency.top': 0 is less than or equal to the minimum"),
    (lambda c: c["experiments"].update(E7b={"layers": {"translation": {"max_shift": 3}},
                                            "runs": [{"model": "lenet5"}]}),
     "config key 'experiments.E7b.layers.translation': run 'lenet5-none-none-s0' on probe "
     "test-n10-s0 is also analysed (translation) by experiment E7 with other settings"),
])
def test_layer_settings_checked_at_load(base, mutate, needle):
    cfg = layer_config(base, translation={}, patterns={}, margins={}, saliency={},
                       fragmentation={})
    mutate(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)
