# Metric tables (rra/metrics): NNTS, NNTP, class response, ClassRepSim and peer measures,
# all from the stored kNN graphs of one run.


rule metrics:
    input:
        embed=RUN_DIR + "/embed/{probe}/manifest.json",
        knn=RUN_DIR + "/knn/{probe}/{distance}-{backend}/manifest.json",
    output:
        RUN_DIR + "/metrics/{probe}/{distance}-{backend}/manifest.json",
    params:
        metrics=lambda w: rc.as_json(rc.metrics_params(config)),
        run=lambda w: rc.as_json({"dataset": w.dataset, "model": w.model, "attention": w.attention,
                                  "augmentation": w.augmentation, "seed": int(w.seed), "probe": w.probe}),
    log:
        RUN_DIR + "/logs/metrics-{probe}-{distance}-{backend}.log",
    threads: 1
    resources:
        mem_mb=8000,
    shell:
        "{PY} -m rra metrics --embed-dir $(dirname {input.embed}) --knn-dir $(dirname {input.knn})"
        " --out $(dirname {output}) --params {params.metrics:q} --run {params.run:q} 2> {log}"
