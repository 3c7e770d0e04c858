# Helpers shared by every rule: config validation, the run grid, paths and stage settings.
# All logic lives in the rra package (rra/config.py); these are thin adapters for wildcards.

import json
import sys

from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, workflow.basedir)  # the rra package of this checkout, installed or not
from rra import config as rc
from rra import runs as rn

# Schema (defaults filled in), names, sizes, report: a bad value stops the workflow before any
# job runs, with one line naming the key (no traceback, no schema dump).
try:
    rc.validate(config)
except rc.ConfigError as err:
    sys.exit(f"rra: config error: {err}")
# The probe sizes that only the files know are checked by the prepare job once it has read them
# (`rra prepare --probe-check`). A global in its shell command, not a param, on purpose: the
# check changes no output, so editing k must not rerun the data preparation (a param would: the
# params trigger). The one `snakemake --lint` finding for it is allowed by .ci/lint.
PROBE_CHECK = rc.as_json(rc.probe_requirements(config))

# How rules call the package: the interpreter running Snakemake (the project's .venv), or the
# rule's conda env under `--sdm conda`; the source tree on PYTHONPATH either way. A global in
# every shell command, not a param, on purpose: it names this machine's checkout and
# interpreter, not a setting, so moving the checkout, recreating the venv or switching to
# `--sdm conda` must not rerun the study (a param would: the params trigger). Its lint findings
# ("Shell command directly uses variable RRA") are allowed by .ci/lint.
_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
RRA = f"PYTHONPATH={workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}} {'python' if _CONDA else sys.executable} -m rra"
ENV = os.path.join(workflow.basedir, "envs", "rra.yaml")
RESULTS = config["results_dir"]
REPORTS = config["reports_dir"]
DATASET = config["dataset"]
PROBE = rc.probe_name(config["probe"])
SCALES = rc.embed_scales(config)
RUNS = rc.runs_of(config)
KNN_SPECS = [rc.knn_spec(d, config["knn"]["backend"]) for d in config["knn"]["distance"]]
EXPERIMENTS = rc.experiments(config)


# The folder names' grammar (rra/runs.py: run, probe and kNN setting names) and the layer
# analyses' names.
wildcard_constraints:
    **rn.WILDCARDS,
    analysis=r"translation|patterns|margins|saliency|fragmentation",


# Path patterns of the rules (f-strings: wildcards doubled). Each ends in a wildcard, never in a
# slash, so the rules' os.path.join(DIR, path) is exactly the string DIR, a slash and path.
DATASET_DIR = f"{RESULTS}/{{dataset}}"
RUN_DIR = f"{DATASET_DIR}/{rn.RUN_FORMAT}"
DATA_DIR = f"{RESULTS}/data/{{dataset}}"


def run_of(wildcards):
    return rn.Run(wildcards.model, wildcards.attention, wildcards.augmentation, int(wildcards.seed))


def run_dir(run, dataset=DATASET):
    return f"{RESULTS}/{dataset}/{run.name}"


def metric_manifest(run, probe, knn):
    """The manifest of one metric folder (rules/metrics.smk)."""
    return f"{run_dir(run)}/metrics/{probe}/{knn}/manifest.json"


def knn_manifest(run, probe, knn):
    """The manifest of one run's kNN graphs on a probe (rules/knn.smk)."""
    return f"{run_dir(run)}/knn/{probe}/{knn}/manifest.json"


def stac_scales_file(model, dataset=DATASET):
    """The scale choice that configures `model`'s stac-auto runs (rules/attention.smk)."""
    return f"{RESULTS}/{dataset}/stac_scales/{rc.stac_baseline(config, model).name}.json"


def stac_scales_of(wildcards):
    """Extra input of a stac-auto run's training: its scale choice; nothing for other runs."""
    run = run_of(wildcards)
    return (
        [stac_scales_file(run.model, wildcards.dataset)]
        if run.attention in rc.AUTO_ATTENTION
        else []
    )


def cost_variants(dataset=DATASET):
    """The grid's (model, attention) variants for `rra cost`, stac-auto with its scales file."""
    return [
        (
            dict(v, attention_kwargs_file=stac_scales_file(v["model"], dataset))
            if v["attention"] in rc.AUTO_ATTENTION
            else v
        )
        for v in rc.cost_variants(config)
    ]


def summary_runs(dataset=DATASET):
    """Every run of the grid with its metrics.json, for `rra summary`."""
    return [
        {
            "model": r.model,
            "attention": r.attention,
            "augmentation": r.augmentation,
            "seed": r.seed,
            "metrics": f"{run_dir(r, dataset)}/metrics.json",
        }
        for r in RUNS
    ]


def run_record(w):
    """The run and probe of a metrics or layers job, as JSON (their `--run`)."""
    return rc.as_json(
        {
            "dataset": w.dataset,
            "model": w.model,
            "attention": w.attention,
            "augmentation": w.augmentation,
            "seed": int(w.seed),
            "probe": w.probe,
        }
    )


def placement_run(w):
    """The run of a placement job as JSON (its `--run`; rules/placement.smk); `probe` is the
    held-out probe."""
    return rc.as_json(
        {
            "dataset": w.dataset,
            "model": w.model,
            "attention": w.attention,
            "augmentation": w.augmentation,
            "seed": int(w.seed),
            "probe": w.heldout,
        }
    )


def analysis_params(w, kind):
    """The JSON settings of the knn/metrics job of one (run, probe, kNN) folder."""
    fn = rc.knn_params if kind == "knn" else rc.metrics_params
    return rc.as_json(fn(config, run_of(w), w.probe, f"{w.distance}-{w.backend}"))


def targets_of(analyses, runs, stac_choice=False):
    """Artifacts of some analyses and runs: metric manifests, training results and (stac_choice)
    the STAC scale choice of each model's baseline."""
    targets = [f"{run_dir(r)}/metrics.json" for r in runs]
    targets += [metric_manifest(a.run, a.probe, a.knn) for a in analyses]
    if stac_choice:
        targets += sorted({stac_scales_file(r.model) for r in runs})
    return list(dict.fromkeys(targets))


def layer_targets(layer_analyses):
    """The manifests of some layer analyses (rules/layers.smk)."""
    return [f"{run_dir(a.run)}/layers/{a.probe}/{a.analysis}/manifest.json" for a in layer_analyses]


def placement_targets(placements):
    """The manifests of some held-out placements (rules/placement.smk, E11), each folder once."""
    return list(
        dict.fromkeys(
            f"{run_dir(p.run)}/placement/{p.reference}/{p.heldout}/{p.distance}/manifest.json"
            for p in placements
        )
    )


def dynamics_runs_of(name=None):
    """The dynamics runs (E10) of the study, or of one experiment (none unless it has
    `dynamics: true`)."""
    if name is not None and not EXPERIMENTS[name].get("dynamics", False):
        return []
    runs = rc.dynamics_runs(config)
    if name is None:
        return runs
    exp = EXPERIMENTS[name]
    return [r for r in rc.runs_of({"runs": exp.get("runs") or config["runs"]}) if r in runs]


def dynamics_targets(name=None):
    """The dynamics tables' manifests (rules/dynamics.smk) of the study or of one experiment."""
    probe, knn = rc.dynamics_folder(config)
    return [f"{run_dir(r)}/dynamics/{probe}/{knn}/manifest.json" for r in dynamics_runs_of(name)]


def dynamics_epoch_dirs(w):
    """{epoch: kNN folder} of one dynamics table: the kept epochs' graphs (rule
    dynamics_graphs) and, for the final epoch, the run's analysis on the same probe."""
    base = f"{RESULTS}/{w.dataset}/{run_of(w).name}"
    epochs = rc.dynamics_epochs(config, run_of(w))
    dirs = {
        e: f"{base}/dynamics/{w.probe}/{w.distance}-{w.backend}/epoch-{e:03d}/knn"
        for e in epochs[:-1]
    }
    dirs[epochs[-1]] = f"{base}/knn/{w.probe}/{w.distance}-{w.backend}"
    return dirs


def dynamics_epoch_inputs(w):
    """The kept epochs' kNN manifests of one dynamics table."""
    epochs = rc.dynamics_epochs(config, run_of(w))
    return [f"{dynamics_epoch_dirs(w)[e]}/manifest.json" for e in epochs[:-1]]


def dynamics_knn_dirs(w):
    """`rra dynamics --knn-dirs`: JSON {epoch: kNN folder}."""
    return rc.as_json({str(e): d for e, d in dynamics_epoch_dirs(w).items()})


def study_targets():
    """Every final artifact of the configured study (all experiments), for `rule all`."""
    targets = [f"{RESULTS}/{DATASET}/cost.parquet", f"{RESULTS}/{DATASET}/accuracy.parquet"]
    targets += targets_of(rc.analyses(config), RUNS)
    for name in EXPERIMENTS:
        targets += experiment_targets(name)
    targets += dynamics_targets()
    return list(dict.fromkeys(targets + e2_targets()))


def stac_choices():
    """The STAC scale choices of the study: of each model with a stac-auto run or in an
    experiment with `stac_choice: true`."""
    models = {r.model for r in RUNS if r.attention in rc.AUTO_ATTENTION}
    for exp in EXPERIMENTS.values():
        if exp.get("stac_choice", False):
            models |= {r.model for r in rc.runs_of({"runs": exp.get("runs") or config["runs"]})}
    return sorted(stac_scales_file(m) for m in models)


E2_GUIDELINE = f"{RESULTS}/{DATASET}/e2_guideline/manifest.json"


def e2_targets():
    """The E2 guideline (rules/report.smk) when some run is analysed under two or more
    settings; nothing otherwise."""
    return [E2_GUIDELINE] if rc.e2_folders(config) else []


def e2_inputs():
    """The E2 guideline stage's input list: the metric folders of the runs it compares."""
    return {"metrics": [metric_manifest(*f) for f in rc.e2_folders(config)]}


def report_inputs():
    """What the report draws, by kind (rra.report.inputs.KINDS): exactly the artifacts of the
    configured study, so a run that is no longer in the config is in no figure."""
    folders = rc.analysis_folders(config)
    return {
        "results_dir": RESULTS,
        "metrics": [metric_manifest(*f) for f in folders],
        "knn": [knn_manifest(*f) for f in folders],
        "layers": layer_targets(rc.layer_analyses(config)),
        "dynamics": dynamics_targets(),
        "placement": placement_targets(rc.placements(config)),
        "training": [f"{run_dir(r)}/train_log.json" for r in RUNS],
        "accuracy": [f"{RESULTS}/{DATASET}/accuracy.parquet"],
        "cost": [f"{RESULTS}/{DATASET}/cost.parquet"],
        "stac_scales": stac_choices(),
        "e2_guideline": e2_targets(),
    }


# Input lists of the stages that read many artifacts: a JSON file each stage reads (a large
# study's list would not fit a command line), written by rule input_list (rules/report.smk).
INPUT_LISTS = {"report": report_inputs, "e2_guideline": e2_inputs}


def input_list(name):
    return f"{RESULTS}/inputs/{name}.json"


def input_files(name):
    """The files of an input list, for the `input:` of the stage that reads it."""
    lists = INPUT_LISTS[name]()
    return [p for kind, paths in lists.items() if kind != "results_dir" for p in paths]


def write_input_list(path, files, log):
    """Rule input_list's job: the params' JSON into the list file, a count into the log."""
    from rra.io import write_json

    lists = json.loads(files)
    write_json(path, lists)
    counts = {k: len(v) for k, v in lists.items() if isinstance(v, list)}
    with open(log, "w") as f:
        print(f"{path}: {sum(counts.values())} files {counts}", file=f)


def experiment_targets(name):
    """The artifacts of one experiment (its Snakemake target: `snakemake {name}`)."""
    exp = EXPERIMENTS[name]
    runs = rc.runs_of({"runs": exp.get("runs") or config["runs"]})
    return (
        targets_of(rc.analyses(config, name), runs, exp.get("stac_choice", False))
        + layer_targets(rc.layer_analyses(config, name))
        + placement_targets(rc.placements(config, name))
    )


def layer_train_probe(w):
    """The training subset's probe file of patterns and margins (trees, PCA); none otherwise
    (rules/layers.smk)."""
    train = rc.layer_params(config, run_of(w), w.probe, w.analysis).get("train")
    return [f"{RESULTS}/data/{w.dataset}/probe/{train}.npy"] if train else []
