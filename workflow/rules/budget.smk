# The verdict as the budget grows (`snakemake --cores 8 budget`; not part of `all`): budget.models trained at
# every budget.factors x training.tokens (1x: the default run's own models), each evaluated on the test split by
# the train and evaluate rules of training.smk (results group budget_x<factor>), then one scaling fit per kind
# and every comparison per budget (featint.budget).


rule select_lr_budget:
    input:
        **ACTIVATION_FILES,
    output:
        LAYOUT.lr_selection("{group}").kind("{kind}"),
    log:
        f"{LOGS}/select_lr_{{group}}_{{kind}}.log",
    benchmark:
        f"{BENCH}/select_lr_{{group}}_{{kind}}.tsv"
    wildcard_constraints:
        group=r"budget_x[0-9.]+",
        kind="|".join(BUDGET.models),
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=8000,
        runtime=240,
    params:
        acts=activations_dir,
        config=stage_config("select-lr"),
        budget=lambda wc: group_budget_factor(wc.group),
    shell:
        "python -m featint select-lr --config-json {params.config:q} --threads {threads} --kind {wildcards.kind}"
        " --activations {params.acts} --budget-factor {params.budget} --out {output} > {log} 2>&1"


rule budget_summary:
    input:
        documents=budget_files("reconstruction_documents"),
        logs=budget_files("train_log"),
    output:
        summary=LAYOUT.budget.summary,
        figure=report(
            LAYOUT.budget.figure("budget"),
            caption="../report/budget.rst",
            category="Training",
        ),
    log:
        f"{LOGS}/budget.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        config=stage_config("budget"),
    shell:
        "python -m featint budget --config-json {params.config:q} --documents {input.documents}"
        " --logs {input.logs} --out {output.summary} --out-figure {output.figure} > {log} 2>&1"


rule budget:
    input:
        rules.budget_summary.output,
        LAYOUT.budget_report.claims_markdown,


use rule claims as budget_claims with:
    input:
        **{name: value for name, value in rules.claims.input.items() if name != "budget"},
        budget=[rules.budget_summary.output.summary],
    output:
        table=LAYOUT.budget_report.claims,
        markdown=report(LAYOUT.budget_report.claims_markdown, caption="../report/claims.rst", category="Claims"),
        kinds=LAYOUT.budget_report.kinds,
        figure=LAYOUT.budget_report.kinds_figure,
    log:
        f"{LOGS}/budget_claims.log",
