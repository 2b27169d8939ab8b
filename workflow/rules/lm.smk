# The language model, prepared once as a plain Hugging Face directory (embedded GGUF dequantized, or a hub
# download); shared by every run that uses the same model.


rule prepare_lm:
    output:
        directory(f"resources/lm/{featint.lm.model_key(SETTINGS.model)}"),
    log:
        f"{LOGS}/prepare_lm.log",
    benchmark:
        f"{BENCH}/prepare_lm.tsv"
    conda:
        FEATINT_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=stage_config("prepare-lm"),
    shell:
        "python -m featint prepare-lm --config-json {params.config:q} --threads {threads}"
        " --out {output} > {log} 2>&1"
