# Layer sweep (`snakemake --cores 8 layers`, not in the default target): activations at every layer of
# layers.layers (the run's own layer reuses the run's activations), layers.kinds trained there for every seed of
# layers.seeds with the run's budget and the LRs chosen at the run's layer, evaluated on test; one table and
# figure of every comparison's gain per layer.


rule layer_extract:
    input:
        documents=LAYOUT.corpus_documents,
        lm=LM_DIR,
        train=lambda wc: [] if wc.split == "train" else LAYERS.activations(wc.layer).split("train"),
    output:
        directory(LAYERS.activations("{layer}").split("{split}")),
    log:
        f"{LOGS}/layers/extract_layer~{{layer}}_{{split}}.log",
    benchmark:
        f"{BENCH}/layers/extract_layer~{{layer}}_{{split}}.tsv"
    wildcard_constraints:
        layer=r"\d+",
        split="|".join(SPLITS),
    conda:
        FEATINT_ENV
    threads: 8
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=6000,
        runtime=120,
    params:
        config=lambda wc: layer_config("extract", wc.layer),
        train=lambda wc, input: f"--train {input.train}" if input.train else "",
    shell:
        "python -m featint extract --config-json {params.config:q} --threads {threads}"
        " --split {wildcards.split} --documents {input.documents} --lm {input.lm} {params.train} --out {output}"
        " > {log} 2>&1"


rule layer_normaliser:
    input:
        train=LAYERS.activations("{layer}").split("train"),
    output:
        LAYERS.activations("{layer}").normaliser,
    log:
        f"{LOGS}/layers/normaliser_layer~{{layer}}.log",
    wildcard_constraints:
        layer=r"\d+",
    conda:
        FEATINT_ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        config=stage_config("normaliser"),
    shell:
        "python -m featint normaliser --config-json {params.config:q} --threads {threads}"
        " --train {input.train} --out {output} > {log} 2>&1"


rule layer_models:
    input:
        activations=lambda wc: [layer_acts(wc.layer).split(split) for split in SPLITS]
        + [layer_acts(wc.layer).normaliser],
        lr_tables=layer_lr_tables,
    output:
        reconstruction=LAYERS.layer("{layer}", "{seed}").reconstruction,
        documents=LAYERS.layer("{layer}", "{seed}").documents,
        parameters=LAYERS.layer("{layer}", "{seed}").parameters,
    log:
        f"{LOGS}/layers/models_layer~{{layer}}_seed~{{seed}}.log",
    benchmark:
        f"{BENCH}/layers/models_layer~{{layer}}_seed~{{seed}}.tsv"
    wildcard_constraints:
        layer=r"\d+",
        seed=r"\d+",
    conda:
        FEATINT_ENV
    threads: 8
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=8000,
        runtime=480,
    params:
        run=RUN,
        config=lambda wc: layer_config("layer-models", wc.layer),
        activations=lambda wc: str(layer_acts(wc.layer)),
        lr=lambda wc, input: f"--lr-tables {' '.join(input.lr_tables)}" if input.lr_tables else "",
        models=parent_dir(1, "reconstruction"),  # the layer-and-seed folder: its models beside its tables
    shell:
        "python -m featint layer-models --config-json {params.config:q} --threads {threads}"
        " --layer {wildcards.layer} --seed {wildcards.seed} --activations {params.activations} {params.lr}"
        " --run {params.run} --models {params.models} --out-reconstruction {output.reconstruction}"
        " --out-documents {output.documents} --out-parameters {output.parameters} > {log} 2>&1"


rule gather_layers:
    input:
        reconstruction=[LAYERS.layer(layer, seed).reconstruction for layer, seed in LAYER_INSTANCES],
        documents=[LAYERS.layer(layer, seed).documents for layer, seed in LAYER_INSTANCES],
        parameters=[LAYERS.layer(layer, seed).parameters for layer, seed in LAYER_INSTANCES],
    output:
        comparisons=LAYERS.comparisons,
        fvu=LAYERS.fvu,
        figure=report(LAYERS.figure("layers"), caption="../report/layers.rst", category="Layers"),
    log:
        f"{LOGS}/layers/gather.log",
    conda:
        FEATINT_ENV
    threads: 1
    params:
        config=stage_config("gather-layers"),
    shell:
        "python -m featint gather-layers --config-json {params.config:q} --reconstruction {input.reconstruction}"
        " --documents {input.documents} --parameters {input.parameters} --out-comparisons {output.comparisons}"
        " --out-fvu {output.fvu} --out-figure {output.figure} > {log} 2>&1"


rule layers:
    input:
        rules.gather_layers.output,
