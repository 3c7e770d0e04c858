# Layer analyses beside RRA (rra/layers; experiments E7–E9): each runs the trained model itself
# on a probe set, so it reads the checkpoint and the probe, not the embeddings.

from rra.layers.stage import INPUT_ANALYSES


rule layers:
    input:
        model=os.path.join(RUN_DIR, "model.pt"),
        probe=os.path.join(DATA_DIR, "probe/{probe}.npy"),
        train=layer_train_probe,
    output:
        os.path.join(RUN_DIR, "layers/{probe}/{analysis}/manifest.json"),
    params:
        settings=lambda w: rc.as_json(rc.layer_params(config, run_of(w), w.probe, w.analysis)),
        run=run_record,
        # embed.input decides the hook `input` of translation and margins only
        include_input=lambda w: (
            rc.as_json(rc.embed_input(config, w.model)) if w.analysis in INPUT_ANALYSES else "auto"
        ),
        device=config["device"],
        train=lambda w, input: f"--train {input.train[0]}" if input.train else "",
        data_dir=lambda w, input: os.path.dirname(os.path.dirname(input.probe)),
        run_dir=lambda w, input: os.path.dirname(input.model),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/layers-{probe}-{analysis}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/layers-{probe}-{analysis}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
    shell:
        "{RRA} layers --analysis {wildcards.analysis} --run-dir {params.run_dir}"
        " --data-dir {params.data_dir} --probe {input.probe} {params.train}"
        " --out {params.out_dir} --settings {params.settings:q} --run {params.run:q}"
        " --device {params.device} --input {params.include_input} --threads {threads} 2> {log}"
