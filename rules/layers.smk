# Layer analyses beside RRA (rra/layers; experiments E7–E9): each runs the trained model itself
# on a probe set, so it reads the checkpoint and the probe, not the embeddings.

from rra.layers.stage import INPUT_ANALYSES


def layer_train_probe(w):
    """The training subset's probe file of patterns and margins (trees, PCA); none otherwise."""
    train = rc.layer_params(config, run_of(w), w.probe, w.analysis).get("train")
    return [f"{RESULTS}/data/{w.dataset}/probe/{train}.npy"] if train else []


rule layers:
    input:
        model=RUN_DIR + "/model.pt",
        probe=DATA_DIR + "/probe/{probe}.npy",
        train=layer_train_probe,
    output:
        RUN_DIR + "/layers/{probe}/{analysis}/manifest.json",
    params:
        settings=lambda w: rc.as_json(rc.layer_params(config, run_of(w), w.probe, w.analysis)),
        run=lambda w: rc.as_json({"dataset": w.dataset, "model": w.model, "attention": w.attention,
                                  "augmentation": w.augmentation, "seed": int(w.seed), "probe": w.probe}),
        # embed.input decides the hook `input` of translation and margins only
        include_input=lambda w: rc.as_json(rc.embed_input(config, w.model)) if w.analysis in INPUT_ANALYSES else "auto",
        device=config["device"],
        train=lambda w, input: f"--train {input.train[0]}" if input.train else "",
        run_dir=lambda w, input: os.path.dirname(input.model),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        RUN_DIR + "/logs/layers-{probe}-{analysis}.log",
    benchmark:
        RUN_DIR + "/benchmarks/layers-{probe}-{analysis}.tsv",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
    shell:
        "{RRA} layers --analysis {wildcards.analysis} --run-dir {params.run_dir}"
        " --data-dir {RESULTS}/data/{wildcards.dataset} --probe {input.probe} {params.train}"
        " --out {params.out_dir} --settings {params.settings:q} --run {params.run:q}"
        " --device {params.device} --input {params.include_input} --threads {threads} 2> {log}"
