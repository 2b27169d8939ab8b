# Interventions: a secondary SAE on each chosen model's NFM interaction embedding, then the 2x2 factorial
# stimuli (feature selection on `select` sentences, two-way ANOVAs on `test` sentences), clamping read out
# through word-set logits, greedy generations; a gathered summary with FDR and figures.


rule secondary_sae:
    input:
        **ACTIVATION_FILES,
        weights=RUN_MODEL.weights,
    output:
        weights=SECONDARY.weights,
        normaliser=SECONDARY.normaliser,
        log=SECONDARY.train_log,
        figure=report(
            SECONDARY.loss_figure,
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
        out=parent_dir(1, "weights"),
    shell:
        "python -m featint secondary-sae --config-json {params.config:q} --threads {threads}"
        " --weights {input.weights} --activations {params.acts} --out {params.out} > {log} 2>&1"


rule interventions:
    input:
        **ACTIVATION_FILES,
        lm=LM_DIR,
        weights=RUN_MODEL.weights,
        secondary=SECONDARY.weights,
        stimuli=[f"{config['interventions']['stimuli']}/{name}.tsv" for name in ("sentences", "prompts", "word_sets")],
    output:
        **{name: LAYOUT.interventions_of("{kind}", "{seed}").table(name) for name in INTERVENTION_TABLES},
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
        secondary=parent_dir(1, "secondary", of="input"),
        out=lambda wildcards, output: " ".join(
            f"--out-{name.replace('_', '-')} {getattr(output, name)}" for name in INTERVENTION_TABLES
        ),
    shell:
        "python -m featint interventions --config-json {params.config:q} --threads {threads}"
        " --lm {input.lm} --weights {input.weights} --secondary {params.secondary} --activations {params.acts}"
        " --run {params.run} {params.out} > {log} 2>&1"


rule gather_interventions:
    input:
        **{
            name: [LAYOUT.interventions_of(kind, seed).table(name) for kind in INTERVENTION_MODELS for seed in SEEDS]
            for name in INTERVENTION_TABLES
        },
    output:
        **{name: LAYOUT.interventions.table(name) for name in INTERVENTION_TABLES},
        summary=LAYOUT.interventions.summary,
        figures=[
            report(
                LAYOUT.interventions.figure(name),
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
        config=stage_config("gather-interventions"),
        tables=lambda wildcards, input, output: " ".join(
            f"--{name.replace('_', '-')} {' '.join(getattr(input, name))} --out-{name.replace('_', '-')} {getattr(output, name)}"
            for name in INTERVENTION_TABLES
        ),
    shell:
        "python -m featint gather-interventions --config-json {params.config:q} {params.tables}"
        " --out-summary {output.summary} --figures {output.figures} > {log} 2>&1"
