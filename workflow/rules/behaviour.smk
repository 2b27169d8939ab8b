# Behaviour: every model's reconstructions spliced into the LM at the hook on test windows (KL to the clean
# model, next-token CE), each against epsilon-random errors of its own per-token norm; clean / zero- / mean-
# ablation references once per run; a paired window-bootstrap summary and figures.


rule behaviour_reference:
    input:
        **ACTIVATION_FILES,
        lm=LM_DIR,
    output:
        LAYOUT.behaviour_reference.tokens,
    log:
        f"{LOGS}/behaviour_reference.log",
    benchmark:
        f"{BENCH}/behaviour_reference.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=4000,
        runtime=30,
    params:
        acts=activations_dir,
        run=RUN,
        config=stage_config("behaviour-reference"),
    shell:
        "python -m featint behaviour-reference --config-json {params.config:q} --threads {threads}"
        " --lm {input.lm} --activations {params.acts} --run {params.run} --out {output} > {log} 2>&1"


rule behaviour:
    input:
        **ACTIVATION_FILES,
        lm=LM_DIR,
        weights=RUN_MODEL.weights,
    output:
        LAYOUT.behaviour_of("{kind}", "{seed}").tokens,
    log:
        f"{LOGS}/behaviour_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/behaviour_{{kind}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        kind="|".join(featint_kinds.MODEL_KINDS),
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
        config=stage_config("behaviour"),
    shell:
        "python -m featint behaviour --config-json {params.config:q} --threads {threads} --lm {input.lm}"
        " --weights {input.weights} --activations {params.acts} --run {params.run} --out {output} > {log} 2>&1"


rule gather_behaviour:
    input:
        tables=instance_paths(lambda kind, seed: LAYOUT.behaviour_of(kind, seed).tokens),
        reference=LAYOUT.behaviour_reference.tokens,
    output:
        summary=LAYOUT.behaviour.summary,
        figures=[
            report(
                LAYOUT.behaviour.figure(name),
                caption="../report/behaviour.rst",
                category="Behaviour",
            )
            for name in BEHAVIOUR_FIGURES
        ],
    log:
        f"{LOGS}/gather_behaviour.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        run=RUN,
        config=stage_config("gather-behaviour"),
    shell:
        "python -m featint gather-behaviour --config-json {params.config:q} --tables {input.tables}"
        " --reference {input.reference} --run {params.run} --out-summary {output.summary} --figures {output.figures}"
        " > {log} 2>&1"


# SAEBench's core eval JSON of each SAE-only model (featint.saebench): its reconstruction metrics on the test split
# and the behaviour stage's KL / CE against zero-ablation, as sae-bench's CoreEvalOutput writes them
rule saebench_core:
    input:
        **ACTIVATION_FILES,
        weights=RUN_MODEL.weights,
        behaviour=LAYOUT.behaviour.summary,
    output:
        RUN_MODEL.saebench_core,
    log:
        f"{LOGS}/saebench_core_{{kind}}_seed~{{seed}}.log",
    wildcard_constraints:
        kind="|".join(featint_kinds.SAE_ONLY),
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        acts=activations_dir,
        run=RUN,
        config=stage_config("saebench-core"),
    shell:
        "python -m featint saebench-core --config-json {params.config:q} --weights {input.weights}"
        " --activations {params.acts} --behaviour {input.behaviour} --run {params.run} --out {output} > {log} 2>&1"
