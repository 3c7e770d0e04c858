# rra: Representational Response Analysis study.
# A table of contents: configuration and its validation, one .smk per stage, and `rule all`.
# Run: `snakemake --cores 2` (or `make study`); `snakemake -n` shows the plan.

import os

from snakemake.utils import min_version

min_version("9.0")


# The default study; `--configfile X.yaml` overlays (merges into) it.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "docs/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/embed.smk"
include: "rules/knn.smk"
include: "rules/metrics.smk"
include: "rules/report.smk"
include: "rules/attention.smk"
include: "rules/layers.smk"
include: "rules/dynamics.smk"
include: "rules/placement.smk"


rule all:
    default_target: True
    input:
        study_targets(),
        f"{REPORTS}/index.html",


# One target per experiment of the config (`snakemake --cores 2 E3`): its runs and analyses.
for _name in EXPERIMENTS:

    rule:
        name:
            _name
        input:
            experiment_targets(_name) + dynamics_targets(_name),
