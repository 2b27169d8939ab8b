# The paper's headline claims beside this run's numbers, each read from an upstream Parquet artefact.


rule claims:
    input:
        paper="config/paper_claims.tsv",
        reconstruction=f"{RESULTS}/metrics/reconstruction.parquet",
        reconstruction_summary=f"{RESULTS}/metrics/reconstruction_summary.parquet",
        convergence=[f"{RESULTS}/convergence/summary.parquet"] if CONVERGENCE["models"] else [],
        parameters=f"{RESULTS}/metrics/parameters.parquet",
        comparisons=f"{RESULTS}/metrics/comparisons.parquet",
        geometry=f"{RESULTS}/geometry/summary.parquet",
        behaviour=f"{RESULTS}/behaviour/summary.parquet",
        interventions=f"{RESULTS}/interventions/summary.parquet",
        clamps=f"{RESULTS}/interventions/clamp_statistics.parquet",
        integration=[f"{RESULTS}/integration/summary.parquet"] if INTEGRATION_INSTANCES else [],
        replication=[f"{RESULTS}/integration/replication.parquet"] if INTEGRATION_INSTANCES else [],
        planted_power=[config["integration"]["planted_power"]] if config["integration"]["planted_power"] else [],
        budget=[],  # the budget target's claims (budget_claims) hand over budget/summary.parquet
    output:
        table=f"{RESULTS}/report/claims.parquet",
        markdown=report(f"{RESULTS}/report/claims.md", caption="../report/claims.rst", category="Claims"),
        kinds=f"{RESULTS}/report/kinds_by_parameters.parquet",
        figure=report(
            f"{RESULTS}/report/figures/kinds_by_parameters.png",
            caption="../report/kinds_by_parameters.rst",
            category="Claims",
        ),
    log:
        f"{LOGS}/claims.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        run=RUN,
        tables=claims_options,
    shell:
        "python -m featint claims --paper-claims {input.paper} {params.tables} --run {params.run}"
        " --out-table {output.table} --out-markdown {output.markdown} --out-kinds {output.kinds}"
        " --out-figure {output.figure} > {log} 2>&1"


rule run_info:
    output:
        config=report(f"{RESULTS}/report/config.yaml", caption="../report/run_info.rst", category="Run"),
        versions=report(f"{RESULTS}/report/versions.tsv", caption="../report/run_info.rst", category="Run"),
    log:
        f"{LOGS}/run_info.log",
    conda:
        FEATINT_ENV
    threads: 1
    params:
        config=json.dumps(config, sort_keys=True),
    shell:
        "python -m featint run-info --config-json {params.config:q} --out-config {output.config}"
        " --out-versions {output.versions} > {log} 2>&1"
