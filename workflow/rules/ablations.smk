# Ablation sweep: one instance per row of config/ablations.tsv (a Paramspace; each instance has its own folder
# named by its parameters), trained on the run's activations and evaluated on the test split; one gathered
# table and figure. Not in the default target: `snakemake --cores 8 ablations`.


rule ablation:
    input:
        **ACTIVATION_FILES,
        lr_tables=ablation_lr_tables,
    output:
        LAYOUT.ablation(ABLATIONS.wildcard_pattern).reconstruction,
    log:
        f"{LOGS}/ablations/{ABLATIONS.wildcard_pattern}.log",
    benchmark:
        f"{BENCH}/ablations/{ABLATIONS.wildcard_pattern}.tsv"
    conda:
        FEATINT_ENV
    threads: 8
    resources:
        gpu=GPU_PER_JOB,  # 1 where jobs use a GPU: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=8000,
        runtime=240,
    params:
        acts=activations_dir,
        run=RUN,
        config=stage_config("ablation"),
        instance=lambda wc: json.dumps(ABLATIONS.instance(wc), default=str),
        lr=lambda wc, input: f"--lr-tables {' '.join(input.lr_tables)}" if input.lr_tables else "",
        models=parent_dir(1),  # the instance folder: its models beside its table
    shell:
        "python -m featint ablation --config-json {params.config:q} --threads {threads}"
        " --instance {params.instance:q} --activations {params.acts} {params.lr} --run {params.run}"
        " --models {params.models} --out-table {output} > {log} 2>&1"


rule gather_ablations:
    input:
        [LAYOUT.ablation(instance).reconstruction for instance in ABLATIONS.instance_patterns],
    output:
        summary=LAYOUT.ablations.summary,
        figure=report(LAYOUT.ablations.figure("ablations"), caption="../report/ablations.rst", category="Ablations"),
    log:
        f"{LOGS}/gather_ablations.log",
    conda:
        FEATINT_ENV
    threads: 1
    shell:
        "python -m featint gather-ablations --tables {input} --out-summary {output.summary}"
        " --out-figure {output.figure} > {log} 2>&1"


rule ablations:
    input:
        rules.gather_ablations.output,
