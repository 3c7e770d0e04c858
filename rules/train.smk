# Model training (rra/train): one job per run of the grid. Checkpoints are not declared outputs,
# so an interrupted job resumes from its last complete epoch when rerun.

from rra.train.summary import TABLE_COLUMNS as SUMMARY_COLUMNS


rule train:
    input:
        data=os.path.join(DATA_DIR, "manifest.json"),
        stac_scales=stac_scales_of,  # stac-auto runs only: the scales chosen from their baseline
    output:
        model=os.path.join(RUN_DIR, "model.pt"),
        metrics=os.path.join(RUN_DIR, "metrics.json"),
        log=os.path.join(RUN_DIR, "train_log.json"),
    params:
        spec=lambda w: rc.as_json(rc.train_spec(config, run_of(w))),
        device=config["device"],
        data_dir=lambda w, input: os.path.dirname(input.data),
        run_dir=lambda w, output: os.path.dirname(output.model),
        kwargs_file=lambda w, input: " ".join(input.stac_scales),
    log:
        os.path.join(RUN_DIR, "logs/train.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/train.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=6000,
    shell:
        "{RRA} train --spec {params.spec:q} --data {params.data_dir}"
        " --out {params.run_dir} --attention-kwargs-file={params.kwargs_file:q}"
        " --on-spec-change restart --device {params.device} --threads {threads} 2> {log}"


# Accuracy summary: every run's metrics.json in one table. `columns` (unused by the command)
# makes a change of the table's columns rerun the rule, as a params change does.
rule summary:
    input:
        lambda w: [r["metrics"] for r in summary_runs(w.dataset)],
    output:
        os.path.join(DATASET_DIR, "accuracy.parquet"),
        os.path.join(DATASET_DIR, "accuracy.csv"),
    params:
        runs=lambda w: rc.as_json(summary_runs(w.dataset)),
        stem=lambda w, output: output[0].removesuffix(".parquet"),
        columns=",".join(SUMMARY_COLUMNS),
    log:
        os.path.join(DATASET_DIR, "logs/summary.log"),
    benchmark:
        os.path.join(DATASET_DIR, "benchmarks/summary.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "{RRA} summary --dataset {wildcards.dataset} --runs {params.runs:q} --out {params.stem} --threads {threads} 2> {log}"
