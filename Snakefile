# featint: reproduce and check "Feature Integration Spaces" (Claflin, arXiv 2507.00269).
#   snakemake --cores 8                       # the embedded default (config/config.yaml)
#   snakemake --cores 8 --configfile config/tiny.yaml
#   snakemake --cores 8 --configfile config/synthetic.yaml   # the planted-interaction positive control
# The workflow itself is workflow/Snakefile (the catalog's layout); rules are thin, logic lives in src/featint/.


include: "workflow/Snakefile"


# Snakemake takes the default target from the Snakefile it was given; the included workflow's `all` it is.
rule default:
    default_target: True
    input:
        rules.all.input,
