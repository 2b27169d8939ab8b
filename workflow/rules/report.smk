# The paper's headline claims beside this run's numbers, each read from an upstream Parquet artefact.


rule claims:
    input:
        paper="config/paper_claims.tsv",
        reconstruction=LAYOUT.metrics.reconstruction,
        reconstruction_summary=LAYOUT.metrics.summary,
        convergence=[LAYOUT.convergence.summary] if CONVERGENCE["models"] else [],
        parameters=LAYOUT.metrics.parameters,
        comparisons=LAYOUT.metrics.comparisons,
        geometry=LAYOUT.geometry.summary,
        behaviour=LAYOUT.behaviour.summary,
        interventions=LAYOUT.interventions.summary,
        clamps=LAYOUT.interventions.clamp_statistics,
        integration=[LAYOUT.integration.summary] if INTEGRATION_INSTANCES else [],
        replication=[LAYOUT.integration.replication] if INTEGRATION_INSTANCES else [],
        planted_power=[config["integration"]["planted_power"]] if config["integration"]["planted_power"] else [],
        budget=[],  # the budget target's claims (budget_claims) hand over budget/summary.parquet
    output:
        table=LAYOUT.report.claims,
        markdown=report(LAYOUT.report.claims_markdown, caption="../report/claims.rst", category="Claims"),
        kinds=LAYOUT.report.kinds,
        figure=report(
            LAYOUT.report.kinds_figure,
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
        config=report(LAYOUT.report.config, caption="../report/run_info.rst", category="Run"),
        versions=report(LAYOUT.report.versions, caption="../report/run_info.rst", category="Run"),
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
