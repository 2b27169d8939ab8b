# Documents from the corpus source, markup stripped, each assigned to train / validation / test by hash.


rule corpus:
    output:
        LAYOUT.corpus_documents,
    log:
        f"{LOGS}/corpus.log",
    benchmark:
        f"{BENCH}/corpus.tsv"
    conda:
        FEATINT_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        config=stage_config("corpus"),
    shell:
        "python -m featint corpus --config-json {params.config:q} --out {output} > {log} 2>&1"
