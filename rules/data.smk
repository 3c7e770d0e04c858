# Dataset preparation and probe-set selection (rra/data).


rule prepare_data:
    output:
        os.path.join(DATA_DIR, "manifest.json"),
    params:
        options=lambda w: rc.as_json(config["dataset_options"]),
        data_dir=lambda w: config["data_dir"] or "",
        val_per_class=config["val"]["n_per_class"],  # rows per class carved from train to val
        val_seed=config["val"]["seed"],
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(DATA_DIR, "logs/prepare.log"),
    benchmark:
        os.path.join(DATA_DIR, "benchmarks/prepare.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{RRA} prepare --dataset {wildcards.dataset} --data-dir={params.data_dir:q}"
        " --options {params.options:q} --val-per-class {params.val_per_class}"
        " --val-seed {params.val_seed} --out {params.out_dir}"
        " --probe-check {PROBE_CHECK:q} --threads {threads} 2> {log}"


rule select_probe:
    input:
        os.path.join(DATA_DIR, "manifest.json"),
    output:
        os.path.join(DATA_DIR, "probe/{probe}.npy"),
    params:
        split_dir=lambda w: f"{RESULTS}/data/{w.dataset}/{rc.parse_probe(w.probe)['split']}",
        n=lambda w: rc.parse_probe(w.probe)["n_per_class"],
        seed=lambda w: rc.parse_probe(w.probe)["seed"],
    log:
        os.path.join(DATA_DIR, "logs/probe-{probe}.log"),
    benchmark:
        os.path.join(DATA_DIR, "benchmarks/probe-{probe}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{RRA} probe --split-dir {params.split_dir} --n-per-class {params.n} --seed {params.seed}"
        " --out {output} --threads {threads} 2> {log}"
