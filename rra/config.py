"""Study configuration: schema validation, semantic checks, the run grid and per-stage settings.

`config/schema.yaml` (JSON schema, defaults filled in) catches wrong keys, types and ranges;
:func:`check_config` adds what a schema cannot express: names that must exist in a registry,
a data directory that must exist, scales that must parse. Every message names the config key.

The helpers here turn the validated config into the exact settings each stage receives.
Snakemake passes those settings to the stage as JSON ``params``, so editing one config value
reruns exactly the jobs whose settings changed (Snakemake's ``params`` rerun trigger).
"""

from __future__ import annotations

import inspect
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"

#: attention names that are workflow variants rather than modules: ``stac-auto`` is the ``stac``
#: module with per-stage scales chosen by the ClassRepSim analysis of a trained baseline.
AUTO_ATTENTION = {"stac-auto": "stac"}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


@dataclass(frozen=True, order=True)
class Run:
    """One trained model of the grid; its name is the results folder."""

    model: str
    attention: str
    augmentation: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.attention}-{self.augmentation}-s{self.seed}"


def load_config(path: str | Path, *overlays: str | Path) -> dict[str, Any]:
    """Read a config file (plus overlays merged on top), validate it and fill in defaults."""
    import yaml

    config: dict[str, Any] = {}
    for p in (path, *overlays):
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        merge(config, yaml.safe_load(p.read_text()) or {})
    validate(config)
    return config


def merge(base: dict, overlay: dict) -> dict:
    """Recursive dict update (lists and scalars replace), as Snakemake merges --configfile."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Schema validation (fills defaults in place), then :func:`check_config`."""
    from snakemake.utils import validate as schema_validate

    schema_validate(config, str(SCHEMA))
    check_config(config)
    return config


def check_config(config: dict[str, Any]) -> None:
    """Checks beyond the schema: registry names, data directory, splits, scales, run grid, and
    what a ``stac-auto`` run needs (:func:`check_stac_auto`)."""
    from rra.data import DATASETS, dataset_info
    from rra.models import MODELS
    from rra.models.attention import ATTENTION
    from rra.train import AUGMENTATIONS

    name = config["dataset"]
    if name not in DATASETS:
        raise ConfigError(f"config key 'dataset': unknown dataset {name!r}; known: {sorted(DATASETS)}")
    info = dataset_info(name)
    if info.needs_data_dir:
        data_dir = config.get("data_dir")
        if not data_dir:
            raise ConfigError(f"config key 'data_dir': dataset {name!r} loads from a local "
                              "directory; set data_dir to the folder that holds it")
        if not Path(data_dir).is_dir():
            raise ConfigError(f"config key 'data_dir': directory not found: {data_dir}")
    split = config["probe"]["split"]
    if split not in info.splits:
        raise ConfigError(f"config key 'probe.split': dataset {name!r} has splits "
                          f"{list(info.splits)}, not {split!r}")
    for i, run in enumerate(config["runs"]):
        where = f"runs[{i}]"
        if run["model"] not in MODELS:
            raise ConfigError(f"config key '{where}.model': unknown model {run['model']!r}; "
                              f"known: {sorted(MODELS)}")
        for attn in run["attention"]:
            if AUTO_ATTENTION.get(attn, attn) not in ATTENTION:
                raise ConfigError(f"config key '{where}.attention': unknown attention {attn!r}; "
                                  f"known: {sorted(ATTENTION) + sorted(AUTO_ATTENTION)}")
        for aug in run["augmentation"]:
            if aug not in AUGMENTATIONS:
                raise ConfigError(f"config key '{where}.augmentation': unknown augmentation "
                                  f"{aug!r}; known: {sorted(AUGMENTATIONS)}")
    for attn in config["attention"]:
        if attn not in ATTENTION:
            raise ConfigError(f"config key 'attention.{attn}': unknown attention module; "
                              f"known: {sorted(ATTENTION)}")
    for i, run in enumerate(config["runs"]):
        if (any(a != "none" for a in run["attention"])
                and "attention" not in inspect.signature(MODELS[run["model"]]).parameters):
            raise ConfigError(f"config key 'runs[{i}].attention': model {run['model']!r} has no "
                              f"residual blocks, so it takes attention 'none' only, got "
                              f"{run['attention']}")
    runs = runs_of(config)
    if len(set(runs)) != len(runs):
        dup = sorted({r.name for r in runs if runs.count(r) > 1})
        raise ConfigError(f"config key 'runs': runs listed twice: {dup}")
    scales = embed_scales(config)
    check_stac_auto(config, runs, scales)


def check_stac_auto(config: dict[str, Any], runs: list[Run], scales: list[str]) -> None:
    """A ``stac-auto`` run needs its baseline in the grid and the analysis its choice reads."""
    auto = [r for r in runs if r.attention in AUTO_ATTENTION]
    if not auto:
        return
    grid = set(runs)
    for run in auto:
        base = stac_baseline(config, run.model)
        if base not in grid:
            raise ConfigError(
                f"config key 'stac_auto': run {run.name!r} takes its STAC scales from the baseline "
                f"run {base.name!r} (same model, attention 'none', augmentation "
                f"stac_auto.baseline_augmentation={base.augmentation!r}, seed "
                f"stac_auto.baseline_seed={base.seed}), which is not in the 'runs' grid; add it")
        mine, theirs = (_run_entry(config, r).get("model_kwargs", {}) for r in (run, base))
        if mine != theirs:
            raise ConfigError(f"config key 'runs': run {run.name!r} has model_kwargs {mine} but its "
                              f"stac_auto baseline {base.name!r} has {theirs}; they must be the "
                              "same model")
    k = config["stac_auto"]["k"]
    if k not in config["knn"]["k"]:
        raise ConfigError(f"config key 'stac_auto.k': k={k} is not among knn.k "
                          f"{config['knn']['k']}; the scale choice reads ClassRepSim at that k")
    if "full" not in scales or len(scales) < 2:
        raise ConfigError(f"config key 'embed.scales': stac-auto compares integer scales with "
                          f"'full', so embed.scales needs 'full' and an integer scale, got {scales}")


def stac_baseline(config: dict[str, Any], model: str) -> Run:
    """The run whose ClassRepSim analysis sets the scales of ``model``'s ``stac-auto`` runs: the
    same model with attention ``none``, augmentation ``stac_auto.baseline_augmentation`` and seed
    ``stac_auto.baseline_seed`` (every stac-auto run of a model shares one scale choice)."""
    block = config["stac_auto"]
    return Run(model, "none", block["baseline_augmentation"], int(block["baseline_seed"]))


def cost_variants(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (model, model_kwargs, attention variant) of the grid, in config order, for
    ``rra.models.cost.cost_stage``: model, model_kwargs, attention (the grid's name), module
    and attention_kwargs (as training gets them; ``stac-auto`` scales come from a file)."""
    out, seen = [], set()
    for run in runs_of(config):
        spec = train_spec(config, run)
        key = (run.model, as_json(spec["model_kwargs"]), run.attention)
        if key not in seen:
            seen.add(key)
            out.append({"model": run.model, "model_kwargs": spec["model_kwargs"],
                        "attention": run.attention, "module": spec["attention"],
                        "attention_kwargs": spec["attention_kwargs"]})
    return out


def runs_of(config: dict[str, Any]) -> list[Run]:
    """The training grid in config order: model × attention × augmentation × seed."""
    out = []
    for run in config["runs"]:
        for attn, aug, seed in itertools.product(run["attention"], run["augmentation"], run["seeds"]):
            out.append(Run(run["model"], attn, aug, int(seed)))
    return out


def _run_entry(config: dict[str, Any], run: Run) -> dict[str, Any]:
    for entry in config["runs"]:
        if (entry["model"] == run.model and run.attention in entry["attention"]
                and run.augmentation in entry["augmentation"] and run.seed in entry["seeds"]):
            return entry
    raise ConfigError(f"run {run.name!r} is not in the config's 'runs' grid")


def train_spec(config: dict[str, Any], run: Run, attention_kwargs: dict | None = None) -> dict:
    """Everything the training stage needs for one run (what its params trigger watches).

    ``attention_kwargs`` overrides the config's block for the module (used by ``stac-auto``,
    whose scales come from an artifact rather than from the config).
    """
    entry = _run_entry(config, run)
    module = AUTO_ATTENTION.get(run.attention, run.attention)
    kwargs = dict(config["attention"].get(module, {}))
    if run.attention in AUTO_ATTENTION:
        kwargs.pop("scales", None)
    kwargs.update(attention_kwargs or {})
    spec = {
        "dataset": config["dataset"],
        "model": run.model,
        "model_kwargs": dict(entry.get("model_kwargs", {})),
        "attention": module,
        "attention_kwargs": kwargs,
        "augmentation": run.augmentation,
        "seed": run.seed,
    }
    spec.update(config["training"])
    spec.update(entry.get("training", {}))
    return spec


def embed_scales(config: dict[str, Any]) -> list[str]:
    """Configured scales as strings ('1', '2', 'full'), coarse to fine, duplicates refused."""
    raw = config["embed"]["scales"]
    ints = [s for s in raw if s != "full"]
    if len(set(map(str, raw))) != len(raw):
        raise ConfigError(f"config key 'embed.scales': repeated scale in {raw}")
    return [str(s) for s in sorted(ints)] + (["full"] if "full" in raw else [])


def probe_name(config: dict[str, Any]) -> str:
    p = config["probe"]
    return f"{p['split']}-n{p['n_per_class']}-s{p['seed']}"


def knn_params(config: dict[str, Any]) -> dict[str, Any]:
    """Settings of the kNN stage: one graph per embedding at k_max = max(knn.k).

    The Annoy block is flattened into the options of :func:`rra.knn.knn` (n_trees, search_k,
    recall_target, recall_sample, seed); ``exact_budget`` decides the ``auto`` backend.
    """
    knn = config["knn"]
    return {"k": max(knn["k"]), "exact_budget": knn["exact_budget"], **knn["annoy"]}


def metrics_params(config: dict[str, Any]) -> dict[str, Any]:
    return {"k": sorted(set(config["knn"]["k"])), "nntp_alpha": sorted(set(config["metrics"]["nntp_alpha"]))}


def as_json(obj: Any) -> str:
    """Canonical JSON (sorted keys), the form in which settings reach a stage."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
