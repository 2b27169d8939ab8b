# Planted-interaction positive control (config/synthetic.yaml): generated activations for every variant x
# strength, the compared kinds trained on each for every seed, one power curve and pair-identification summary.
# The LM stages do not run in such a run.


rule synthetic_data:
    output:
        activations=directory(str(SETTING.activations)),
        truth=SETTING.truth,
        pairs=SETTING.test_pairs,
        variance=SETTING.variance,
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
        out=parent_dir(1, "truth"),
    shell:
        "python -m featint synthetic-data --config-json {params.config:q} --variant {wildcards.variant}"
        " --strength {wildcards.strength} --out {params.out} > {log} 2>&1"


rule synthetic_models:
    input:
        rules.synthetic_data.output,
    output:
        fvu=SYNTHETIC_MODELS.fvu,
        pairs=SYNTHETIC_MODELS.pairs,
        weights=[SYNTHETIC_MODELS.model(kind).weights for kind in SYNTHETIC.kinds] if SYNTHETIC else [],
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
        setting=lambda wc: str(LAYOUT.synthetic_setting(wc.variant, wc.strength)),
        models=parent_dir(1, "fvu"),  # the setting-and-seed folder: its models beside its tables
    shell:
        "python -m featint synthetic-models --config-json {params.config:q} --threads {threads}"
        " --variant {wildcards.variant} --strength {wildcards.strength}"
        " --seed {wildcards.seed} --setting {params.setting} --run {params.run} --models {params.models}"
        " --out-fvu {output.fvu} --out-pairs {output.pairs} > {log} 2>&1"


rule gather_synthetic:
    input:
        fvu=[LAYOUT.synthetic_models(v, c, s).fvu for v, c in synthetic_settings() for s in SEEDS],
        pairs=[LAYOUT.synthetic_models(v, c, s).pairs for v, c in synthetic_settings() for s in SEEDS],
        variance=[LAYOUT.synthetic_setting(v, c).variance for v, c in synthetic_settings()],
    output:
        fvu=LAYOUT.synthetic_summary.fvu,
        power=LAYOUT.synthetic_summary.power,
        detection=LAYOUT.synthetic_summary.detection,
        identification=LAYOUT.synthetic_summary.identification,
        variance=LAYOUT.synthetic_summary.variance,
        power_figure=report(
            LAYOUT.synthetic_summary.figure("power"),
            caption="../report/synthetic_power.rst",
            category="Positive control",
        ),
        identification_figure=report(
            LAYOUT.synthetic_summary.figure("identification"),
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
    shell:
        "python -m featint gather-synthetic --config-json {params.config:q} --fvu {input.fvu}"
        " --pairs {input.pairs} --variance {input.variance} --out-fvu {output.fvu} --out-power {output.power}"
        " --out-detection {output.detection} --out-identification {output.identification}"
        " --out-variance {output.variance} --out-power-figure {output.power_figure}"
        " --out-identification-figure {output.identification_figure} > {log} 2>&1"


# The pair product test (featint.integration) on the standard SAE of every setting and seed, exactly as on the LM,
# its flags read against the planted truth afterwards; then its calibration and power over settings.
rule synthetic_integration:
    input:
        data=rules.synthetic_data.output,
        weights=SYNTHETIC_MODELS.model("standard").weights,
    output:
        pairs=SYNTHETIC_INTEGRATION.pairs,
        calibration=SYNTHETIC_INTEGRATION.calibration,
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
        setting=lambda wc: str(LAYOUT.synthetic_setting(wc.variant, wc.strength)),
    shell:
        "python -m featint synthetic-integration --config-json {params.config:q} --threads {threads}"
        " --variant {wildcards.variant} --strength {wildcards.strength} --weights {input.weights}"
        " --setting {params.setting} --out-pairs {output.pairs} --out-calibration {output.calibration} > {log} 2>&1"


rule gather_synthetic_integration:
    input:
        calibration=[LAYOUT.synthetic_integration(v, c, s).calibration for v, c in synthetic_settings() for s in SEEDS],
    output:
        power=LAYOUT.synthetic_summary.integration_power,
        calibration=LAYOUT.synthetic_summary.integration_calibration,
        figure=report(
            LAYOUT.synthetic_summary.figure("integration_power"),
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
    shell:
        "python -m featint gather-synthetic-integration --config-json {params.config:q}"
        " --calibration {input.calibration} --out-calibration {output.calibration} --out-power {output.power}"
        " --out-figure {output.figure} > {log} 2>&1"
