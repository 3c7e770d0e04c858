# Per-layer embedding dumps (rra/embed): every hook point at every pooled scale, streamed to disk;
# with the input hook `input` first where embed.input resolves to true for the run's model.


rule embed:
    input:
        model=os.path.join(RUN_DIR, "model.pt"),
        probe=os.path.join(DATA_DIR, "probe/{probe}.npy"),
    output:
        os.path.join(RUN_DIR, "embed/{probe}/manifest.json"),
    params:
        scales=lambda w: rc.as_json(SCALES),
        include_input=lambda w: rc.as_json(rc.embed_input(config, w.model)),
        batch_size=config["embed"]["batch_size"],
        device=config["device"],
        split_dir=lambda w: f"{RESULTS}/data/{w.dataset}/{rc.parse_probe(w.probe)['split']}",
        run_dir=lambda w, input: os.path.dirname(input.model),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/embed-{probe}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/embed-{probe}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
    shell:
        "{RRA} embed --run-dir {params.run_dir} --split-dir {params.split_dir}"
        " --probe {input.probe} --out {params.out_dir} --scales {params.scales:q}"
        " --batch-size {params.batch_size} --device {params.device} --input {params.include_input}"
        " --threads {threads} 2> {log}"
