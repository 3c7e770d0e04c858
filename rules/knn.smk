# The common kNN model (rra/knn): one graph per (hook, scale) at k_max, exact or Annoy.


rule knn:
    input:
        RUN_DIR + "/embed/{probe}/manifest.json",
    output:
        RUN_DIR + "/knn/{probe}/{distance}-{backend}/manifest.json",
    params:
        knn=lambda w: rc.as_json(rc.knn_params(config)),
    log:
        RUN_DIR + "/logs/knn-{probe}-{distance}-{backend}.log",
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{PY} -m rra knn --embed-dir $(dirname {input}) --out $(dirname {output})"
        " --distance {wildcards.distance} --backend {wildcards.backend} --params {params.knn:q}"
        " --threads {threads} 2> {log}"
