# Held-out placement (E11, rra/metrics/placement.py): a run's embeddings of a held-out probe
# placed in each hook's exact kNN model of its embeddings of a reference (training) probe. Both
# embed folders come from the embed rule (rules/embed.smk), the reference probe being one more
# probe name; the folder names the two probes and the distance.


rule placement:
    input:
        reference=os.path.join(RUN_DIR, "embed/{reference}/manifest.json"),
        heldout=os.path.join(RUN_DIR, "embed/{heldout}/manifest.json"),
    output:
        os.path.join(RUN_DIR, "placement/{reference}/{heldout}/{distance}/manifest.json"),
    params:
        settings=lambda w: rc.as_json(
            rc.placement_params(config, run_of(w), w.reference, w.heldout, w.distance)
        ),
        run=placement_run,
        reference_dir=lambda w, input: os.path.dirname(input.reference),
        heldout_dir=lambda w, input: os.path.dirname(input.heldout),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RUN_DIR, "logs/placement-{reference}-{heldout}-{distance}.log"),
    benchmark:
        os.path.join(RUN_DIR, "benchmarks/placement-{reference}-{heldout}-{distance}.tsv")
    wildcard_constraints:
        reference=rn.PROBE,
        heldout=rn.PROBE,
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{RRA} placement --reference {params.reference_dir} --heldout {params.heldout_dir}"
        " --out {params.out_dir} --distance {wildcards.distance} --settings {params.settings:q}"
        " --run {params.run:q} --threads {threads} 2> {log}"
