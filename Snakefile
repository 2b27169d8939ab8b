# featint: reproduce and check "Feature Integration Spaces" (Claflin, arXiv 2507.00269).
#   snakemake --cores 8                       # the embedded default (config/config.yaml)
#   snakemake --cores 8 --configfile config/tiny.yaml
#   snakemake --cores 8 --configfile config/synthetic.yaml   # the planted-interaction positive control
# Rules are thin: each calls one `python -m featint <stage>` command; all logic lives in src/featint/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/behaviour.smk"
include: "workflow/rules/interventions.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/ablations.smk"
include: "workflow/rules/synthetic.smk"


rule all:
    input:
        # a planted-interaction run (config/synthetic.yaml) generates its activations: no LM stage runs
        synthetic_targets()
        if SYNTHETIC
        else [
            activation_targets(),
            training_targets(),
            geometry_targets(),
            behaviour_targets(),
            intervention_targets(),
            report_targets(),
        ],
    default_target: True
