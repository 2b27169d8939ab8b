# Feature geometry per model and seed (squared norms, Gram statistics, clustering, contributions, PCA) and
# the verdict table: is bimodality present, and does it survive removing untrained features?


rule geometry:
    input:
        **ACTIVATION_FILES,
        weights=RUN_MODEL.weights,
        # models started from the trained standard SAE are compared with that SAE's own initialisation
        init=lambda wc: LAYOUT.model(geometry_init_kind(wc.kind), wc.seed).init,
    output:
        features=LAYOUT.geometry_of("{kind}", "{seed}").features,
        summary=LAYOUT.geometry_of("{kind}", "{seed}").summary,
        pca=LAYOUT.geometry_of("{kind}", "{seed}").pca,
    log:
        f"{LOGS}/geometry_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/geometry_{{kind}}_seed~{{seed}}.tsv"
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
        config=stage_config("geometry"),
    shell:
        "python -m featint geometry --config-json {params.config:q} --threads {threads}"
        " --weights {input.weights} --init {input.init} --activations {params.acts} --run {params.run}"
        " --out-features {output.features} --out-summary {output.summary} --out-pca {output.pca} > {log} 2>&1"


rule gather_geometry:
    input:
        features=instance_paths(lambda kind, seed: LAYOUT.geometry_of(kind, seed).features, GEOMETRY_INSTANCES),
        summaries=instance_paths(lambda kind, seed: LAYOUT.geometry_of(kind, seed).summary, GEOMETRY_INSTANCES),
        pca=instance_paths(lambda kind, seed: LAYOUT.geometry_of(kind, seed).pca, GEOMETRY_INSTANCES),
    output:
        summary=LAYOUT.geometry.summary,
        verdicts=LAYOUT.geometry.verdicts,
        figures=[
            report(
                LAYOUT.geometry.figure(name),
                caption="../report/geometry.rst",
                category="Geometry",
            )
            for name in GEOMETRY_FIGURES
        ],
    log:
        f"{LOGS}/gather_geometry.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        config=stage_config("gather-geometry"),
    shell:
        "python -m featint gather-geometry --config-json {params.config:q} --features {input.features}"
        " --summaries {input.summaries} --pca {input.pca} --out-summary {output.summary}"
        " --out-verdicts {output.verdicts} --figures {output.figures} > {log} 2>&1"
