# Representation dynamics (E10, rra/metrics/dynamics.py): the runs of an experiment with
# `dynamics: true` keep their weights after the epochs of `dynamics.epochs` (training writes
# epochs/epoch-NNN.pt beside model.pt; not declared outputs: the training job's spec param
# holds the kept epochs, so changing them retrains the run and reruns what follows). Each kept
# epoch is embedded on the probe and gets its kNN graphs; its embeddings are removed once the
# graphs exist. The final epoch's graphs are the run's analysis on the same probe and setting.


rule dynamics_graphs:
    input:
        model=os.path.join(RUN_DIR, "model.pt"),
        probe=os.path.join(DATA_DIR, "probe/{probe}.npy"),
    output:
        os.path.join(
            RUN_DIR, "dynamics/{probe}/{distance}-{backend}/epoch-{epoch}/knn/manifest.json"
        ),
    params:
        weights=lambda w, input: os.path.join(
            os.path.dirname(input.model), "epochs", f"epoch-{w.epoch}.pt"
        ),
        scales=lambda w: rc.as_json(rc.dynamics_params(config, run_of(w))["scales"]),
        include_input=lambda w: rc.as_json(rc.embed_input(config, w.model)),
        batch_size=config["embed"]["batch_size"],
        device=config["device"],
        knn=lambda w: rc.as_json(rc.dynamics_knn_params(config, run_of(w))),
        backend=lambda w: rc.parse_knn_spec(config, f"{w.distance}-{w.backend}")[1],
        split_dir=lambda w: f"{RESULTS}/data/{w.dataset}/{rc.parse_probe(w.probe)['split']}",
        run_dir=lambda w, input: os.path.dirname(input.model),
        embed_dir=lambda w, output: os.path.join(
            os.path.dirname(os.path.dirname(output[0])), "embed"
        ),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/dynamics-{probe}-{distance}-{backend}-epoch-{epoch}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/dynamics-{probe}-{distance}-{backend}-epoch-{epoch}.tsv")
    wildcard_constraints:
        epoch=r"\d\d\d+",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{RRA} embed --run-dir {params.run_dir} --weights {params.weights}"
        " --split-dir {params.split_dir} --probe {input.probe} --out {params.embed_dir}"
        " --scales {params.scales:q} --batch-size {params.batch_size} --device {params.device}"
        " --input {params.include_input} --threads {threads} 2> {log}"
        " && {RRA} knn --embed-dir {params.embed_dir} --out {params.out_dir}"
        " --distance {wildcards.distance} --backend {params.backend} --params {params.knn:q}"
        " --threads {threads} 2>> {log} && rm -r {params.embed_dir}"


# The table: NNTS of every hook between each kept epoch and the final model, between
# consecutive kept epochs, and each hook's settling epoch (dynamics.tau), with the uncertainty
# columns (metrics.bootstrap; the probe's labels, from the final model's embed folder, are the
# bootstrap's strata).
rule dynamics:
    input:
        final=os.path.join(RUN_DIR, "knn/{probe}/{distance}-{backend}/manifest.json"),
        embed=os.path.join(RUN_DIR, "embed/{probe}/manifest.json"),
        epochs=dynamics_epoch_inputs,
    output:
        os.path.join(RUN_DIR, "dynamics/{probe}/{distance}-{backend}/manifest.json"),
    params:
        knn_dirs=dynamics_knn_dirs,
        settings=lambda w: rc.as_json(rc.dynamics_params(config, run_of(w))),
        run=run_record,
        labels=lambda w, input: os.path.join(os.path.dirname(input.embed), "labels.npy"),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/dynamics-{probe}-{distance}-{backend}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/dynamics-{probe}-{distance}-{backend}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{RRA} dynamics --knn-dirs {params.knn_dirs:q} --out {params.out_dir}"
        " --settings {params.settings:q} --labels {params.labels} --run {params.run:q}"
        " --threads {threads} 2> {log}"
