# Planted-interaction positive control (config/synthetic.yaml): generated activations for every variant x
# strength, the compared kinds trained on each for every seed, one power curve and pair-identification summary.
# The LM stages do not run in such a run.


rule synthetic_data:
    output:
        activations=directory(f"{SYN}/data/{{variant}}~c{{strength}}/activations"),
        truth=f"{SYN}/data/{{variant}}~c{{strength}}/truth.safetensors",
        pairs=f"{SYN}/data/{{variant}}~c{{strength}}/test_pairs.parquet",
        variance=f"{SYN}/data/{{variant}}~c{{strength}}/variance.parquet",
    log:
        f"{LOGS}/synthetic/data_{{variant}}~c{{strength}}.log",
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        strength=r"[0-9.e+-]+",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        config=stage_config("synthetic-data"),
        out=lambda wc: f"{SYN}/data/{wc.variant}~c{wc.strength}",
    shell:
        "python -m featint synthetic-data --config-json {params.config:q} --variant {wildcards.variant}"
        " --strength {wildcards.strength} --out {params.out} > {log} 2>&1"


rule synthetic_models:
    input:
        rules.synthetic_data.output,
    output:
        fvu=f"{SYN}/models/{{variant}}~c{{strength}}/seed~{{seed}}/fvu.parquet",
        pairs=f"{SYN}/models/{{variant}}~c{{strength}}/seed~{{seed}}/pairs.parquet",
        weights=(
            [
                f"{SYN}/models/{{variant}}~c{{strength}}/seed~{{seed}}/{kind}/weights.safetensors"
                for kind in SYNTHETIC.kinds
            ]
            if SYNTHETIC
            else []
        ),
    log:
        f"{LOGS}/synthetic/models_{{variant}}~c{{strength}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/synthetic/models_{{variant}}~c{{strength}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        strength=r"[0-9.e+-]+",
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=4000,
        runtime=60,
    params:
        run=RUN,
        config=stage_config("synthetic-models"),
        setting=lambda wc: f"{SYN}/data/{wc.variant}~c{wc.strength}",
        out=lambda wc: f"{SYN}/models/{wc.variant}~c{wc.strength}/seed~{wc.seed}",
    shell:
        "python -m featint synthetic-models --config-json {params.config:q} --threads {threads}"
        " --variant {wildcards.variant} --strength {wildcards.strength}"
        " --seed {wildcards.seed} --setting {params.setting} --run {params.run} --out {params.out} > {log} 2>&1"


rule gather_synthetic:
    input:
        fvu=(
            [f"{SYN}/models/{v}~c{c}/seed~{s}/fvu.parquet" for v, c in synthetic_settings() for s in SEEDS]
            if SYNTHETIC
            else []
        ),
        pairs=(
            [f"{SYN}/models/{v}~c{c}/seed~{s}/pairs.parquet" for v, c in synthetic_settings() for s in SEEDS]
            if SYNTHETIC
            else []
        ),
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
    log:
        f"{LOGS}/synthetic/gather.log",
    conda:
        FEATINT_ENV
    threads: 1
    params:
        config=stage_config("gather-synthetic"),
        out=parent_dir(1, "power"),
    shell:
        "python -m featint gather-synthetic --config-json {params.config:q} --fvu {input.fvu}"
        " --pairs {input.pairs} --variance {input.variance} --out {params.out} > {log} 2>&1"


# The pair product test (featint.integration) on the standard SAE of every setting and seed, exactly as on the LM,
# its flags read against the planted truth afterwards; then its calibration and power over settings.
rule synthetic_integration:
    input:
        data=rules.synthetic_data.output,
        weights=f"{SYN}/models/{{variant}}~c{{strength}}/seed~{{seed}}/standard/weights.safetensors",
    output:
        pairs=f"{SYN}/integration/{{variant}}~c{{strength}}/seed~{{seed}}/pairs.parquet",
        calibration=f"{SYN}/integration/{{variant}}~c{{strength}}/seed~{{seed}}/calibration.parquet",
    log:
        f"{LOGS}/synthetic/integration_{{variant}}~c{{strength}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/synthetic/integration_{{variant}}~c{{strength}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        strength=r"[0-9.e+-]+",
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=stage_config("synthetic-integration"),
        setting=lambda wc: f"{SYN}/data/{wc.variant}~c{wc.strength}",
        out=parent_dir(1, "pairs"),
    shell:
        "python -m featint synthetic-integration --config-json {params.config:q} --threads {threads}"
        " --variant {wildcards.variant} --strength {wildcards.strength} --weights {input.weights}"
        " --setting {params.setting} --out {params.out} > {log} 2>&1"


rule gather_synthetic_integration:
    input:
        calibration=(
            [
                f"{SYN}/integration/{v}~c{c}/seed~{s}/calibration.parquet"
                for v, c in synthetic_settings()
                for s in SEEDS
            ]
            if SYNTHETIC
            else []
        ),
    output:
        power=f"{SYN}/summary/integration_power.parquet",
        calibration=f"{SYN}/summary/integration_calibration.parquet",
        figure=report(
            f"{SYN}/summary/figures/integration_power.png",
            caption="../report/synthetic_integration.rst",
            category="Positive control",
        ),
    log:
        f"{LOGS}/synthetic/gather_integration.log",
    conda:
        FEATINT_ENV
    threads: 1
    params:
        config=stage_config("gather-synthetic-integration"),
        out=parent_dir(1, "power"),
    shell:
        "python -m featint gather-synthetic-integration --config-json {params.config:q}"
        " --calibration {input.calibration} --out {params.out} > {log} 2>&1"
