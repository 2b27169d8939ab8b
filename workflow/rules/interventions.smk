# Interventions: a secondary SAE on each chosen model's NFM interaction embedding, then the 2x2 factorial
# stimuli (feature selection on `select` sentences, two-way ANOVAs on `test` sentences), clamping read out
# through word-set logits, greedy generations; a gathered summary with FDR and figures.


rule secondary_sae:
    input:
        **ACTIVATION_FILES,
        weights=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/weights.safetensors",
    output:
        weights=f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/secondary/weights.safetensors",
        normaliser=f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/secondary/normaliser.safetensors",
        log=f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/secondary/train_log.parquet",
        figure=report(
            f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/secondary/figures/loss.png",
            caption="../report/training_curves.rst",
            category="Interventions",
            subcategory="secondary SAE {kind}",
        ),
    log:
        f"{LOGS}/secondary_sae_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/secondary_sae_{{kind}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        kind="|".join(featint_kinds.WITH_EMBEDDING),
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=4000,
        runtime=60,
    params:
        acts=activations_dir,
        config=stage_config("secondary-sae"),
        out=lambda wc: f"{RESULTS}/interventions/{wc.kind}/seed~{wc.seed}/secondary",
    shell:
        "python -m featint secondary-sae --config-json {params.config:q} --threads {threads}"
        " --weights {input.weights} --activations {params.acts} --out {params.out} > {log} 2>&1"


rule interventions:
    input:
        **ACTIVATION_FILES,
        lm=LM_DIR,
        weights=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/weights.safetensors",
        secondary=f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/secondary/weights.safetensors",
        stimuli=[f"{config['interventions']['stimuli']}/{name}.tsv" for name in ("sentences", "prompts", "word_sets")],
    output:
        [f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/{name}.parquet" for name in INTERVENTION_TABLES],
    log:
        f"{LOGS}/interventions_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/interventions_{{kind}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        kind="|".join(featint_kinds.WITH_EMBEDDING),
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=4000,
        runtime=60,
    params:
        acts=activations_dir,
        run=RUN,
        config=stage_config("interventions"),
        out=lambda wc: f"{RESULTS}/interventions/{wc.kind}/seed~{wc.seed}",
    shell:
        "python -m featint interventions --config-json {params.config:q} --threads {threads}"
        " --lm {input.lm} --weights {input.weights} --secondary {params.out}/secondary --activations {params.acts}"
        " --run {params.run} --out {params.out} > {log} 2>&1"


rule gather_interventions:
    input:
        expand(
            f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}/{{name}}.parquet",
            kind=INTERVENTION_MODELS,
            seed=SEEDS,
            name=INTERVENTION_TABLES,
        ),
    output:
        summary=f"{RESULTS}/interventions/summary.parquet",
        tables=[f"{RESULTS}/interventions/{name}.parquet" for name in INTERVENTION_TABLES],
        figures=[
            report(
                f"{RESULTS}/interventions/figures/{name}.png",
                caption="../report/interventions.rst",
                category="Interventions",
            )
            for name in INTERVENTION_FIGURES
        ],
    log:
        f"{LOGS}/gather_interventions.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        out=parent_dir(1, "summary"),
        config=stage_config("gather-interventions"),
        models=expand(f"{RESULTS}/interventions/{{kind}}/seed~{{seed}}", kind=INTERVENTION_MODELS, seed=SEEDS),
    shell:
        "python -m featint gather-interventions --config-json {params.config:q} --models {params.models}"
        " --out {params.out} --figures {params.out}/figures > {log} 2>&1"
