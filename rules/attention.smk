# Attention variants (rra/stac.py, rra/models/cost.py): the stac-auto loop analysis → design,
# and the parameter/FLOP accounting of every (model, attention) of the grid.


# The stac-auto scales of a model, chosen from its baseline's ClassRepSim table (the first
# configured distance and backend, the probe stac_auto.probe on the held-out val split, never
# test) within the FLOPs budget. The stac_auto settings are params: changing one reruns this
# choice and the stac-auto runs that train with it, nothing else.
STAC_PROBE = rc.stac_probe(config)


rule stac_scales:
    input:
        metrics=os.path.join(
            DATASET_DIR,
            "{model}-none-{augmentation}-s{seed}/metrics",
            STAC_PROBE,
            KNN_SPECS[0],
            "manifest.json",
        ),
        model=os.path.join(DATASET_DIR, "{model}-none-{augmentation}-s{seed}/model.pt"),
    output:
        os.path.join(DATASET_DIR, "stac_scales/{model}-none-{augmentation}-s{seed}.json"),
    params:
        criterion=config["stac_auto"]["criterion"],
        tau=config["stac_auto"]["tau"],
        delta=config["stac_auto"]["delta"],
        budget=lambda w: (
            ""
            if config["stac_auto"]["max_flops_ratio"] is None
            else f"--max-flops-ratio {config['stac_auto']['max_flops_ratio']}"
        ),
        stac_kwargs=rc.as_json(rc.stac_auto_kwargs(config)),  # mode: for the FLOPs of each choice
        k=config["stac_auto"]["k"],
        classrepsim=lambda w, input: os.path.join(
            os.path.dirname(input.metrics), "classrepsim.parquet"
        ),
        run_dir=lambda w, input: os.path.dirname(input.model),
    log:
        os.path.join(DATASET_DIR, "stac_scales/logs/{model}-none-{augmentation}-s{seed}.log"),
    benchmark:
        os.path.join(DATASET_DIR, "stac_scales/benchmarks/{model}-none-{augmentation}-s{seed}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{RRA} stac-scales --classrepsim {params.classrepsim} --run-dir {params.run_dir}"
        " --criterion {params.criterion} --tau {params.tau} --delta {params.delta} {params.budget}"
        " --attention-kwargs {params.stac_kwargs:q} --k {params.k} --out {output} --threads {threads} 2> {log}"


# Parameters and FLOPs (one image at the dataset's input size) per (model, attention variant),
# with ratios to the model's `none` baseline; stac-auto is measured with its chosen scales.
rule cost:
    input:
        lambda w: [
            v["attention_kwargs_file"]
            for v in cost_variants(w.dataset)
            if "attention_kwargs_file" in v
        ],
    output:
        os.path.join(DATASET_DIR, "cost.parquet"),
        os.path.join(DATASET_DIR, "cost.csv"),
    params:
        variants=lambda w: rc.as_json(cost_variants(w.dataset)),
        stem=lambda w, output: output[0].removesuffix(".parquet"),
    log:
        os.path.join(DATASET_DIR, "logs/cost.log"),
    benchmark:
        os.path.join(DATASET_DIR, "benchmarks/cost.tsv")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{RRA} cost --dataset {wildcards.dataset} --variants {params.variants:q} --out {params.stem}"
        " --threads {threads} 2> {log}"
