# Planted-interaction positive control (config/synthetic.yaml): generated activations for every variant x
# strength, the compared kinds trained on each for every seed, one power curve and pair-identification summary.
# The LM stages do not run in such a run.
SYNTHETIC = SETTINGS.synthetic
SYN = f"{RESULTS}/synthetic"


def synthetic_settings():
    """(variant, strength) of every setting, strengths written as in the folder names."""
    return [(variant.name, f"{strength:g}") for variant in SYNTHETIC.variants for strength in SYNTHETIC.strengths]


def synthetic_targets():
    return [f"{SYN}/summary/power.parquet", f"{SYN}/summary/figures/power.png",
            f"{SYN}/summary/figures/identification.png"]


rule synthetic_data:
    output:
        activations=directory(f"{SYN}/data/{{variant}}~c{{strength}}/activations"),
        truth=f"{SYN}/data/{{variant}}~c{{strength}}/truth.safetensors",
        pairs=f"{SYN}/data/{{variant}}~c{{strength}}/test_pairs.parquet",
        variance=f"{SYN}/data/{{variant}}~c{{strength}}/variance.parquet",
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        strength=r"[0-9.e+-]+",
    params:
        config=stage_config("synthetic-data"),
        out=lambda wc: f"{SYN}/data/{wc.variant}~c{wc.strength}",
    log:
        f"{LOGS}/synthetic/data_{{variant}}~c{{strength}}.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m featint synthetic-data --config-json {params.config:q} --variant {wildcards.variant}"
        " --strength {wildcards.strength} --out {params.out} > {log} 2>&1"


rule synthetic_models:
    input:
        rules.synthetic_data.output,
    output:
        fvu=f"{SYN}/models/{{variant}}~c{{strength}}/seed~{{seed}}/fvu.parquet",
        pairs=f"{SYN}/models/{{variant}}~c{{strength}}/seed~{{seed}}/pairs.parquet",
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        strength=r"[0-9.e+-]+",
        seed=r"\d+",
    params:
        config=stage_config("synthetic-models"),
        setting=lambda wc: f"{SYN}/data/{wc.variant}~c{wc.strength}",
        out=lambda wc: f"{SYN}/models/{wc.variant}~c{wc.strength}/seed~{wc.seed}",
    log:
        f"{LOGS}/synthetic/models_{{variant}}~c{{strength}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/synthetic/models_{{variant}}~c{{strength}}_seed~{{seed}}.tsv"
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=1,  # one GPU each: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m featint synthetic-models --config-json {params.config:q} --threads {threads}"
        " --cpu-share {CPU_SHARE} --variant {wildcards.variant} --strength {wildcards.strength}"
        " --seed {wildcards.seed} --setting {params.setting} --run {RUN} --out {params.out} > {log} 2>&1"


rule gather_synthetic:
    input:
        fvu=[f"{SYN}/models/{v}~c{c}/seed~{s}/fvu.parquet" for v, c in synthetic_settings() for s in SEEDS]
        if SYNTHETIC
        else [],
        pairs=[f"{SYN}/models/{v}~c{c}/seed~{s}/pairs.parquet" for v, c in synthetic_settings() for s in SEEDS]
        if SYNTHETIC
        else [],
        variance=[f"{SYN}/data/{v}~c{c}/variance.parquet" for v, c in synthetic_settings()] if SYNTHETIC else [],
    output:
        power=f"{SYN}/summary/power.parquet",
        detection=f"{SYN}/summary/detection.parquet",
        identification=f"{SYN}/summary/identification.parquet",
        power_figure=report(
            f"{SYN}/summary/figures/power.png",
            caption="../report/synthetic_power.rst",
            category="Positive control",
        ),
        identification_figure=report(
            f"{SYN}/summary/figures/identification.png",
            caption="../report/synthetic_identification.rst",
            category="Positive control",
        ),
    params:
        config=stage_config("gather-synthetic"),
        out=f"{SYN}/summary",
    log:
        f"{LOGS}/synthetic/gather.log",
    conda:
        FEATINT_ENV
    threads: 1
    shell:
        "python -m featint gather-synthetic --config-json {params.config:q} --fvu {input.fvu}"
        " --pairs {input.pairs} --variance {input.variance} --out {params.out} > {log} 2>&1"
