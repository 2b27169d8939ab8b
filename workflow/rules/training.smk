# Training: learning rates chosen per kind on the validation split (unless training.lr is set), then every model
# kind for every seed on the same activations, seed and token budget; reconstruction metrics on the test split;
# the convergence check retrains some kinds at a multiple of the budget.


rule cache_codes:
    input:
        **ACTIVATION_FILES,
        weights=LAYOUT.model("standard", "{seed}").weights,
    output:
        directory(str(LAYOUT.codes("{seed}"))),
    log:
        f"{LOGS}/cache_codes_standard_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/cache_codes_standard_seed~{{seed}}.tsv"
    wildcard_constraints:
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
        config=stage_config("cache-codes"),
    shell:
        "python -m featint cache-codes --config-json {params.config:q} --threads {threads}"
        " --weights {input.weights} --activations {params.acts} --out {output} > {log} 2>&1"


rule export_saelens:
    input:
        weights=RUN_MODEL.weights,
        normaliser=ACTS.normaliser,
    output:
        config=RUN_MODEL.saelens.config,
        weights=RUN_MODEL.saelens.weights,
    log:
        f"{LOGS}/export_saelens_{{kind}}_seed~{{seed}}.log",
    wildcard_constraints:
        kind="|".join(featint_kinds.SAE_ONLY),
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=stage_config("export-saelens"),
        out=parent_dir(1, "config"),
    shell:
        "python -m featint export-saelens --config-json {params.config:q} --weights {input.weights}"
        " --normaliser {input.normaliser} --out {params.out} > {log} 2>&1"


rule select_lr:
    input:
        **ACTIVATION_FILES,
        standard=standard_weights,
        codes=standard_codes,
    output:
        LAYOUT.lr_selection().kind("{kind}"),
    log:
        f"{LOGS}/select_lr_{{kind}}.log",
    benchmark:
        f"{BENCH}/select_lr_{{kind}}.tsv"
    wildcard_constraints:
        kind="|".join(featint_kinds.MODEL_KINDS),
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=8000,
        runtime=240,
    params:
        acts=activations_dir,
        config=stage_config("select-lr"),
        standard=lambda wc, input: f"--standard {input.standard}" if input.standard else "",
        codes=lambda wc, input: f"--codes {input.codes}" if input.codes else "",
    shell:
        "python -m featint select-lr --config-json {params.config:q} --threads {threads} --kind {wildcards.kind}"
        " --activations {params.acts} {params.standard} {params.codes} --out {output} > {log} 2>&1"


rule gather_lr_selection:
    input:
        [LAYOUT.lr_selection().kind(kind) for kind in LR_KINDS],
    output:
        table=LAYOUT.lr_selection().summary,
        figure=report(
            LAYOUT.lr_selection().figure_path,
            caption="../report/lr_selection.rst",
            category="Training",
        ),
    log:
        f"{LOGS}/gather_lr_selection.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m featint gather-lr-selection --tables {input} --out-table {output.table}"
        " --out-figure {output.figure} > {log} 2>&1"


rule train:
    input:
        **ACTIVATION_FILES,
        lr_table=lr_table,
        standard=standard_weights,
        codes=standard_codes,
    output:
        weights=MODEL.weights,
        init=MODEL.init,
        log=MODEL.train_log,
        parameters=MODEL.parameters,
        figure=report(
            MODEL.loss_figure,
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{group}: {kind}",
        ),
    log:
        f"{LOGS}/train_{{group}}_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/train_{{group}}_{{kind}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        group=GROUP_PATTERN,
        kind="|".join(TRAINED_KINDS),
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 4
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=8000,
        runtime=240,
    params:
        acts=activations_dir,
        config=stage_config("train"),
        lr_table=lambda wc, input: f"--lr-table {input.lr_table}" if input.lr_table else "",
        standard=lambda wc, input: f"--standard {input.standard}" if input.standard else "",
        codes=lambda wc, input: f"--codes {input.codes}" if input.codes else "",
        # the convergence check and the budget target train the same model at a multiple of the budget
        budget=lambda wc: group_budget_factor(wc.group),
        checkpoint=MODEL.checkpoint,
    shell:
        "python -m featint train --config-json {params.config:q} --threads {threads} --kind {wildcards.kind}"
        " --seed {wildcards.seed} --activations {params.acts} {params.lr_table} {params.standard} {params.codes}"
        " --budget-factor {params.budget} --out-weights {output.weights} --out-init {output.init}"
        " --out-log {output.log} --out-parameters {output.parameters} --out-figure {output.figure}"
        " --checkpoint {params.checkpoint} > {log} 2>&1"


if SAE_IMPORTED:

    rule import_sae:
        input:
            **ACTIVATION_FILES,
            sae=SAE_FOLDER,
        output:
            weights=LAYOUT.model("standard", "{seed}").weights,
            init=LAYOUT.model("standard", "{seed}").init,
            parameters=LAYOUT.model("standard", "{seed}").parameters,
        log:
            f"{LOGS}/import_sae_seed~{{seed}}.log",
        wildcard_constraints:
            seed=r"\d+",
        conda:
            FEATINT_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
        params:
            acts=activations_dir,
            config=stage_config("import-sae"),
            out=parent_dir(1, "weights"),
        shell:
            "python -m featint import-sae --config-json {params.config:q} --activations {params.acts}"
            " --seed {wildcards.seed} --out {params.out} > {log} 2>&1"


rule evaluate_reconstruction:
    input:
        **ACTIVATION_FILES,
        weights=MODEL.weights,
    output:
        table=MODEL.reconstruction,
        documents=MODEL.reconstruction_documents,
    log:
        f"{LOGS}/evaluate_{{group}}_{{kind}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate_{{group}}_{{kind}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        group=GROUP_PATTERN,
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
        config=stage_config("evaluate"),
    shell:
        "python -m featint evaluate --config-json {params.config:q} --threads {threads} --weights {input.weights}"
        " --activations {params.acts}"
        " --run {params.run} --out {output.table} --out-documents {output.documents} > {log} 2>&1"


rule gather_reconstruction:
    input:
        tables=instance_paths(model_path("reconstruction")),
        documents=instance_paths(model_path("reconstruction_documents")),
        parameters=instance_paths(model_path("parameters")),
    output:
        metrics=LAYOUT.metrics.reconstruction,
        summary=LAYOUT.metrics.summary,
        parameters=LAYOUT.metrics.parameters,
        comparisons=LAYOUT.metrics.comparisons,
        figure=report(
            LAYOUT.metrics.figure_path,
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
    params:
        config=stage_config("gather-metrics"),
    shell:
        "python -m featint gather-metrics --config-json {params.config:q} --tables {input.tables}"
        " --documents {input.documents} --parameters {input.parameters}"
        " --out-metrics {output.metrics} --out-summary {output.summary} --out-parameters {output.parameters}"
        " --out-comparisons {output.comparisons}"
        " --out-figure {output.figure} > {log} 2>&1"


rule convergence:
    input:
        default=instance_paths(model_path("reconstruction")),
        longer=instance_paths(model_path("reconstruction", "convergence"), convergence_instances()),
        logs=instance_paths(model_path("train_log"), convergence_instances())
        + instance_paths(model_path("train_log", "convergence"), convergence_instances()),
    output:
        summary=LAYOUT.convergence.summary,
        figure=report(
            LAYOUT.convergence.figure("convergence"),
            caption="../report/convergence.rst",
            category="Training",
        ),
    log:
        f"{LOGS}/convergence.log",
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=stage_config("convergence"),
    shell:
        "python -m featint convergence --config-json {params.config:q} --default {input.default}"
        " --longer {input.longer} --logs {input.logs} --out {output.summary} --out-figure {output.figure}"
        " > {log} 2>&1"
