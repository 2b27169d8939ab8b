# Feature geometry per model and seed (squared norms, Gram statistics, clustering, contributions, PCA) and
# the verdict table: is bimodality present, and does it survive removing untrained features?

GEOMETRY_FIGURES = [
    "squared_norm_histograms",
    "squared_norm_vs_firing_frequency",
    "squared_norm_vs_paper_interaction_ratio",
    "squared_norm_vs_activation_nfm_share",
    "squared_norm_by_cluster",
    "pca_elbows",
]


#: geometry's measures (decoder norms, NFM row norms and contributions) read SAE-only and NFM models; the rivals'
#: frozen decoders are the standard SAE's, and their heads have no V or embedding
GEOMETRY_INSTANCES = [(kind, seed) for kind, seed in MODEL_INSTANCES if featint_kinds.KINDS[kind].nfm_geometry]


def geometry_init_kind(kind):
    return "standard" if kind in featint_kinds.FROM_STANDARD else kind


def geometry_targets():
    return [f"{RESULTS}/geometry/summary.parquet", f"{RESULTS}/geometry/verdicts.parquet"] + [
        f"{RESULTS}/geometry/figures/{name}.png" for name in GEOMETRY_FIGURES
    ]


rule geometry:
    input:
        ACTIVATION_FILES,
        weights=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/weights.safetensors",
        # models started from the trained standard SAE are compared with that SAE's own initialisation
        init=lambda wc: f"{model_dir(geometry_init_kind(wc.kind), wc.seed)}/init.safetensors",
    output:
        features=f"{RESULTS}/geometry/{{kind}}/seed~{{seed}}/features.parquet",
        summary=f"{RESULTS}/geometry/{{kind}}/seed~{{seed}}/summary.parquet",
        pca=f"{RESULTS}/geometry/{{kind}}/seed~{{seed}}/pca.parquet",
    params:
        config=stage_config("geometry"),
        out=lambda wc: f"{RESULTS}/geometry/{wc.kind}/seed~{wc.seed}",
    log:
        f"{LOGS}/geometry_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/geometry_{{kind}}_seed~{{seed}}.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=1,  # one GPU each: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=6000,
        runtime=30,
    shell:
        "python -m featint geometry --config-json {params.config:q} --threads {threads} --cpu-share {CPU_SHARE}"
        " --weights {input.weights} --init {input.init} --activations {ACTS} --run {RUN} --out {params.out}"
        " > {log} 2>&1"


rule gather_geometry:
    input:
        features=instance_paths(f"{RESULTS}/geometry/{{kind}}/seed~{{seed}}/features.parquet", GEOMETRY_INSTANCES),
        summaries=instance_paths(f"{RESULTS}/geometry/{{kind}}/seed~{{seed}}/summary.parquet", GEOMETRY_INSTANCES),
        pca=instance_paths(f"{RESULTS}/geometry/{{kind}}/seed~{{seed}}/pca.parquet", GEOMETRY_INSTANCES),
    output:
        summary=f"{RESULTS}/geometry/summary.parquet",
        verdicts=f"{RESULTS}/geometry/verdicts.parquet",
        figures=[
            report(
                f"{RESULTS}/geometry/figures/{name}.png",
                caption="../report/geometry.rst",
                category="Geometry",
            )
            for name in GEOMETRY_FIGURES
        ],
    params:
        config=stage_config("gather-geometry"),
        figures=f"{RESULTS}/geometry/figures",
    log:
        f"{LOGS}/gather_geometry.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m featint gather-geometry --config-json {params.config:q} --features {input.features}"
        " --summaries {input.summaries} --pca {input.pca} --out-summary {output.summary}"
        " --out-verdicts {output.verdicts} --figures {params.figures} > {log} 2>&1"
