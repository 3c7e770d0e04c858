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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"

#: the metric tables an analysis may ask for (rra.metrics.tables; the knn table is always written)
TABLES = ("nnts", "nntp", "class_response", "classrepsim", "peers", "cka")

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
    for where, probe in probe_entries(config):
        if probe["split"] not in info.splits:
            raise ConfigError(f"config key '{where}.split': dataset {name!r} has splits "
                              f"{list(info.splits)}, not {probe['split']!r}")
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
    check_run_lists(config)
    scales = embed_scales(config)
    check_stac_auto(config, runs_of(config), scales)
    analyses(config)  # parses every probe and kNN spec; k < n is checked by the stages
    check_large_k(config)


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
    """``{split}-n{n_per_class}-s{seed}``, or ``{split}-all-s{seed}`` for every row of the split."""
    n = probe["n_per_class"]
    return f"{probe['split']}-{'all' if n == 'all' else f'n{n}'}-s{probe['seed']}"


def parse_probe(name: str) -> dict[str, Any]:
    """Inverse of :func:`probe_name`."""
    m = re.fullmatch(r"([a-z]+)-(?:n(\d+)|(all))-s(\d+)", name)
    if not m:
        raise ConfigError(f"probe name {name!r} is not of the form split-nN-sS or split-all-sS")
    return {"split": m[1], "n_per_class": "all" if m[3] else int(m[2]), "seed": int(m[4])}


def knn_spec(distance: str, backend: dict[str, Any] | str) -> str:
    """Path name of a kNN setting: ``{distance}-{backend}``; an Annoy entry with its own
    ``n_trees``/``search_k`` is ``annoy-t{n_trees}-s{search_k}`` (else the knn.annoy block)."""
    if isinstance(backend, str):
        return f"{distance}-{backend}"
    name = backend["backend"]
    if name == "annoy" and ("n_trees" in backend or "search_k" in backend):
        name = f"annoy-t{backend.get('n_trees', 'd')}-s{backend.get('search_k', 'd')}"
    return f"{distance}-{name}"


def parse_knn_spec(config: dict[str, Any], spec: str) -> tuple[str, str, dict[str, Any]]:
    """``(distance, backend, options)`` of a kNN path name (options for :func:`rra.knn.knn`)."""
    m = re.fullmatch(r"(euclidean|cosine)-(auto|exact|annoy)(?:-t(\d+|d)-s(auto|-?\d+|d))?", spec)
    if not m:
        raise ConfigError(f"kNN setting {spec!r} is not of the form distance-backend "
                          "(backend: auto, exact, annoy or annoy-tN-sK)")
    options = dict(config["knn"]["annoy"])
    if config["knn"].get("cost"):  # overrides of auto's cost model, only when given
        options["cost"] = dict(config["knn"]["cost"])
    if m[3] and m[3] != "d":
        options["n_trees"] = int(m[3])
    if m[4] and m[4] != "d":
        options["search_k"] = m[4] if m[4] == "auto" else int(m[4])
    return m[1], m[2], options


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
    out = [("probe", config["probe"])]
    for name, exp in experiments(config).items():
        out += [(f"experiments.{name}.probes[{i}]", p) for i, p in enumerate(exp.get("probes", []))]
    return out


def analyses(config: dict[str, Any], experiment: str | None = None) -> list[Analysis]:
    """Every analysis of the study (or of one experiment).

    The top-level grid is analysed with the top-level probe, knn and metrics blocks; each
    experiment with its own ``probes``/``knn``/``k``/``nntp_alpha`` where given, the top-level
    ones otherwise (``analyse: false`` = training only). A ``stac-auto`` run adds the analysis
    its scale choice reads (baseline, top-level probe, first kNN setting, ``stac_auto.k``).
    """
    top_probe = probe_name(config["probe"])
    top_knn = [knn_spec(d, config["knn"]["backend"]) for d in config["knn"]["distance"]]
    top_k, top_alpha = tuple(sorted(set(config["knn"]["k"]))), tuple(sorted(set(config["metrics"]["nntp_alpha"])))
    top_tables, top_nntp_k = tuple(config["metrics"]["tables"]), tuple(config["metrics"]["nntp_k"])
    blocks = [("study", config["runs"], [top_probe], top_knn, top_k, top_alpha, top_tables, top_nntp_k)]
    for name, exp in experiments(config).items():
        if not exp.get("analyse", True):
            continue
        probes = [probe_name(p) for p in exp.get("probes", [])] or [top_probe]
        knn = [knn_spec(e["distance"], e) for e in exp.get("knn", [])] or top_knn
        ks = tuple(sorted(set(exp.get("k", []) or top_k)))
        alphas = tuple(sorted(set(exp.get("nntp_alpha", []) or top_alpha)))
        blocks.append((name, exp.get("runs") or config["runs"], probes, knn, ks, alphas,
                       tuple(exp.get("tables", top_tables)), tuple(exp.get("nntp_k", top_nntp_k))))
    out = []
    for name, entries, probes, knns, ks, alphas, tables, nntp_ks in blocks:
        for entry in entries:
            for run in _expand(entry):
                for probe in probes:
                    for spec in knns:
                        parse_knn_spec(config, spec)
                        out.append(Analysis(run, probe, spec, ks, alphas, name, tables,
                                            tuple(sorted(set(nntp_ks) & set(ks))) if nntp_ks else ks))
    for run in runs_of(config):
        if run.attention in AUTO_ATTENTION:
            base = stac_baseline(config, run.model)
            k = int(config["stac_auto"]["k"])
            out.append(Analysis(base, top_probe, top_knn[0], (k,), top_alpha, "stac_auto",
                                ("classrepsim",), ()))
    return [a for a in out if experiment is None or a.experiment == experiment]


def analysis_settings(config: dict[str, Any], run: Run, probe: str, knn: str) -> dict[str, Any]:
    """The union of k and alpha over every analysis that shares this (run, probe, kNN) folder:
    one graph at k_max and one set of tables serve them all."""
    matching = [a for a in analyses(config) if (a.run, a.probe, a.knn) == (run, probe, knn)]
    if not matching:
        raise ConfigError(f"no analysis of run {run.name!r} with probe {probe!r} and kNN {knn!r} "
                          "is configured")
    ks = sorted({k for a in matching for k in a.ks})
    return {"k": ks, "nntp_alpha": sorted({x for a in matching for x in a.alphas}),
            "tables": [t for t in TABLES if any(t in a.tables for a in matching)],
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
    k values of the sweep, backend options."""
    _, _, options = parse_knn_spec(config, knn)
    k, large = split_k(analysis_settings(config, run, probe, knn)["k"],
                       int(config["knn"]["store_k_max"]))
    return {"k": k, "nnts_k": large, **options}


def metrics_params(config: dict[str, Any], run: Run, probe: str, knn: str) -> dict[str, Any]:
    return analysis_settings(config, run, probe, knn)


def as_json(obj: Any) -> str:
    """Canonical JSON (sorted keys), the form in which settings reach a stage."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
