# Per-layer embedding dumps (rra/embed): every hook point at every pooled scale, streamed to disk.


rule embed:
    input:
        model=RUN_DIR + "/model.pt",
        probe=DATA_DIR + "/probe/{probe}.npy",
    output:
        RUN_DIR + "/embed/{probe}/manifest.json",
    params:
        scales=lambda w: rc.as_json(SCALES),
        batch_size=config["embed"]["batch_size"],
        device=config["device"],
        split=lambda w: w.probe.split("-")[0],
    log:
        RUN_DIR + "/logs/embed-{probe}.log",
    threads: 2
    resources:
        mem_mb=4000,
    shell:
        "{PY} -m rra embed --run-dir $(dirname {input.model}) --split-dir {RESULTS}/data/{wildcards.dataset}/{params.split}"
        " --probe {input.probe} --out $(dirname {output}) --scales {params.scales:q}"
        " --batch-size {params.batch_size} --device {params.device} --threads {threads} 2> {log}"
