# The pair product test (featint.integration): does the LM's representation carry a term in the product of two of
# the SAE's latents, beyond what each gives alone? Per model and seed on the data and its no-interaction
# surrogates; then the summary, replication across seeds, the top pairs' contexts and the figures.


rule integration:
    input:
        **ACTIVATION_FILES,
        weights=RUN_MODEL.weights,
    output:
        pairs=LAYOUT.integration_of("{kind}", "{seed}").pairs,
        contexts=LAYOUT.integration_of("{kind}", "{seed}").contexts,
    log:
        f"{LOGS}/integration_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/integration_{{kind}}_seed~{{seed}}.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=6000,
        runtime=30,
    params:
        acts=activations_dir,
        run=RUN,
        config=stage_config("integration"),
    shell:
        "python -m featint integration --config-json {params.config:q} --threads {threads}"
        " --weights {input.weights} --activations {params.acts} --run {params.run}"
        " --out-pairs {output.pairs} --out-contexts {output.contexts} > {log} 2>&1"


rule gather_integration:
    input:
        **ACTIVATION_FILES,
        lm=LM_DIR,
        pairs=instance_paths(lambda kind, seed: LAYOUT.integration_of(kind, seed).pairs, INTEGRATION_INSTANCES),
        contexts=instance_paths(lambda kind, seed: LAYOUT.integration_of(kind, seed).contexts, INTEGRATION_INSTANCES),
        weights=instance_paths(model_path("weights"), INTEGRATION_INSTANCES),
    output:
        summary=LAYOUT.integration.summary,
        pairs=LAYOUT.integration.pairs,
        replication=LAYOUT.integration.replication,
        contexts=LAYOUT.integration.contexts,
        figures=[
            report(
                LAYOUT.integration.figure(name),
                caption="../report/integration.rst",
                category="Integration",
            )
            for name in featint_layout.INTEGRATION_FIGURES
        ],
    log:
        f"{LOGS}/gather_integration.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        acts=activations_dir,
        config=stage_config("gather-integration"),
    shell:
        "python -m featint gather-integration --config-json {params.config:q} --pairs {input.pairs}"
        " --contexts {input.contexts} --weights {input.weights} --activations {params.acts} --lm {input.lm}"
        " --out-summary {output.summary} --out-pairs {output.pairs} --out-replication {output.replication}"
        " --out-contexts {output.contexts} --figures {output.figures} > {log} 2>&1"
