# Training: learning rates chosen on the validation split (unless training.lr is set), then every model kind
# for every seed on the same activations, seed and token budget; reconstruction metrics on the test split.

MODEL_KINDS = config["models"]
SEEDS = config["training"]["seeds"]
ACTS = f"{RESULTS}/activations"
ACTIVATION_FILES = [f"{ACTS}/{split}" for split in SPLITS] + [f"{ACTS}/normaliser.safetensors"]


def model_dir(kind, seed):
    return f"{RESULTS}/models/{kind}/seed~{seed}"


def training_targets():
    return [
        f"{RESULTS}/metrics/reconstruction.parquet",
        f"{RESULTS}/metrics/reconstruction_summary.parquet",
        f"{RESULTS}/metrics/parameters.parquet",
        f"{RESULTS}/metrics/figures/reconstruction.png",
    ]


def lr_table(wildcards):
    if config["training"]["lr"] is not None:
        return []
    family = featint_training.LR_FAMILY[wildcards.kind]
    return f"{RESULTS}/lr_selection/{family}.parquet"


def standard_weights(wildcards):
    if wildcards.kind in featint_models.FROM_STANDARD:
        return f"{model_dir('standard', wildcards.seed)}/weights.safetensors"
    return []


rule select_lr:
    input:
        ACTIVATION_FILES,
    output:
        f"{RESULTS}/lr_selection/{{family}}.parquet",
    wildcard_constraints:
        family="sae|nfm",
    params:
        config=stage_config("select-lr"),
    log:
        f"{LOGS}/select_lr_{{family}}.log",
    benchmark:
        f"{BENCH}/select_lr_{{family}}.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m featint select-lr --config-json {params.config:q} --threads {threads} --cpu-share {CPU_SHARE} --family {wildcards.family}"
        " --activations {ACTS} --out {output} > {log} 2>&1"


rule train:
    input:
        ACTIVATION_FILES,
        lr_table=lr_table,
        standard=standard_weights,
    output:
        weights=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/weights.safetensors",
        init=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/init.safetensors",
        log=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/train_log.parquet",
        parameters=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/parameters.parquet",
        figure=report(
            f"{RESULTS}/models/{{kind}}/seed~{{seed}}/figures/loss.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{kind}",
        ),
    wildcard_constraints:
        kind="|".join(featint_models.MODEL_KINDS),
        seed=r"\d+",
    params:
        config=stage_config("train"),
        lr_table=lambda wc, input: f"--lr-table {input.lr_table}" if input.lr_table else "",
        standard=lambda wc, input: f"--standard {input.standard}" if input.standard else "",
        out=lambda wc: model_dir(wc.kind, wc.seed),
    log:
        f"{LOGS}/train_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/train_{{kind}}_seed~{{seed}}.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m featint train --config-json {params.config:q} --threads {threads} --cpu-share {CPU_SHARE} --kind {wildcards.kind}"
        " --seed {wildcards.seed} --activations {ACTS} {params.lr_table} {params.standard}"
        " --out {params.out} > {log} 2>&1"


rule evaluate_reconstruction:
    input:
        ACTIVATION_FILES,
        weights=f"{RESULTS}/models/{{kind}}/seed~{{seed}}/weights.safetensors",
    output:
        f"{RESULTS}/models/{{kind}}/seed~{{seed}}/reconstruction.parquet",
    log:
        f"{LOGS}/evaluate_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate_{{kind}}_seed~{{seed}}.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m featint evaluate --threads {threads} --cpu-share {CPU_SHARE} --weights {input.weights} --activations {ACTS}"
        " --run {RUN} --out {output} > {log} 2>&1"


rule gather_reconstruction:
    input:
        tables=expand(f"{RESULTS}/models/{{kind}}/seed~{{seed}}/reconstruction.parquet", kind=MODEL_KINDS,
                      seed=SEEDS),
        parameters=expand(f"{RESULTS}/models/{{kind}}/seed~{{seed}}/parameters.parquet", kind=MODEL_KINDS,
                          seed=SEEDS),
    output:
        metrics=f"{RESULTS}/metrics/reconstruction.parquet",
        summary=f"{RESULTS}/metrics/reconstruction_summary.parquet",
        parameters=f"{RESULTS}/metrics/parameters.parquet",
        figure=report(
            f"{RESULTS}/metrics/figures/reconstruction.png",
            caption="../report/reconstruction.rst",
            category="Reconstruction",
        ),
    log:
        f"{LOGS}/gather_reconstruction.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m featint gather-metrics --tables {input.tables} --parameters {input.parameters}"
        " --out-metrics {output.metrics} --out-summary {output.summary} --out-parameters {output.parameters}"
        " --out-figure {output.figure} > {log} 2>&1"
