# Altair figures of the whole study (rra/report) and reports/index.html.


rule report:
    input:
        study_targets(),
    output:
        # update(): Snakemake keeps the previous report while the job runs and restores it if
        # the job fails (rra.report.build swaps the new one in only when it is complete).
        # `snakemake --report report.html` collects every PNG of the figures folder
        figures=report(update(directory(REPORTS + "/figures")), patterns=["{figure}.png"],
                       caption="../docs/report/figures.rst", category="Figures"),
        index=update(REPORTS + "/index.html"),
        records=update(REPORTS + "/index.json"),
        metrics=update(REPORTS + "/metrics.json"),
    params:
        config=lambda w: rc.as_json(config),
    log:
        RESULTS + "/logs/report.log",
    benchmark:
        RESULTS + "/benchmarks/report.tsv",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{RRA} report --results {RESULTS} --out {REPORTS} --config {params.config:q} --threads {threads} 2> {log}"
