# The common kNN model (rra/knn): one graph per (hook, scale) at k_max, exact or Annoy.


rule knn:
    input:
        os.path.join(RUN_DIR, "embed/{probe}/manifest.json"),
    output:
        os.path.join(RUN_DIR, "knn/{probe}/{distance}-{backend}/manifest.json"),
    params:
        knn=lambda w: analysis_params(w, "knn"),
        backend=lambda w: rc.parse_knn_spec(config, f"{w.distance}-{w.backend}")[1],
        embed_dir=lambda w, input: os.path.dirname(input[0]),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/knn-{probe}-{distance}-{backend}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/knn-{probe}-{distance}-{backend}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{RRA} knn --embed-dir {params.embed_dir} --out {params.out_dir}"
        " --distance {wildcards.distance} --backend {params.backend} --params {params.knn:q}"
        " --threads {threads} 2> {log}"
