# Model training (rra/train): one job per run of the grid. Checkpoints are not declared outputs,
# so an interrupted job resumes from its last complete epoch when rerun.


rule train:
    input:
        DATA_DIR + "/manifest.json",
    output:
        model=RUN_DIR + "/model.pt",
        metrics=RUN_DIR + "/metrics.json",
        log=RUN_DIR + "/train_log.json",
    params:
        spec=lambda w: rc.as_json(rc.train_spec(config, run_of(w))),
        device=config["device"],
        run_dir=lambda w, output: os.path.dirname(output.model),
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
        " --out {params.run_dir}"
        " --device {params.device} --threads {threads} 2> {log}"
