"""Study configuration: schema validation, semantic checks, the run grid and per-stage settings.

`config/schema.yaml` (JSON schema, defaults filled in) catches wrong keys, types and ranges;
:func:`check_config` adds what a schema cannot express: names that must exist in a registry,
a data directory that must exist, scales that must parse, finite numbers, dataset, model and
training options, every k against the size of its probe, the report's options. Every message
is one line naming the config key (:class:`ConfigError`).

The helpers here turn the validated config into the exact settings each stage receives.
Snakemake passes those settings to the stage as JSON ``params``, so editing one config value
reruns exactly the jobs whose settings changed (Snakemake's ``params`` rerun trigger).
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rra.runs import KnnSetting, Probe, Run

if TYPE_CHECKING:
    from rra.data.base import DatasetInfo

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"

#: attention names that are workflow variants rather than modules: ``stac-auto`` is the ``stac``
#: module with per-stage scales chosen by the ClassRepSim analysis of a trained baseline.
AUTO_ATTENTION = {"stac-auto": "stac"}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


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
    """Finite numbers (:func:`check_finite`), schema validation (fills defaults in place,
    :func:`schema_validate`), then :func:`check_config`. Every error is a :class:`ConfigError`
    naming the key."""
    check_finite(config)
    schema_validate(config)
    check_config(config)
    return config


def check_finite(value: Any, where: str = "") -> None:
    """Every number in the config is finite: YAML's ``.nan``/``.inf`` are floats that pass a JSON
    schema's ranges (every comparison with nan is false), so they are refused here. [ours]"""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{where}': {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]")


@functools.cache
def _schema() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def schema_validate(config: dict[str, Any]) -> None:
    """Validate ``config`` against ``config/schema.yaml`` and fill in its defaults (in place).

    The same JSON-schema check and default filling as ``snakemake.utils.validate``, but a failure
    is one :class:`ConfigError` line (:func:`schema_error_message`): the key path, what was found
    and what is allowed, never the schema or the whole config. [ours]
    """
    from jsonschema.exceptions import relevance

    errors = list(_filling_validator().iter_errors(config))
    if errors:
        raise ConfigError(schema_error_message(max(errors, key=relevance)))


@functools.cache
def _filling_validator() -> Any:
    """A JSON-schema validator of ``config/schema.yaml`` that fills in defaults as it goes."""
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": fill_defaults})(_schema())


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _allowed(schema: dict[str, Any]) -> str:
    """What a (sub)schema accepts, in words: ``integer >= 1``, ``one of ['full']``."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "enum" in schema:
        return f"one of {schema['enum']}"
    kind = schema.get("type", "value")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    bounds = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
              ("exclusiveMaximum", "<"))
    return text + "".join(f" {op} {schema[b]}" for b, op in bounds if b in schema)


def schema_error_message(error: Any) -> str:
    """One line for a jsonschema ``ValidationError``: the config key path, what is wrong, and
    the allowed keys, values or type. [ours]"""
    where = ""
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        keys = ", ".join(f"{where}.{k}" if where else str(k) for k in extra)
        scope = f"in {where!r}" if where else "at the top level"
        return (f"config key '{keys}': unknown key; allowed {scope}: {', '.join(allowed)} "
                "(config/schema.yaml documents each)")
    if error.validator in ("anyOf", "oneOf"):
        message = (f"{_short(error.instance)} is not allowed; expected "
                   + " or ".join(_allowed(s) for s in error.validator_value))
    elif len(error.message) <= 160:
        message = error.message
    else:
        message = (f"{_short(error.instance)} fails the schema's {error.validator!r}; expected "
                   f"{_allowed(error.schema)}")
    return f"config key '{where}': {message}" if where else f"config: {message}"


def check_config(config: dict[str, Any]) -> None:
    """Checks beyond the schema: registry names, data directory, splits, scales, run grid, what
    a ``stac-auto`` run needs (:func:`check_stac_auto`), the dataset options, every run's
    training settings and network (:func:`check_runs`), k against the probe sizes
    (:func:`check_probe_sizes`), NNTP's k (:func:`check_nntp_k`) and the report's options
    (:func:`check_report`) and the layer analyses (:func:`check_layer_overrides`,
    :func:`check_layers`): whatever the config alone decides fails here, before any job."""
    check_dataset(config)
    check_val(config)
    check_layer_overrides(config)
    check_probe_splits(config)
    check_run_names(config)
    check_run_lists(config)
    check_dynamics(config)  # before a check builds a run's spec (keep_epochs)
    scales = embed_scales(config)
    check_stac_auto(config, runs_of(config), scales)
    analyses(config)  # parses every probe and kNN spec
    check_large_k(config)
    check_dataset_options(config)
    check_runs(config)
    check_layers(config)
    check_placement(config)
    check_probe_sizes(config)
    check_nntp_k(config)
    check_report(config)


def check_dataset(config: dict[str, Any]) -> None:
    """The dataset is registered; one that loads from a local directory has ``data_dir`` set
    to an existing folder."""
    from rra.data import DATASETS, dataset_info

    name = config["dataset"]
    if name not in DATASETS:
        raise ConfigError(f"config key 'dataset': unknown dataset {name!r}; known: {sorted(DATASETS)}")
    if dataset_info(name).needs_data_dir:
        data_dir = config.get("data_dir")
        if not data_dir:
            raise ConfigError(f"config key 'data_dir': dataset {name!r} loads from a local "
                              "directory; set data_dir to the folder that holds it")
        if not Path(data_dir).is_dir():
            raise ConfigError(f"config key 'data_dir': directory not found: {data_dir}")


def check_probe_splits(config: dict[str, Any]) -> None:
    """Every probe (:func:`probe_entries`) reads a split the prepared dataset has."""
    splits = prepared_splits(config)
    for where, probe in probe_entries(config):
        if probe["split"] not in splits:
            hint = (f" (split {VAL_SPLIT!r} exists when val.n_per_class > 0)"
                    if probe["split"] == VAL_SPLIT else "")
            raise ConfigError(f"config key '{where}.split': dataset {config['dataset']!r} has "
                              f"splits {list(splits)}, not {probe['split']!r}{hint}")


def check_run_names(config: dict[str, Any]) -> None:
    """Every run entry's model, attention and augmentation, and every ``attention`` block,
    names a registry entry; attention other than ``none`` only for models with residual
    blocks."""
    from rra.models import MODELS
    from rra.models.attention import ATTENTION
    from rra.train import AUGMENTATIONS

    for where, run in run_entries(config):
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
        if (any(a != "none" for a in run["attention"])
                and "attention" not in inspect.signature(MODELS[run["model"]]).parameters):
            raise ConfigError(f"config key '{where}.attention': model {run['model']!r} has no "
                              f"residual blocks, so it takes attention 'none' only, got "
                              f"{run['attention']}")
    for attn in config["attention"]:
        if attn not in ATTENTION:
            raise ConfigError(f"config key 'attention.{attn}': unknown attention module; "
                              f"known: {sorted(ATTENTION)}")


def check_dataset_options(config: dict[str, Any]) -> None:
    """``dataset_options`` as the dataset's loader checks them (known keys, types, ranges),
    without reading its files."""
    from rra.data import get_dataset

    try:
        get_dataset(config["dataset"], config.get("data_dir") or None, **config["dataset_options"])
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"config key 'dataset_options': {err}") from None


def check_runs(config: dict[str, Any]) -> None:
    """Every run's training settings as the training stage checks them
    (:func:`rra.train.spec.validate_spec`: e.g. nesterov without momentum), and its network
    built once per variant (on the CPU, ~15 ms for a ResNet-20; torch's global RNG is restored),
    so unknown or bad ``model_kwargs`` and attention options fail here. A ``stac-auto`` variant
    is built with scale 1 at every stage in place of the scales its baseline will choose."""
    import torch

    from rra.data import dataset_info
    from rra.train.checkpoint import build_from_args
    from rra.train.loop import model_args_of
    from rra.train.spec import validate_spec

    info = dataset_info(config["dataset"])
    where_of = {}
    for where, entry in run_entries(config):
        for run in _expand(entry):
            where_of.setdefault(run, (where, entry))
    built: set[str] = set()
    for run in runs_of(config):
        where, entry = where_of[run]
        spec = train_spec(config, run)
        try:
            validate_spec(spec)
        except ValueError as err:
            m = re.match(r"training spec key '(\w+)'", str(err))
            key = m[1] if m else None
            key = (f"{where}.training.{key}" if key in entry.get("training", {})
                   else f"training.{key}" if key in config["training"] else where)
            raise ConfigError(f"config key '{key}' (run {run.name}): {err}") from None
        module = spec["attention"]
        try:
            with torch.random.fork_rng(devices=[]):
                if run.attention in AUTO_ATTENTION:
                    plain = build_from_args(model_args_of({**spec, "attention": "none",
                                                           "attention_kwargs": {}}, info))
                    spec = train_spec(config, run, {"scales": [1] * len(plain.stages)})
                args = model_args_of(spec, info)
                if as_json(args) not in built:
                    build_from_args(args)
                    built.add(as_json(args))
        except (ValueError, TypeError) as err:
            key = (f"attention.{module}" if str(err).startswith(("attention", module))
                   else f"{where}.model_kwargs")
            raise ConfigError(f"config key '{key}' (run {run.name}): {err}") from None


def split_class_counts(config: dict[str, Any], split: str) -> tuple[tuple[int, ...] | None, str]:
    """``(rows per class, where that comes from)`` of ``split`` of the config's dataset, before
    any job runs: the single place that sizes a split for the config checks. [ours]

    The prepared split's manifest (``{results_dir}/data/{dataset}/manifest.json``, counted in
    the files) when it was prepared with the config's dataset options (and from its data_dir),
    else what the loader knows without its files (:func:`rra.data.expected_class_counts`: the
    standard release, or what the options imply), else ``(None, ...)``: only the files know, and
    the prepare stage checks them (``rra prepare --probe-check``). A ``val`` block with
    n_per_class > 0 moves that many rows of every class from ``train`` to ``val``.
    """
    from rra.data import DATASETS, expected_class_counts

    name = config["dataset"]
    carve = dict(config.get("val") or {})
    carve_n = int(carve.get("n_per_class", 0) or 0)
    path = Path(config["results_dir"]) / "data" / name / "manifest.json"
    try:
        prepared = json.loads(path.read_text())
        entry = prepared["splits"][split]
        val = prepared.get("val") or {}
        fresh = (prepared["dataset"] == name and prepared["options"]
                 == {**DATASETS[name].defaults, **config["dataset_options"]}
                 and int(val.get("n_per_class", 0)) == carve_n
                 and (not carve_n or int(val.get("seed", 0)) == int(carve.get("seed", 0)))
                 and (not DATASETS[name].info.needs_data_dir
                      or all(str(src["path"]).startswith(str(Path(config["data_dir"])) + "/")
                             for src in entry["sources"])))
        if fresh:
            return tuple(int(c) for c in entry["class_counts"]), f"counted in {path}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    source = f"the registry's class counts of {name} {split}"
    if carve_n and split == "val":
        return (carve_n,) * DATASETS[name].info.num_classes, f"val.n_per_class = {carve_n}"
    counts = expected_class_counts(name, split, config["dataset_options"])
    if carve_n and split == "train" and counts is not None:
        return (tuple(c - carve_n for c in counts),
                f"{source} less val.n_per_class = {carve_n}")
    return counts, source


def probe_size(config: dict[str, Any], probe: dict[str, Any]) -> int | None:
    """Rows n of a probe set: ``n_per_class`` × classes, or every row of the split for ``all``
    (None when only the files know that number; :func:`split_class_counts`)."""
    from rra.data import dataset_info

    if probe["n_per_class"] != "all":
        return int(probe["n_per_class"]) * dataset_info(config["dataset"]).num_classes
    counts, _ = split_class_counts(config, probe["split"])
    return None if counts is None else sum(counts)


def probe_requirements(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per probe set of the study: its name, config key (``probe_key``), split and
    n_per_class, and the largest k any analysis asks of it with that k's config key
    (``k_key``; k = 0 for the probes of the layer analyses, which take no k): what
    :func:`check_probes` checks, at config load and again in the prepare stage (the CLI's
    ``--probe-check``)."""
    keys: dict[str, str] = {}
    for where, p in probe_entries(config):
        keys.setdefault(probe_name(p), where)
    out: dict[str, dict[str, Any]] = {}
    for a in analyses(config):
        if a.experiment == "study":
            k_key = "knn.k"
        elif a.experiment == "stac_auto":
            k_key = "stac_auto.k"
        else:
            own = experiments(config)[a.experiment].get("k")
            k_key = f"experiments.{a.experiment}.k" if own else "knn.k"
        k = max(a.ks)
        if a.probe not in out or k > out[a.probe]["k"]:
            out[a.probe] = {"probe": a.probe, "probe_key": keys.get(a.probe, "probe"),
                            **parse_probe(a.probe), "k": k, "k_key": k_key}
    for p in placements(config):  # the placement's reference: its leave-one-out graph at k
        k, own = max(p.ks), experiments(config)[p.experiment].get("k")
        if p.reference not in out or k > out[p.reference]["k"]:
            out[p.reference] = {"probe": p.reference,
                                "probe_key": f"experiments.{p.experiment}.placement.reference",
                                **parse_probe(p.reference), "k": k,
                                "k_key": f"experiments.{p.experiment}.k" if own else "knn.k"}
    for name, key in keys.items():  # the layer analyses' probes: rows per class, no k
        if name not in out:
            out[name] = {"probe": name, "probe_key": key, **parse_probe(name), "k": 0,
                         "k_key": ""}
    return list(out.values())


def check_probes(requirements: list[dict[str, Any]], counts_of: Any, num_classes: int) -> None:
    """For each :func:`probe_requirements` entry: every class of the split has n_per_class rows,
    and the largest k is below the probe size n (self is excluded: a row has at most n − 1
    neighbours). ``counts_of(split)`` gives ``(rows per class or None, source)``. [source: k < n;
    ours: checking it before any job]"""
    for r in requirements:
        counts, source = counts_of(r["split"])
        per_class = r["n_per_class"]
        if counts is not None and per_class != "all" and min(counts) < per_class:
            c = counts.index(min(counts))
            raise ConfigError(f"config key '{r['probe_key']}.n_per_class': {per_class} rows per "
                              f"class, but class {c} of split {r['split']!r} has {counts[c]} "
                              f"({source}); lower n_per_class")
        if per_class != "all":
            n, how = per_class * num_classes, f"{per_class} per class × {num_classes} classes"
        elif counts is not None:
            n, how = sum(counts), f"every row of split {r['split']!r}, {source}"
        else:
            continue
        if r["k"] >= n:
            raise ConfigError(f"config key '{r['k_key']}': k = {r['k']} must be smaller than the "
                              f"probe size n = {n} of probe {r['probe']} ('{r['probe_key']}': "
                              f"{how}); lower k or enlarge the probe")


def check_probe_sizes(config: dict[str, Any]) -> None:
    """:func:`check_probes` with the split sizes known at config load
    (:func:`split_class_counts`)."""
    from rra.data import dataset_info

    check_probes(probe_requirements(config), lambda split: split_class_counts(config, split),
                 dataset_info(config["dataset"]).num_classes)


def check_nntp_k(config: dict[str, Any]) -> None:
    """NNTP's k (``metrics.nntp_k``, ``experiments.E.nntp_k``) must be among the k of the
    analyses they apply to; otherwise they would be dropped without a word. [ours]"""
    top_k, top = config["knn"]["k"], config["metrics"]["nntp_k"]
    blocks = [("metrics.nntp_k", top, top_k, "knn.k", config["metrics"]["tables"])]
    for name, exp in experiments(config).items():
        if exp.get("analyse", True):
            blocks.append((f"experiments.{name}.nntp_k" if "nntp_k" in exp else "metrics.nntp_k",
                           exp.get("nntp_k", top), exp.get("k") or top_k,
                           f"experiments.{name}.k" if exp.get("k") else "knn.k",
                           exp.get("tables", config["metrics"]["tables"])))
    for key, nntp_k, ks, k_key, tables in blocks:
        missing = sorted(set(nntp_k) - set(ks))
        if "nntp" in tables and missing:
            raise ConfigError(f"config key '{key}': NNTP at k = {missing}, which {k_key} = "
                              f"{sorted(set(ks))} does not compute; NNTP takes some of the "
                              f"analysis's k: add them to {k_key} or drop them from nntp_k")


def check_report(config: dict[str, Any]) -> None:
    """The report's options against what the study computes, as ``rra.report.build`` reads them:
    ``report.scale`` an embedded scale; ``report.k`` (unless null) a k of every (probe, kNN
    setting, model) whose NNTS figures it draws; ``report.alpha`` an NNTP alpha of every
    (probe, kNN setting) with NNTS and NNTP tables. [ours]"""
    opts = config["report"]
    scales = embed_scales(config)
    if str(opts["scale"]) not in scales:
        raise ConfigError(f"config key 'report.scale': {opts['scale']!r} is not a computed scale; "
                          f"embed.scales = {scales}: use one of them")
    ks: dict[tuple, set[int]] = {}
    alphas: dict[tuple, set[int]] = {}
    for run, probe, knn in dict.fromkeys((a.run, a.probe, a.knn) for a in analyses(config)):
        settings = analysis_settings(config, run, probe, knn)
        if "nnts" in settings["tables"]:
            ks.setdefault((probe, knn, run.model), set()).update(settings["k"])
            if "nntp" in settings["tables"]:
                alphas.setdefault((probe, knn), set()).update(settings["nntp_alpha"])
    for name, value, groups in (("k", opts["k"], ks), ("alpha", opts["alpha"], alphas)):
        if value is None:
            continue
        for group, have in groups.items():
            if value not in have:
                common = sorted(set.intersection(*groups.values()))
                raise ConfigError(
                    f"config key 'report.{name}': {name} = {value} is not computed for "
                    f"{' / '.join(map(str, group))} ({name} there: {sorted(have)}); use one that "
                    f"every analysis computes: {common}" + (" or null" if name == "k" else ""))


#: the held-out split carved from train (rra.data.prepare, config key ``val``)
VAL_SPLIT = "val"


def prepared_splits(config: dict[str, Any]) -> tuple[str, ...]:
    """The splits the data stage writes: the dataset's own, plus ``val`` when
    ``val.n_per_class`` > 0 (carved from train, which then excludes those rows)."""
    from rra.data import dataset_info

    own = dataset_info(config["dataset"]).splits
    return own + ((VAL_SPLIT,) if config["val"]["n_per_class"] else ())


def check_val(config: dict[str, Any]) -> None:
    """A val split can be carved only from a dataset without its own ``val`` (imagenet64's is
    its evaluation split)."""
    from rra.data import dataset_info

    info = dataset_info(config["dataset"])
    if config["val"]["n_per_class"] and VAL_SPLIT in info.splits:
        raise ConfigError(f"config key 'val.n_per_class': dataset {info.name!r} has its own "
                          f"{VAL_SPLIT!r} split (its evaluation split); carving another from "
                          "train is not supported: set val.n_per_class: 0")


def stac_auto_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ``stac`` keyword arguments of every stac-auto run except its scales (which the
    choice sets): the config's ``attention.stac`` block less ``scales``."""
    kwargs = dict(config["attention"].get(AUTO_ATTENTION["stac-auto"], {}))
    kwargs.pop("scales", None)
    return kwargs


def stac_probe(config: dict[str, Any]) -> str:
    """The probe name of the baseline analysis that the stac-auto scale choice reads."""
    return probe_name(config["stac_auto"]["probe"])


def check_stac_auto(config: dict[str, Any], runs: list[Run], scales: list[str]) -> None:
    """A ``stac-auto`` run needs its baseline in the grid, the analysis its choice reads, and
    that analysis's probe on the held-out ``val`` split (never test: no design choice may be
    fitted to the split that the final numbers come from). That val exists (val.n_per_class > 0)
    is checked with every probe's split (``stac_auto.probe`` is among :func:`probe_entries`)."""
    auto = [r for r in runs if r.attention in AUTO_ATTENTION]
    if not auto:
        return
    split = config["stac_auto"]["probe"]["split"]
    if split != VAL_SPLIT:
        raise ConfigError(f"config key 'stac_auto.probe.split': the STAC scale choice is a design "
                          f"decision and must read the held-out split {VAL_SPLIT!r}, not "
                          f"{split!r} (test is for the final numbers; train is what the baseline "
                          "fitted)")
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


def run_entries(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every runs-list entry with its config key: ``runs[i]`` and ``experiments.E.runs[i]``."""
    out = [(f"runs[{i}]", e) for i, e in enumerate(config["runs"])]
    for name, exp in experiments(config).items():
        out += [(f"experiments.{name}.runs[{i}]", e) for i, e in enumerate(exp.get("runs", []))]
    return out


def _expand(entry: dict[str, Any]) -> list[Run]:
    return [Run(entry["model"], a, g, int(s))
            for a, g, s in itertools.product(entry["attention"], entry["augmentation"], entry["seeds"])]


def check_run_lists(config: dict[str, Any]) -> None:
    """No run twice in one list; a run listed in several lists has the same settings in each."""
    lists: dict[str, list[Run]] = {}
    settings: dict[Run, tuple[str, str]] = {}
    for where, entry in run_entries(config):
        key = where.rsplit("[", 1)[0]
        same = {"model_kwargs": entry.get("model_kwargs", {}), "training": entry.get("training", {})}
        for run in _expand(entry):
            if run in lists.setdefault(key, []):
                raise ConfigError(f"config key '{key}': runs listed twice: ['{run.name}']")
            lists[key].append(run)
            if run in settings and settings[run][1] != as_json(same):
                raise ConfigError(f"config key '{where}': run {run.name!r} is also listed at "
                                  f"'{settings[run][0]}' with other model_kwargs/training; a run "
                                  "name must mean one trained model")
            settings.setdefault(run, (where, as_json(same)))


def runs_of(config: dict[str, Any]) -> list[Run]:
    """Every run of the study in config order (top-level grid, then the experiments' runs):
    model × attention × augmentation × seed, each once."""
    out: list[Run] = []
    for _, entry in run_entries(config):
        out += [r for r in _expand(entry) if r not in out]
    return out


def _run_entry(config: dict[str, Any], run: Run) -> dict[str, Any]:
    for _, entry in run_entries(config):
        if run in _expand(entry):
            return entry
    raise ConfigError(f"run {run.name!r} is not in the config's 'runs' grid")


def train_spec(config: dict[str, Any], run: Run, attention_kwargs: dict | None = None) -> dict:
    """Everything the training stage needs for one run (what its params trigger watches).

    ``attention_kwargs`` overrides the config's block for the module (used by ``stac-auto``,
    whose scales come from an artifact rather than from the config).
    """
    entry = _run_entry(config, run)
    module = AUTO_ATTENTION.get(run.attention, run.attention)
    kwargs = (stac_auto_kwargs(config) if run.attention in AUTO_ATTENTION
              else dict(config["attention"].get(module, {})))
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
    if run in dynamics_runs(config):  # E10: the weights of these epochs are kept
        spec["keep_epochs"] = sorted(set(config["dynamics"]["epochs"]))
    return spec


def embed_scales(config: dict[str, Any]) -> list[str]:
    """Configured scales as strings ('1', '2', 'full'), coarse to fine, duplicates refused."""
    raw = config["embed"]["scales"]
    ints = [s for s in raw if s != "full"]
    if len(set(map(str, raw))) != len(raw):
        raise ConfigError(f"config key 'embed.scales': repeated scale in {raw}")
    return [str(s) for s in sorted(ints)] + (["full"] if "full" in raw else [])


def embed_input(config: dict[str, Any], model: str) -> bool:
    """Whether the embed stage adds the input hook ``input`` (position 0) for runs of ``model``.

    ``embed.input``: ``true``/``false`` force it for every model; ``auto`` (default) follows
    the model's ``analyse_input`` class attribute (:func:`rra.models.analyses_input`: LeNet-5
    yes, ResNets no). The resolved value is an embed rule param, so changing it reruns the
    embed jobs whose setting changed.
    """
    setting = config["embed"].get("input", "auto")
    if setting == "auto":
        from rra.models import analyses_input

        return analyses_input(model)
    if not isinstance(setting, bool):
        raise ConfigError(f"config key 'embed.input': expected auto, true or false, "
                          f"got {setting!r}")
    return setting


def probe_name(probe: dict[str, Any]) -> str:
    """``{split}-n{n_per_class}-s{seed}``, or ``{split}-all-s{seed}`` for every row of the split
    (:class:`rra.runs.Probe`)."""
    return Probe(probe["split"], probe["n_per_class"], probe["seed"]).name


def parse_probe(name: str) -> dict[str, Any]:
    """Inverse of :func:`probe_name`."""
    try:
        probe = Probe.parse(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return {"split": probe.split, "n_per_class": probe.n_per_class, "seed": probe.seed}


def knn_spec(distance: str, backend: dict[str, Any] | str) -> str:
    """Path name of a kNN setting: ``{distance}-{backend}``; an Annoy entry with its own
    ``n_trees``/``search_k`` is ``annoy-t{n_trees}-s{search_k}`` (else the knn.annoy block)
    (:class:`rra.runs.KnnSetting`)."""
    return KnnSetting.of(distance, backend).name


def parse_knn_spec(config: dict[str, Any], spec: str) -> tuple[str, str, dict[str, Any]]:
    """``(distance, backend, options)`` of a kNN path name (options for :func:`rra.knn.knn`)."""
    try:
        knn = KnnSetting.parse(spec)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    options = dict(config["knn"]["annoy"])
    options["on_recall_miss"] = config["knn"]["on_recall_miss"]  # Annoy graphs below recall_target
    if config["knn"].get("cost"):  # overrides of auto's cost model, only when given
        options["cost"] = dict(config["knn"]["cost"])
    if knn.n_trees not in (None, "d"):
        options["n_trees"] = int(knn.n_trees)
    if knn.search_k not in (None, "d"):
        options["search_k"] = knn.search_k if knn.search_k == "auto" else int(knn.search_k)
    return knn.distance, knn.backend, options


@dataclass(frozen=True)
class Analysis:
    """One RRA of one run: a probe set, a kNN setting, the k values and NNTP alphas."""

    run: Run
    probe: str
    knn: str
    ks: tuple[int, ...]
    alphas: tuple[int, ...]
    experiment: str = "study"
    tables: tuple[str, ...] = ()
    nntp_ks: tuple[int, ...] = ()


def experiments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The enabled experiment blocks, in config order."""
    return {n: e for n, e in config.get("experiments", {}).items() if e.get("enabled", True)}


def probe_entries(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every probe block with its config key; ``stac_auto.probe`` when the grid has stac-auto."""
    out = [("probe", config["probe"])]
    for name, exp in experiments(config).items():
        out += [(f"experiments.{name}.probes[{i}]", p) for i, p in enumerate(exp.get("probes", []))]
    if any(r.attention in AUTO_ATTENTION for r in runs_of(config)):
        out.append(("stac_auto.probe", config["stac_auto"]["probe"]))
    for block in layer_blocks(config):
        out += [(block.key(name), block.settings[name]) for name in ("probe", "train")
                if name in block.settings]
    for name, exp in experiments(config).items():
        block = exp.get("placement") or {}
        out += [(f"experiments.{name}.placement.{part}", block[part])
                for part in ("reference", "heldout") if part in block]
    return out


@dataclass(frozen=True)
class AnalysisBlock:
    """The analysis settings of the top-level grid (``study``) or of one experiment: its run
    entries, probe names and kNN specs, and the k, alphas, tables and NNTP k every analysis of
    its runs gets (:func:`analysis_blocks`)."""

    experiment: str
    runs: tuple[dict[str, Any], ...]  # the config's run entries (expanded by :func:`_expand`)
    probes: tuple[str, ...]
    knns: tuple[str, ...]          # kNN specs (:func:`knn_spec`)
    ks: tuple[int, ...]
    alphas: tuple[int, ...]
    tables: tuple[str, ...]
    nntp_ks: tuple[int, ...]       # empty: NNTP at every k

    def analyses(self, config: dict[str, Any]) -> list[Analysis]:
        """One :class:`Analysis` per run, probe and kNN setting of the block, in that order."""
        nntp_ks = tuple(sorted(set(self.nntp_ks) & set(self.ks))) if self.nntp_ks else self.ks
        out = []
        for run in (run for entry in self.runs for run in _expand(entry)):
            for probe in self.probes:
                for spec in self.knns:
                    parse_knn_spec(config, spec)
                    out.append(Analysis(run, probe, spec, self.ks, self.alphas, self.experiment,
                                        self.tables, nntp_ks))
        return out


def analysis_blocks(config: dict[str, Any]) -> list[AnalysisBlock]:
    """The top-level grid's block (the top-level probe, knn and metrics blocks), then one per
    enabled experiment that analyses (``analyse: false`` = training only) with its own
    ``probes``/``knn``/``k``/``nntp_alpha``/``tables``/``nntp_k`` where given, the top-level
    ones otherwise."""
    metrics = config["metrics"]
    top = AnalysisBlock(
        "study", tuple(config["runs"]), (probe_name(config["probe"]),),
        tuple(knn_spec(d, config["knn"]["backend"]) for d in config["knn"]["distance"]),
        tuple(sorted(set(config["knn"]["k"]))), tuple(sorted(set(metrics["nntp_alpha"]))),
        tuple(metrics["tables"]), tuple(metrics["nntp_k"]))
    blocks = [top]
    for name, exp in experiments(config).items():
        if not exp.get("analyse", True):
            continue
        blocks.append(AnalysisBlock(
            name, tuple(exp.get("runs") or config["runs"]),
            tuple(probe_name(p) for p in exp.get("probes", [])) or top.probes,
            tuple(knn_spec(e["distance"], e) for e in exp.get("knn", [])) or top.knns,
            tuple(sorted(set(exp.get("k", []) or top.ks))),
            tuple(sorted(set(exp.get("nntp_alpha", []) or top.alphas))),
            tuple(exp.get("tables", top.tables)), tuple(exp.get("nntp_k", top.nntp_ks))))
    return blocks


def analyses(config: dict[str, Any], experiment: str | None = None) -> list[Analysis]:
    """Every analysis of the study (or of one experiment): those of each
    :func:`analysis_blocks` entry, then, for each ``stac-auto`` run, the analysis its scale
    choice reads (baseline, top-level probe, first kNN setting, ``stac_auto.k``)."""
    blocks = analysis_blocks(config)
    out = [a for block in blocks for a in block.analyses(config)]
    top = blocks[0]
    for run in runs_of(config):
        if run.attention in AUTO_ATTENTION:
            base = stac_baseline(config, run.model)
            k = int(config["stac_auto"]["k"])
            out.append(Analysis(base, stac_probe(config), top.knns[0], (k,), top.alphas,
                                "stac_auto", ("classrepsim",), ()))
    return [a for a in out if experiment is None or a.experiment == experiment]


def analysis_folders(config: dict[str, Any]) -> list[tuple[Run, str, str]]:
    """Every (run, probe, kNN setting) of the study's analyses once, in config order: one metric
    folder each (analyses of several experiments that agree share it)."""
    return list(dict.fromkeys((a.run, a.probe, a.knn) for a in analyses(config)))


def e2_folders(config: dict[str, Any]) -> list[tuple[Run, str, str]]:
    """The metric folders the E2 guideline compares (:mod:`rra.metrics.hyperparams`): those of
    every run analysed under two or more settings."""
    folders = analysis_folders(config)
    per_run = collections.Counter(run for run, _, _ in folders)
    return [f for f in folders if per_run[f[0]] >= 2]


def reference_analysis(named: list[tuple[str, str, str]],
                       prefer: dict[str, str] | None = None) -> tuple[str, str, str]:
    """The (probe, distance, backend) that occurs most often in ``named`` (one entry per
    metric folder); ties: the one equal to ``prefer``, then the first in name order."""
    if not named:
        raise ValueError("reference_analysis: no analyses given")
    counts = collections.Counter(named)
    preferred = tuple((prefer or {}).get(p) for p in ("probe", "distance", "backend"))
    return min(counts, key=lambda a: (-counts[a], a != preferred, a))


def e2_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of the E2 guideline stage: the reference analysis ``{probe, distance,
    backend}`` (:func:`reference_analysis` of every metric folder, ties to the config's
    top-level probe and first kNN setting), ``report.k`` and ``report.scale``."""
    top = KnnSetting.parse(knn_spec(config["knn"]["distance"][0], config["knn"]["backend"]))
    prefer = {"probe": probe_name(config["probe"]), "distance": top.distance,
              "backend": top.setting}
    named = []
    for _, probe, spec in analysis_folders(config):
        knn = KnnSetting.parse(spec)
        named.append((probe, knn.distance, knn.setting))
    probe, distance, backend = reference_analysis(named, prefer)
    report = config.get("report") or {}
    return {"reference": {"probe": probe, "distance": distance, "backend": backend},
            "k": report.get("k"), "scale": str(report.get("scale", "full"))}


def analysis_settings(config: dict[str, Any], run: Run, probe: str, knn: str) -> dict[str, Any]:
    """The union of k and alpha over every analysis that shares this (run, probe, kNN) folder:
    one graph at k_max and one set of tables serve them all."""
    matching = [a for a in analyses(config) if (a.run, a.probe, a.knn) == (run, probe, knn)]
    if not matching:
        raise ConfigError(f"no analysis of run {run.name!r} with probe {probe!r} and kNN {knn!r} "
                          "is configured")
    from rra.metrics.tables import COMPUTED_TABLES  # the registry's tables, in its order

    ks = sorted({k for a in matching for k in a.ks})
    return {"k": ks, "nntp_alpha": sorted({x for a in matching for x in a.alphas}),
            "tables": [t for t in COMPUTED_TABLES if any(t in a.tables for a in matching)],
            "nntp_k": sorted({k for a in matching for k in a.nntp_ks})}


def split_k(ks: list[int], store_k_max: int) -> tuple[int, list[int]]:
    """``(k of the stored graphs, NNTS k values above store_k_max)`` of one analysis folder:
    graphs are stored at the largest k ≤ ``store_k_max`` (at ``min(10, store_k_max)`` when every
    k is larger, for the knn table and quick looks); NNTS at the larger k comes from the sweep
    (``rra.knn.sweep``). [ours]"""
    small = [k for k in ks if k <= store_k_max]
    return max(small, default=min(10, store_k_max)), [k for k in ks if k > store_k_max]


def check_large_k(config: dict[str, Any]) -> None:
    """k above ``knn.store_k_max`` serves NNTS only (no graphs are stored at it) and needs the
    exact search, which the sweep is; both checked per analysis folder before any job runs."""
    limit = int(config["knn"]["store_k_max"])
    for a in dict.fromkeys((a.run, a.probe, a.knn) for a in analyses(config)):
        settings = analysis_settings(config, *a)
        _, large = split_k(settings["k"], limit)
        if not large:
            continue
        where = f"analysis {a[0].name} / {a[1]} / {a[2]}"
        others = [t for t in settings["tables"] if t not in ("nnts", "nntp")]
        if others:
            raise ConfigError(
                f"config key 'knn.store_k_max': {where} asks for k = {large} above store_k_max = "
                f"{limit} and for the tables {others}, which read stored graphs; only NNTS is "
                "computed above store_k_max. Restrict that experiment's `tables` to [nnts, nntp] "
                "with `nntp_k` ≤ store_k_max, or raise knn.store_k_max")
        if [k for k in settings["nntp_k"] if k > limit]:
            raise ConfigError(f"config key 'metrics.nntp_k': {where}: NNTP at k > "
                              f"knn.store_k_max = {limit} needs stored graphs; lower nntp_k")
        if parse_knn_spec(config, a[2])[1] == "annoy":
            raise ConfigError(f"config key 'knn.backend': {where}: NNTS at k = {large} above "
                              f"knn.store_k_max = {limit} is computed exactly (one sweep over the "
                              "embeddings); use backend exact or auto for this analysis")


def knn_params(config: dict[str, Any], run: Run, probe: str, knn: str) -> dict[str, Any]:
    """Settings of the kNN stage for one folder: the stored graphs' k (:func:`split_k`), the NNTS
    k values of the sweep, the analysed k ≤ the stored k (``recall_k``: where Annoy's recall is
    checked), backend options."""
    _, _, options = parse_knn_spec(config, knn)
    ks = analysis_settings(config, run, probe, knn)["k"]
    k, large = split_k(ks, int(config["knn"]["store_k_max"]))
    return {"k": k, "nnts_k": large, "recall_k": [v for v in ks if v <= k] or [k], **options}


def metrics_params(config: dict[str, Any], run: Run, probe: str, knn: str) -> dict[str, Any]:
    """The analysis's k, α, tables and NNTP k, and ``metrics.bootstrap`` (the uncertainty
    columns' B, permutations, seed, level; docs/methods.md §4)."""
    return {**analysis_settings(config, run, probe, knn),
            "bootstrap": dict(config["metrics"].get("bootstrap") or {})}


# ---------------------------------------------------------------------------------------------
# Layer analyses (rra/layers, experiments E7–E9)

#: keys of a layer analysis's block that choose what runs, not how: not passed to the stage
LAYER_SELECTORS = ("probe", "models")


@dataclass(frozen=True)
class LayerBlock:
    """One analysis of one experiment's ``layers`` block, with its resolved settings."""

    experiment: str
    analysis: str
    settings: dict[str, Any]       # layers.probe/batch_size, layers.{analysis}, the overrides
    sources: dict[str, str]        # setting → the config key it comes from

    def key(self, name: str) -> str:
        """The config key a setting comes from (for error messages)."""
        return self.sources.get(name, f"layers.{self.analysis}.{name}")


@dataclass(frozen=True)
class LayerAnalysis:
    """One layer analysis of one run: ``results/{dataset}/{run}/layers/{probe}/{analysis}``."""

    run: Run
    analysis: str
    probe: str
    params: str                    # canonical JSON of the stage's settings
    experiment: str
    train: str | None = None       # probe name of the training subset (patterns, margins)


def layer_blocks(config: dict[str, Any]) -> list[LayerBlock]:
    """Every (experiment, analysis) of the enabled experiments' ``layers`` blocks, in config
    order: ``layers.probe`` and ``layers.batch_size``, then the top-level ``layers.{analysis}``
    block, then the experiment's overrides (each later one wins)."""
    top = config["layers"]
    out = []
    for name, exp in experiments(config).items():
        for analysis, override in (exp.get("layers") or {}).items():
            settings: dict[str, Any] = {}
            sources: dict[str, str] = {}
            for prefix, block in (("layers", {k: top[k] for k in ("probe", "batch_size")}),
                                  (f"layers.{analysis}", top[analysis]),
                                  (f"experiments.{name}.layers.{analysis}", override or {})):
                settings.update(copy.deepcopy(block))
                sources.update({k: f"{prefix}.{k}" for k in block})
            out.append(LayerBlock(name, analysis, settings, sources))
    return out


def check_layer_overrides(config: dict[str, Any]) -> None:
    """Each experiment's ``layers.{analysis}`` overrides, merged onto the top-level block, are
    valid settings of that block (the schema's keys, types and ranges; one line naming the
    experiment's key); a probe block they set gets its defaults filled in, as the top-level
    ones do. Runs before anything reads them."""
    from jsonschema.exceptions import relevance

    for name, exp in experiments(config).items():
        for analysis, override in (exp.get("layers") or {}).items():
            merged = {**copy.deepcopy(config["layers"][analysis]), **copy.deepcopy(override)}
            errors = list(_filling_validator().iter_errors({"layers": {analysis: merged}}))
            if errors:
                text = schema_error_message(max(errors, key=relevance))
                raise ConfigError(text.replace(f"'layers.{analysis}",
                                               f"'experiments.{name}.layers.{analysis}"))
            override.update({k: merged[k] for k in override})  # the defaults filled in


def layer_analyses(config: dict[str, Any], experiment: str | None = None) -> list[LayerAnalysis]:
    """Every layer analysis of the study (or of one experiment): for each experiment's
    ``layers`` analysis, each of its runs (restricted to ``models`` when set), on the
    analysis's probe. One (run, probe, analysis) folder asked for by several experiments is
    listed once for the study; asked with other settings, it is an error (one folder, one
    setting)."""
    seen: dict[tuple[Run, str, str], tuple[LayerAnalysis, str]] = {}
    out = []
    for block in layer_blocks(config):
        exp, s = experiments(config)[block.experiment], block.settings
        probe = probe_name(s["probe"])
        train = probe_name(s["train"]) if "train" in s else None
        params = {k: v for k, v in s.items() if k not in LAYER_SELECTORS}
        if train is not None:
            params["train"] = train
        for run in runs_of({"runs": exp.get("runs") or config["runs"]}):
            if s.get("models") and run.model not in s["models"]:
                continue
            la = LayerAnalysis(run, block.analysis, probe, as_json(params), block.experiment,
                               train)
            key = (run, probe, block.analysis)
            prior = seen.setdefault(key, (la, block.key("probe")))
            if prior[0].params != la.params:
                raise ConfigError(
                    f"config key 'experiments.{block.experiment}.layers.{block.analysis}': run "
                    f"{run.name!r} on probe {probe} is also analysed ({block.analysis}) by "
                    f"experiment {prior[0].experiment} with other settings; one folder holds "
                    "one setting: make them equal or use another probe")
            if experiment == block.experiment or (experiment is None and prior[0] is la):
                out.append(la)
    return out


def layer_params(config: dict[str, Any], run: Run, probe: str, analysis: str) -> dict[str, Any]:
    """The settings the layers stage gets for one (run, probe, analysis) folder (what its
    params trigger watches): the analysis's keys, ``batch_size``, for patterns and
    margins ``train`` (the training subset's probe name), and ``metrics.bootstrap`` (the
    uncertainty columns' B, permutations, seed, level; docs/methods.md §4)."""
    for a in layer_analyses(config):
        if (a.run, a.probe, a.analysis) == (run, probe, analysis):
            return {**json.loads(a.params),
                    "bootstrap": dict(config["metrics"].get("bootstrap") or {})}
    raise ConfigError(f"no layer analysis {analysis!r} of run {run.name!r} on probe {probe!r} "
                      "is configured")


def check_layers(config: dict[str, Any]) -> None:
    """What the schema cannot say about the layer analyses, per experiment and analysis
    (messages name the key): ``models`` among the experiment's runs; translation's
    ``max_shift`` below the image side and no repeated scale; the trees' keyword arguments
    (``sklearn``'s own check) and a ReLU behind the hooks of every analysed model;
    ``pca_k`` within the rank of the training subset (n − 1) and the input dimension D;
    fragmentation's same-class triplets (3 probe rows per class) and mixed ones (3 classes);
    the saliency grid within the probe. Probe splits and rows per class are checked with every
    probe (:func:`probe_entries`, :func:`check_probe_sizes`)."""
    from rra.data import dataset_info

    info = dataset_info(config["dataset"])
    for block in layer_blocks(config):
        exp = experiments(config)[block.experiment]
        exp_runs = runs_of({"runs": exp.get("runs") or config["runs"]})
        _check_layer_models(block, exp_runs)
        check = _LAYER_CHECKS.get(block.analysis)
        if check is not None:
            check(config, block, info, exp_runs)
    layer_analyses(config)  # one setting per folder


def _check_layer_models(block: LayerBlock, exp_runs: list[Run]) -> None:
    """The block's ``models`` are among its experiment's runs."""
    models = block.settings.get("models")
    if models:
        missing = sorted(set(models) - {r.model for r in exp_runs})
        if missing:
            raise ConfigError(f"config key '{block.key('models')}': model(s) {missing} "
                              f"are not among the runs of experiment {block.experiment} "
                              f"({sorted({r.model for r in exp_runs})})")


def _check_translation(config: dict[str, Any], block: LayerBlock, info: DatasetInfo,
                       exp_runs: list[Run]) -> None:
    s = block.settings
    if s["max_shift"] >= info.image_size:
        raise ConfigError(f"config key '{block.key('max_shift')}': {s['max_shift']} "
                          f"must be smaller than the image side {info.image_size} of "
                          f"{info.name} (larger shifts leave only fill)")
    if len({str(x) for x in s["scales"]}) != len(s["scales"]):
        raise ConfigError(f"config key '{block.key('scales')}': repeated scale in "
                          f"{s['scales']}")


def _check_patterns(config: dict[str, Any], block: LayerBlock, info: DatasetInfo,
                    exp_runs: list[Run]) -> None:
    _check_tree_kwargs(block.settings["tree"], block.key("tree"))
    _check_relus(config, exp_runs, block.settings.get("models"), block.key("models"))


def _check_margins(config: dict[str, Any], block: LayerBlock, info: DatasetInfo,
                   exp_runs: list[Run]) -> None:
    s = block.settings
    d = info.channels * info.image_size ** 2
    n_train = probe_size(config, s["train"])
    for k in s["pca_k"]:
        if k == "full":
            continue
        bound, why = d, f"the input dimension D = {d}"
        if n_train is not None and n_train - 1 < bound:
            bound, why = n_train - 1, (f"the rank n − 1 = {n_train - 1} of the training "
                                       f"subset ('{block.key('train')}')")
        if k > bound:
            raise ConfigError(f"config key '{block.key('pca_k')}': k = {k} exceeds "
                              f"{why}; use k ≤ {bound} or 'full'")
    probe_n = probe_size(config, s["probe"])
    if probe_n is not None and probe_n < 2:
        raise ConfigError(f"config key '{block.key('probe')}': the hidden margins "
                          "need at least 2 probe rows")


def _check_fragmentation(config: dict[str, Any], block: LayerBlock, info: DatasetInfo,
                         exp_runs: list[Run]) -> None:
    s = block.settings
    per_class = s["probe"]["n_per_class"]
    if "same_class" in s["kinds"] and per_class != "all" and per_class < 3:
        raise ConfigError(f"config key '{block.key('probe')}.n_per_class': "
                          f"same_class triplets need 3 probe rows of a class, the "
                          f"probe has {per_class} per class; enlarge it or set "
                          f"kinds: [mixed]")
    if "mixed" in s["kinds"] and info.num_classes < 3:
        raise ConfigError(f"config key '{block.key('kinds')}': mixed triplets need 3 "
                          f"classes, {info.name} has {info.num_classes}")


def _check_saliency(config: dict[str, Any], block: LayerBlock, info: DatasetInfo,
                    exp_runs: list[Run]) -> None:
    s = block.settings
    probe_n = probe_size(config, s["probe"])
    if probe_n is not None and s["images"] > probe_n:
        raise ConfigError(f"config key '{block.key('images')}': {s['images']} images "
                          f"in the grid, the probe has {probe_n} rows")


#: the checks of :func:`check_layers` per analysis: ``(config, block, dataset info, the
#: experiment's runs)``
_LAYER_CHECKS: dict[str, Callable[[dict[str, Any], LayerBlock, DatasetInfo, list[Run]], None]] = {
    "translation": _check_translation, "patterns": _check_patterns, "margins": _check_margins,
    "fragmentation": _check_fragmentation, "saliency": _check_saliency,
}


def _check_tree_kwargs(kwargs: dict[str, Any], key: str) -> None:
    from sklearn.tree import DecisionTreeClassifier

    if "random_state" in kwargs:
        raise ConfigError(f"config key '{key}': random_state is the analysis's seed; set "
                          "seed instead")
    try:
        DecisionTreeClassifier(**kwargs)._validate_params()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key '{key}': {' '.join(str(err).split())}") from None


def _check_relus(config: dict[str, Any], runs: list[Run], models: list[str] | None,
                 key: str) -> None:
    """Every analysed model has a ReLU behind some hook (built once per model variant)."""
    import torch

    from rra.data import dataset_info
    from rra.layers.patterns import relu_hooks
    from rra.train.checkpoint import build_from_args
    from rra.train.loop import model_args_of

    info = dataset_info(config["dataset"])
    seen = set()
    for run in runs:
        if models and run.model not in models or run.attention in AUTO_ATTENTION:
            continue
        spec = train_spec(config, run)
        args = model_args_of(spec, info)
        if as_json(args) in seen:
            continue
        seen.add(as_json(args))
        with torch.random.fork_rng(devices=[]):
            model = build_from_args(args)
        if not relu_hooks(model):
            raise ConfigError(f"config key '{key}': model {run.model!r} (run {run.name}) has "
                              "no nn.ReLU behind its hooks: binary activation patterns need "
                              "ReLU outputs")


# ---------------------------------------------------------------------------------------------
# Held-out placement (experiment E11)


@dataclass(frozen=True)
class Placement:
    """One held-out placement of one run:
    ``results/{dataset}/{run}/placement/{reference}/{heldout}/{distance}/``."""

    run: Run
    reference: str                 # probe name of the reference (training) probe
    heldout: str                   # probe name of the held-out probe
    distance: str
    ks: tuple[int, ...]
    experiment: str


def placements(config: dict[str, Any], experiment: str | None = None) -> list[Placement]:
    """Every placement of the study (or of one experiment), in config order: for each enabled
    experiment with a ``placement`` block, each of its runs and distances (default
    ``knn.distance``), the reference probe, the held-out probe (default: the top-level
    ``probe``) and the experiment's k (default ``knn.k``)."""
    out = []
    for name, exp in experiments(config).items():
        block = exp.get("placement")
        if block is None or (experiment is not None and name != experiment):
            continue
        reference = probe_name(block["reference"])
        heldout = probe_name(block.get("heldout") or config["probe"])
        ks = tuple(sorted(set(exp.get("k") or config["knn"]["k"])))
        for run in runs_of({"runs": exp.get("runs") or config["runs"]}):
            for distance in block.get("distance") or config["knn"]["distance"]:
                out.append(Placement(run, reference, heldout, distance, ks, name))
    return out


def placement_folders(config: dict[str, Any]) -> list[tuple[Run, str, str, str]]:
    """Every (run, reference, held-out probe, distance) of the study's placements once."""
    return list(dict.fromkeys((p.run, p.reference, p.heldout, p.distance)
                              for p in placements(config)))


def placement_params(config: dict[str, Any], run: Run, reference: str, heldout: str,
                     distance: str) -> dict[str, Any]:
    """The settings of the placement stage for one folder (what its params trigger watches):
    ``k``, the union over the experiments that share the folder, and ``metrics.bootstrap``
    (the uncertainty columns' B, permutations, seed, level; docs/methods.md §4)."""
    ks = {k for p in placements(config) if (p.run, p.reference, p.heldout, p.distance)
          == (run, reference, heldout, distance) for k in p.ks}
    if not ks:
        raise ConfigError(f"no placement of run {run.name!r} with reference {reference!r}, "
                          f"held-out probe {heldout!r} and distance {distance!r} is configured")
    return {"k": sorted(ks), "bootstrap": dict(config["metrics"].get("bootstrap") or {})}


def check_placement(config: dict[str, Any]) -> None:
    """Each ``placement`` block: the held-out probe's split differs from the reference's (two
    probes of one split may share rows, and a held-out row equal to a reference row would be
    its own neighbour). The splits and rows per class are checked with every probe
    (:func:`probe_entries`), k < the reference size with the probe sizes
    (:func:`probe_requirements`)."""
    for name, exp in experiments(config).items():
        block = exp.get("placement")
        if block is None:
            continue
        heldout = block.get("heldout") or config["probe"]
        key = (f"experiments.{name}.placement.heldout" if block.get("heldout") else "probe")
        if heldout["split"] == block["reference"]["split"]:
            raise ConfigError(
                f"config key '{key}.split': the held-out probe of experiment {name}'s placement "
                f"reads split {heldout['split']!r}, as its reference "
                f"(experiments.{name}.placement.reference.split) does; held-out images must "
                "come from another split (e.g. reference train, held-out test)")


# ---------------------------------------------------------------------------------------------
# Representation dynamics (E10, rra.metrics.dynamics)


def dynamics_runs(config: dict[str, Any]) -> list[Run]:
    """The runs of the enabled experiments with ``dynamics: true``, in config order, each once:
    their training keeps the weights of ``dynamics.epochs`` (``keep_epochs``)."""
    out: list[Run] = []
    for exp in experiments(config).values():
        if exp.get("dynamics", False):
            out += [r for r in runs_of({"runs": exp.get("runs") or config["runs"]}) if r not in out]
    return out


def dynamics_folder(config: dict[str, Any]) -> tuple[str, str]:
    """``(probe, kNN setting)`` of the dynamics: the top-level probe and first kNN setting."""
    return (probe_name(config["probe"]),
            knn_spec(config["knn"]["distance"][0], config["knn"]["backend"]))


def dynamics_epochs(config: dict[str, Any], run: Run) -> list[int]:
    """The compared epochs of a dynamics run: ``dynamics.epochs`` and its final epoch (the
    trained ``model.pt``), sorted."""
    return sorted(set(config["dynamics"]["epochs"]) | {_training_epochs(config, run)})


def _training_epochs(config: dict[str, Any], run: Run) -> int:
    return int({**config["training"], **_run_entry(config, run).get("training", {})}["epochs"])


def dynamics_params(config: dict[str, Any], run: Run) -> dict[str, Any]:
    """The dynamics table's settings (``rra dynamics --settings``): k, tau, scales, epochs and
    ``metrics.bootstrap`` (the uncertainty columns; docs/methods.md §4)."""
    d = config["dynamics"]
    return {"k": sorted(set(d["k"])), "tau": float(d["tau"]),
            "scales": [s for s in embed_scales(config) if s in {str(x) for x in d["scales"]}],
            "epochs": dynamics_epochs(config, run),
            "bootstrap": dict(config["metrics"].get("bootstrap") or {})}


def dynamics_knn_params(config: dict[str, Any], run: Run) -> dict[str, Any]:
    """The kNN settings of a kept epoch's graphs: the dynamics folder's backend options, the
    graphs at the largest dynamics k, Annoy's recall checked at every dynamics k."""
    _, _, options = parse_knn_spec(config, dynamics_folder(config)[1])
    ks = sorted(set(config["dynamics"]["k"]))
    return {"k": ks[-1], "nnts_k": [], "recall_k": ks, **options}


def check_dynamics(config: dict[str, Any]) -> None:
    """Per dynamics experiment: it analyses (its runs' final graphs are the analysis's); every
    kept epoch within each run's training epochs; the scales embedded; each k stored by the
    run's analysis on the dynamics probe and kNN setting. Messages name the key."""
    for name, exp in experiments(config).items():
        if exp.get("dynamics", False) and not exp.get("analyse", True):
            raise ConfigError(f"config key 'experiments.{name}.dynamics': needs analyse: true "
                              "(the final epoch's graphs are the run's analysis)")
    d = config["dynamics"]
    missing = sorted({str(s) for s in d["scales"]} - set(embed_scales(config)))
    if dynamics_runs(config) and missing:
        raise ConfigError(f"config key 'dynamics.scales': {missing} not among embed.scales = "
                          f"{embed_scales(config)}")
    probe, knn = dynamics_folder(config)
    for run in dynamics_runs(config):
        total = _training_epochs(config, run)
        late = sorted(e for e in d["epochs"] if e > total)
        if late:
            raise ConfigError(f"config key 'dynamics.epochs': epochs {late} are beyond the "
                              f"{total} training epochs of run {run.name} (training.epochs); "
                              "keep epochs 0 (the initialisation) to the final one")
        stored = split_k(analysis_settings(config, run, probe, knn)["k"],
                         int(config["knn"]["store_k_max"]))[0]
        if max(d["k"]) > stored:
            raise ConfigError(f"config key 'dynamics.k': k = {max(d['k'])} exceeds the stored "
                              f"graphs' k = {stored} of run {run.name} on probe {probe} ({knn}); "
                              "lower it or add it to knn.k")


def as_json(obj: Any) -> str:
    """Canonical JSON (sorted keys), the form in which settings reach a stage."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
