# Metric tables (rra/metrics): NNTS, NNTP, class response, ClassRepSim and peer measures,
# all from the stored kNN graphs of one run.


rule metrics:
    input:
        embed=os.path.join(RUN_DIR, "embed/{probe}/manifest.json"),
        knn=os.path.join(RUN_DIR, "knn/{probe}/{distance}-{backend}/manifest.json"),
    output:
        os.path.join(RUN_DIR, "metrics/{probe}/{distance}-{backend}/manifest.json"),
    params:
        metrics=lambda w: analysis_params(w, "metrics"),
        run=run_record,
        embed_dir=lambda w, input: os.path.dirname(input.embed),
        knn_dir=lambda w, input: os.path.dirname(input.knn),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/metrics-{probe}-{distance}-{backend}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/metrics-{probe}-{distance}-{backend}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
    shell:
        "{RRA} metrics --embed-dir {params.embed_dir} --knn-dir {params.knn_dir}"
        " --out {params.out_dir} --params {params.metrics:q} --run {params.run:q} --threads {threads} 2> {log}"
