# What the study's figures are drawn from: the input lists, the E2 guideline (rra/metrics/
# hyperparams.py), and the Altair figures of the whole study (rra/report) with
# reports/index.html.

from rra.metrics.hyperparams import TABLES as E2_TABLES


# The input list of a stage that reads many artifacts (INPUT_LISTS in rules/common.smk: the
# report, the E2 guideline) as a JSON file the stage reads. Written in the Snakemake process (a
# file from the params, no package stage to call); the params trigger rewrites a list when the
# config changes what it names, and that reruns the stage that reads it.
localrules:
    input_list,


rule input_list:
    output:
        f"{RESULTS}/inputs/{{name}}.json",
    params:
        files=lambda w: rc.as_json(INPUT_LISTS[w.name]()),
    log:
        f"{RESULTS}/logs/inputs-{{name}}.log",
    wildcard_constraints:
        name="|".join(INPUT_LISTS),
    run:
        write_input_list(output[0], params.files, log[0])


# E2: the summary measures of every run analysed under two or more settings (probe, distance,
# kNN backend), against one setting at a time, and the guideline table; the report draws them.
# `columns` (unused by the command) makes a change of the tables' columns rerun the rule, as a
# params change does.
rule e2_guideline:
    input:
        inputs=input_list("e2_guideline"),
        files=lambda w: input_files("e2_guideline"),
        knn=lambda w: [knn_manifest(*f) for f in rc.e2_folders(config)],
    output:
        E2_GUIDELINE,
    params:
        settings=lambda w: rc.as_json(rc.e2_settings(config)),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        columns=";".join(",".join(c) for c in E2_TABLES.values()),
    log:
        f"{RESULTS}/{DATASET}/logs/e2_guideline.log",
    benchmark:
        f"{RESULTS}/{DATASET}/benchmarks/e2_guideline.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{RRA} e2-guideline --inputs {input.inputs} --settings {params.settings:q}"
        " --out {params.out_dir} --threads {threads} 2> {log}"


# The figures draw exactly the files of the report's input list (report_inputs in
# rules/common.smk: the configured study's artifacts), never a search of the results folder.
rule report:
    input:
        inputs=input_list("report"),
        files=lambda w: input_files("report"),
    output:
        # update(): Snakemake keeps the previous report while the job runs and restores it if
        # the job fails (rra.report.build swaps the new one in only when it is complete).
        # `snakemake --report report.html` collects every PNG of the figures folder, each with
        # its family's caption (docs/report/figures.rst picks it by the figure's name)
        figures=report(
            update(directory(f"{REPORTS}/figures")),
            patterns=["{figure}.png"],
            caption="../docs/report/figures.rst",
            category="Figures",
        ),
        index=update(f"{REPORTS}/index.html"),
        records=update(f"{REPORTS}/index.json"),
        metrics=update(f"{REPORTS}/metrics.json"),
    params:
        config=lambda w: rc.as_json(config),
        out_dir=lambda w, output: os.path.dirname(output.index),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{RRA} report --inputs {input.inputs} --out {params.out_dir}"
        " --config {params.config:q} --threads {threads} 2> {log}"
