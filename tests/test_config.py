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
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def validated(cfg: dict) -> dict:
    return rc.validate(copy.deepcopy(cfg))


def test_default_and_test_configs_validate(base):
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
    assert rc.probe_name(cfg) == "test-n100-s0"
    assert rc.knn_params(cfg)["k"] == 50
    assert rc.as_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
