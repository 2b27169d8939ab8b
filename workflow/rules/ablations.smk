# Ablation sweep: one instance per row of config/ablations.tsv (a Paramspace; each instance has its own folder
# named by its parameters), trained on the run's activations and evaluated on the test split; one gathered
# table and figure. Not in the default target: `snakemake --cores 8 ablations`.
import featint.ablations as featint_ablations
from snakemake.utils import Paramspace

ABLATIONS = Paramspace(featint_ablations.read_table(config["ablations"]["table"]), single_wildcard="instance")


def ablation_lr_tables(wildcards):
    """LR-selection tables of the instance's kind (and of standard, which kinds on a standard SAE train first)."""
    if config["training"]["lr"] is not None:
        return []
    kind = ABLATIONS.instance(wildcards)["kind"]
    kinds = {featint_kinds.lr_selection_kind(kind)}
    if kind in featint_kinds.FROM_STANDARD:
        kinds.add("standard")
    return [f"{RESULTS}/lr_selection/{k}.parquet" for k in sorted(kinds)]


rule ablation:
    input:
        ACTIVATION_FILES,
        lr_tables=ablation_lr_tables,
    output:
        f"{RESULTS}/ablations/{ABLATIONS.wildcard_pattern}/reconstruction.parquet",
    params:
        config=stage_config("ablation"),
        instance=lambda wc: json.dumps(ABLATIONS.instance(wc), default=str),
        lr=lambda wc, input: f"--lr-tables {' '.join(input.lr_tables)}" if input.lr_tables else "",
        out=lambda wc: f"{RESULTS}/ablations/{wc.instance}",
    log:
        f"{LOGS}/ablations/{ABLATIONS.wildcard_pattern}.log",
    benchmark:
        f"{BENCH}/ablations/{ABLATIONS.wildcard_pattern}.tsv"
    conda:
        FEATINT_ENV
    threads: 8
    resources:
        gpu=1,  # one GPU each: `--resources gpu=G` runs G at once, each on its own device
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m featint ablation --config-json {params.config:q} --threads {threads} --cpu-share {CPU_SHARE}"
        " --instance {params.instance:q} --activations {ACTS} {params.lr} --run {RUN} --out {params.out}"
        " > {log} 2>&1"


rule gather_ablations:
    input:
        expand(f"{RESULTS}/ablations/{{instance}}/reconstruction.parquet", instance=ABLATIONS.instance_patterns),
    output:
        summary=f"{RESULTS}/ablations/summary.parquet",
        figure=report(f"{RESULTS}/ablations/figures/ablations.png", caption="../report/ablations.rst",
                      category="Ablations"),
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
