# Altair figures of the whole study (rra/report) and reports/index.html.


rule report:
    input:
        study_targets(),
    output:
        # update(): Snakemake keeps the previous report while the job runs and restores it if
        # the job fails (rra.report.build swaps the new one in only when it is complete).
        # `snakemake --report report.html` collects every PNG of the figures folder
        figures=report(
            update(directory(f"{REPORTS}/figures")),
            patterns=["{figure}.png"],
            caption="../docs/report/figures.rst",
            category="Figures",
        ),
        index=update(f"{REPORTS}/index.html"),
        records=update(f"{REPORTS}/index.json"),
        metrics=update(f"{REPORTS}/metrics.json"),
    params:
        config=lambda w: rc.as_json(config),
        # the folder every input lies under (a function, so that lint does not take the plain
        # string for a path prefix that could be derived from one input)
        results=lambda w: RESULTS,
        out_dir=lambda w, output: os.path.dirname(output.index),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{RRA} report --results {params.results} --out {params.out_dir}"
        " --config {params.config:q} --threads {threads} 2> {log}"
