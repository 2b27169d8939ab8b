# Residual-stream activations at the hook, per split, in checksummed shards; the normaliser fitted on train;
# a summary table and the norm-by-position figure.


rule extract:
    input:
        documents=LAYOUT.corpus_documents,
        lm=LM_DIR,
        # validation/test reuse the train split's outlier threshold (median train norm x factor)
        train=lambda wc: [] if wc.split == "train" else ACTS.split("train"),
    output:
        directory(ACTS.split("{split}")),
    log:
        f"{LOGS}/extract_{{split}}.log",
    benchmark:
        f"{BENCH}/extract_{{split}}.tsv"
    wildcard_constraints:
        split="|".join(SPLITS),
    conda:
        FEATINT_ENV
    threads: 8
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=6000,
        runtime=120,
    params:
        config=stage_config("extract"),
        train=lambda wc, input: f"--train {input.train}" if input.train else "",
    shell:
        "python -m featint extract --config-json {params.config:q} --threads {threads} --split {wildcards.split}"
        " --documents {input.documents} --lm {input.lm} {params.train} --out {output} > {log} 2>&1"


rule fit_normaliser:
    input:
        train=ACTS.split("train"),
    output:
        ACTS.normaliser,
    log:
        f"{LOGS}/fit_normaliser.log",
    benchmark:
        f"{BENCH}/fit_normaliser.tsv"
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


rule summarise_activations:
    input:
        splits=[ACTS.split(split) for split in SPLITS],
        normaliser=ACTS.normaliser,
    output:
        table=ACTS.summary,
        positions=ACTS.norm_by_position,
        figure=report(
            ACTS.norm_by_position_figure,
            caption="../report/norm_by_position.rst",
            category="Activations",
        ),
    log:
        f"{LOGS}/summarise_activations.log",
    benchmark:
        f"{BENCH}/summarise_activations.tsv"
    conda:
        FEATINT_ENV
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        activations=parent_dir(1, "normaliser", of="input"),
    shell:
        "python -m featint summarise --threads {threads} --activations {params.activations}"
        " --normaliser {input.normaliser} --out-table {output.table} --out-positions {output.positions}"
        " --out-figure {output.figure} > {log} 2>&1"
