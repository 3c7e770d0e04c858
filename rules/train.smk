# Model training (rra/train): one job per run of the grid. Checkpoints are not declared outputs,
# so an interrupted job resumes from its last complete epoch when rerun.


rule train:
    input:
        data=DATA_DIR + "/manifest.json",
        stac_scales=stac_scales_of,  # stac-auto runs only: the scales chosen from their baseline
    output:
        model=RUN_DIR + "/model.pt",
        metrics=RUN_DIR + "/metrics.json",
        log=RUN_DIR + "/train_log.json",
    params:
        spec=lambda w: rc.as_json(rc.train_spec(config, run_of(w))),
        device=config["device"],
        run_dir=lambda w, output: os.path.dirname(output.model),
        kwargs_file=lambda w, input: " ".join(input.stac_scales),
    log:
        RUN_DIR + "/logs/train.log",
    benchmark:
        RUN_DIR + "/benchmarks/train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=6000,
    shell:
        "{RRA} train --spec {params.spec:q} --data {RESULTS}/data/{wildcards.dataset}"
        " --out {params.run_dir} --attention-kwargs-file={params.kwargs_file:q}"
        " --on-spec-change restart --device {params.device} --threads {threads} 2> {log}"


# Accuracy summary: every run's metrics.json in one table.
rule summary:
    input:
        lambda w: [r["metrics"] for r in summary_runs(w.dataset)],
    output:
        RESULTS + "/{dataset}/accuracy.parquet",
        RESULTS + "/{dataset}/accuracy.csv",
    params:
        runs=lambda w: rc.as_json(summary_runs(w.dataset)),
        stem=lambda w, output: output[0].removesuffix(".parquet"),
    log:
        RESULTS + "/{dataset}/logs/summary.log",
    benchmark:
        RESULTS + "/{dataset}/benchmarks/summary.tsv",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "{RRA} summary --dataset {wildcards.dataset} --runs {params.runs:q} --out {params.stem} --threads {threads} 2> {log}"
