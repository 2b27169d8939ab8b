# Shared helpers for every rule: config validation at DAG start, paths, per-stage config for params, and each
# stage's targets and input functions (the rules files hold rules only).
import json
import os

from snakemake.utils import Paramspace, validate

import featint.ablations as featint_ablations
import featint.claims as featint_claims
import featint.config
import featint.interventions as featint_interventions
import featint.kinds as featint_kinds
import featint.layout as featint_layout
import featint.lm
import featint.saelens
import featint.runtime
import featint.training as featint_training
from featint.cli import STAGE_SECTIONS
from featint.config import SPLITS

# Rejects unknown keys / wrong types before any job runs (featint's message names the key), then lets
# Snakemake's validator fill the schema defaults into `config` itself.
SETTINGS = featint.config.Settings.from_dict(config, source="workflow config")
validate(config, featint.config.schema_path())

# Conda env for `--sdm conda` (ignored otherwise); rules run `python -m featint` from it.
FEATINT_ENV = "../../envs/featint.yaml"

RUN = SETTINGS.run
RESULTS = f"results/{RUN}"
#: every artefact of the run (featint.layout: the one place that names them)
LAYOUT = featint_layout.RunLayout(RESULTS)
LOGS = f"logs/{RUN}"
BENCH = f"benchmarks/results/{RUN}"
LM_DIR = str(featint.lm.model_dir(SETTINGS.model))

# `model.device: cuda` needs a GPU where the jobs run: checked now for local runs (a cluster's jobs run on its
# nodes, which the submitting host cannot see).
if workflow.local_exec:
    featint.runtime.check_device(SETTINGS.model.device)

#: The `gpu` resource of every job that runs the LM or a model; 1 where its jobs take a GPU, so the default
#: profile's `resources: gpu=1` (or `--resources gpu=G` on a multi-GPU node) runs one such job per GPU; 0 where
#: they run on the CPU, so CPU jobs still run side by side. A cluster profile sets its own (`set-resources`).
GPU_PER_JOB = int(
    SETTINGS.model.device == "cuda" or (SETTINGS.model.device == "auto" and featint.runtime.gpu_available())
)

# A local model directory must exist now, not halfway through the DAG; a prepared one is checked by its rule.
if not featint.lm.needs_preparation(SETTINGS.model):
    featint.lm.check_model_dir(LM_DIR)
    featint.lm.HookPoint.from_settings(SETTINGS.hook).check(featint.lm.read_n_layers(LM_DIR), where=LM_DIR)


def cpu_share():
    """Share of a job's `threads` that become torch threads. Locally, `--cores` may exceed the machine's CPUs
    (`--cores 8` on 2 cores): Snakemake then runs jobs side by side as if there were 8 cores, so each job
    takes threads x CPUs / cores torch threads instead of oversubscribing the CPUs. A cluster job owns its
    allocation (share 1). Handed to the jobs in the environment (FEATINT_CPU_SHARE, the default of every stage's
    --cpu-share), not as a param or on the command line, so changing --cores never reruns a job."""
    try:
        declared = workflow.cores
    except Exception:  # no --cores given (e.g. a cluster executor with --jobs)
        return 1.0
    local = featint.runtime.available_cpus()
    if workflow.local_exec and declared and declared > local:
        return round(local / declared, 4)
    return 1.0


CPU_SHARE = cpu_share()
os.environ[featint.runtime.CPU_SHARE_VARIABLE] = str(CPU_SHARE)


def stage_config(stage):
    """JSON of the config sections `stage` reads, for `params`: a rule reruns when these change."""
    sections = STAGE_SECTIONS[stage]
    return json.dumps({key: config[key] for key in sections if key in config}, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# activations (workflow/rules/activations.smk)


def activation_targets():
    acts = LAYOUT.activations
    return [acts.normaliser, acts.summary, acts.norm_by_position, acts.norm_by_position_figure]


# ---------------------------------------------------------------------------------------------------------
# training (workflow/rules/training.smk)

#: the kinds trained on every seed (a subset of featint.kinds.KINDS)
CONFIGURED_KINDS = config["models"]
SEEDS = config["training"]["seeds"]
#: every (kind, seed) trained: `models` on every seed, `single_seed_models` on the first
MODEL_INSTANCES = SETTINGS.model_instances()
#: the kinds whose LR is chosen on the validation split (kinds sharing a choice point at their source)
#: the standard SAE is imported (sae.source: saelens or sparsify), not trained: no LR choice, no train job for it
SAE_IMPORTED = config["sae"]["source"] != "featint"
if SAE_IMPORTED and "standard" in SETTINGS.convergence.models:
    raise featint.config.ConfigError(
        f"workflow config: sae.source is {config['sae']['source']!r}: the imported standard SAE is not retrained, so "
        "convergence.models (default [standard, joint]) must not list 'standard'; set it, e.g. [joint]."
    )
#: the imported SAE's local folder (an ``hf://`` path resolved in the local Hugging Face cache, offline)
SAE_FOLDER = str(featint.saelens.local_sae_folder(config["sae"]["path"])) if SAE_IMPORTED else None
#: the kinds the train rule trains
TRAINED_KINDS = [kind for kind in featint_kinds.MODEL_KINDS if not (SAE_IMPORTED and kind == "standard")]
LR_KINDS = sorted({featint_kinds.lr_selection_kind(kind) for kind, _ in MODEL_INSTANCES} & set(TRAINED_KINDS))
CONVERGENCE = config["convergence"]
ACTS = LAYOUT.activations
#: a rule's activation inputs (`input: **ACTIVATION_FILES`): the three splits and the normaliser
ACTIVATION_FILES = {**{split: ACTS.split(split) for split in SPLITS}, "normaliser": ACTS.normaliser}


def activations_dir(wildcards, input):
    """The activations directory of a rule's inputs (params derive paths from inputs, never hard-code them)."""
    return os.path.dirname(input.normaliser)


def claims_options(wildcards, input):
    """A params function: `--<table> <file>` for every claims input the rule declares (an optional one declared
    as an empty list is left out), so the claims read exactly the files their rule hands them."""
    options = []
    for name in featint_claims.TABLES:
        paths = getattr(input, name, [])
        for path in [paths] if isinstance(paths, str) else paths:
            options.append(f"--{name.replace('_', '-')} {path}")
    return " ".join(options)


def parent_dir(levels=1, name=None, of="output"):
    """A params function: the directory ``levels`` above the rule's first (or ``name``d) input or output."""

    def directory(wildcards, input, output):
        files = input if of == "input" else output
        path = files[name] if name is not None else files[0]
        if isinstance(path, list):
            path = path[0]
        for _ in range(levels):
            path = os.path.dirname(path)
        return path

    return directory


#: a model's folder with its wildcards (`{group}` is models, convergence or budget_x<factor>), and the run's own
MODEL = LAYOUT.model("{kind}", "{seed}", "{group}")
RUN_MODEL = LAYOUT.model("{kind}", "{seed}")


def model_path(name, group="models"):
    """`(kind, seed) -> ` the file `name` (a featint.layout.ModelFolder field) of that model, for instance_paths."""
    return lambda kind, seed: getattr(LAYOUT.model(kind, seed, group), name)


def instance_paths(path, instances=None):
    """`path(kind, seed)` for every trained model instance (or every one of `instances`)."""
    return [path(kind, seed) for kind, seed in (instances or MODEL_INSTANCES)]


def convergence_instances():
    return [(kind, SEEDS[0]) for kind in CONVERGENCE["models"]]


def training_targets():
    metrics = LAYOUT.metrics
    targets = [metrics.reconstruction, metrics.summary, metrics.parameters, metrics.figure_path]
    if config["training"]["lr"] is None:
        targets += [LAYOUT.lr_selection().summary, LAYOUT.lr_selection().figure_path]
    if CONVERGENCE["models"]:
        targets += [LAYOUT.convergence.summary, LAYOUT.convergence.figure("convergence")]
    exported = [(kind, seed) for kind, seed in MODEL_INSTANCES if kind in featint_kinds.SAE_ONLY]
    targets += instance_paths(lambda kind, seed: LAYOUT.model(kind, seed).saelens.config, exported)
    return targets


def lr_table(wildcards):
    if config["training"]["lr"] is not None:
        return []
    chosen_at = featint_kinds.lr_selection_kind(wildcards.kind)
    if wildcards.group.startswith("budget_x") and BUDGET.select_lr:
        return LAYOUT.lr_selection(wildcards.group).kind(chosen_at)  # chosen again at that budget
    return LAYOUT.lr_selection().kind(chosen_at)


# ---------------------------------------------------------------------------------------------------------
# the budget target (workflow/rules/budget.smk)

BUDGET = SETTINGS.budget
#: results groups: the default run's models, the convergence check's, and one per budget factor above 1
GROUP_PATTERN = "models|convergence|budget_x[0-9.]+"


def group_budget_factor(group):
    return featint.config.group_budget_factor(group, CONVERGENCE["budget_factor"])


def budget_instances():
    """(kind, results group, seed) of every model the budget target evaluates."""
    return [(kind, featint.config.budget_group(factor), seed) for kind, factor, seed in BUDGET.instances(SEEDS)]


def budget_files(name):
    """The file `name` (a featint.layout.ModelFolder field) of every model the budget target evaluates."""
    return [getattr(LAYOUT.model(kind, seed, group), name) for kind, group, seed in budget_instances()]


def standard_weights(wildcards):
    if wildcards.kind in featint_kinds.FROM_STANDARD:
        seed = getattr(wildcards, "seed", SEEDS[0])
        return LAYOUT.model("standard", seed).weights
    return []


def standard_codes(wildcards):
    if config["training"]["cache_codes"] and wildcards.kind in featint_kinds.FROM_STANDARD:
        seed = getattr(wildcards, "seed", SEEDS[0])
        return str(LAYOUT.codes(seed))
    return []


# ---------------------------------------------------------------------------------------------------------
# geometry (workflow/rules/geometry.smk)

GEOMETRY_FIGURES = featint_layout.GEOMETRY_FIGURES


#: geometry's measures (decoder norms, NFM row norms and contributions) read SAE-only and NFM models; the rivals'
#: frozen decoders are the standard SAE's, and their heads have no V or embedding
GEOMETRY_INSTANCES = [(kind, seed) for kind, seed in MODEL_INSTANCES if featint_kinds.KINDS[kind].nfm_geometry]


def geometry_init_kind(kind):
    return "standard" if kind in featint_kinds.FROM_STANDARD else kind


def geometry_targets():
    geometry = LAYOUT.geometry
    return [geometry.summary, geometry.verdicts] + [geometry.figure(name) for name in GEOMETRY_FIGURES]


# ---------------------------------------------------------------------------------------------------------
# behaviour (workflow/rules/behaviour.smk)

BEHAVIOUR_FIGURES = featint_layout.BEHAVIOUR_FIGURES


def behaviour_targets():
    sae_only = [(kind, seed) for kind, seed in MODEL_INSTANCES if kind in featint_kinds.SAE_ONLY]
    return (
        [LAYOUT.behaviour.summary]
        + [LAYOUT.behaviour.figure(name) for name in BEHAVIOUR_FIGURES]
        + instance_paths(lambda kind, seed: LAYOUT.model(kind, seed).saebench_core, sae_only)
    )


# ---------------------------------------------------------------------------------------------------------
# interventions (workflow/rules/interventions.smk)

INTERVENTION_MODELS = config["interventions"]["models"]  # all in `models` (checked at validation)
INTERVENTION_FIGURES = featint_layout.INTERVENTION_FIGURES
INTERVENTION_TABLES = featint_interventions.TABLES
#: the secondary SAE of a model's interventions, with its wildcards
SECONDARY = LAYOUT.interventions_of("{kind}", "{seed}").secondary


def intervention_targets():
    if not INTERVENTION_MODELS:
        return []
    return [LAYOUT.interventions.summary] + [LAYOUT.interventions.figure(name) for name in INTERVENTION_FIGURES]


# ---------------------------------------------------------------------------------------------------------
# report (workflow/rules/report.smk)


def report_targets():
    folder = LAYOUT.report
    return [folder.claims, folder.claims_markdown, folder.kinds, folder.kinds_figure, folder.config, folder.versions]


# ---------------------------------------------------------------------------------------------------------
# ablations (workflow/rules/ablations.smk)

ABLATIONS = Paramspace(featint_ablations.read_table(config["ablations"]["table"]), single_wildcard="instance")


def ablation_lr_tables(wildcards):
    """LR-selection tables of the instance's kind (and of standard, which kinds on a standard SAE train first)."""
    if config["training"]["lr"] is not None:
        return []
    kind = ABLATIONS.instance(wildcards)["kind"]
    kinds = {featint_kinds.lr_selection_kind(kind)}
    if kind in featint_kinds.FROM_STANDARD:
        kinds.add("standard")
    return [LAYOUT.lr_selection().kind(k) for k in sorted(kinds)]


# ---------------------------------------------------------------------------------------------------------
# layers (workflow/rules/layers.smk)

LAYER_SWEEP = config["layers"]
LAYERS = LAYOUT.layers
#: (layer, seed) of every layer-models job
LAYER_INSTANCES = [(layer, seed) for layer in LAYER_SWEEP["layers"] for seed in LAYER_SWEEP["seeds"]]
# (a layer the model lacks stops its extraction job with the hook's message)


def layer_acts(layer):
    """A layer's activations directory: the run's own when the layer is the run's hook layer."""
    if int(layer) == config["hook"]["layer"]:
        return ACTS
    return LAYERS.activations(layer)


def layer_config(stage, layer):
    """The stage's config sections with hook.layer set to ``layer`` (JSON for params)."""
    sections = json.loads(stage_config(stage))
    if "hook" in STAGE_SECTIONS[stage]:
        sections["hook"] = {**config["hook"], "layer": int(layer)}
    return json.dumps(sections, sort_keys=True)


def layer_lr_tables(wildcards):
    if config["training"]["lr"] is not None:
        return []
    kinds = {featint_kinds.lr_selection_kind(kind) for kind in LAYER_SWEEP["kinds"]}
    return [LAYOUT.lr_selection().kind(kind) for kind in sorted(kinds)]


# ---------------------------------------------------------------------------------------------------------
# synthetic (workflow/rules/synthetic.smk)

SYNTHETIC = SETTINGS.synthetic


#: one planted setting's data, models and pair test, with their wildcards
SETTING = LAYOUT.synthetic_setting("{variant}", "{strength}")
SYNTHETIC_MODELS = LAYOUT.synthetic_models("{variant}", "{strength}", "{seed}")
SYNTHETIC_INTEGRATION = LAYOUT.synthetic_integration("{variant}", "{strength}", "{seed}")


def synthetic_settings():
    """(variant, strength) of every setting, strengths written as in the folder names (none without a
    synthetic section)."""
    if not SYNTHETIC:
        return []
    return [(variant.name, f"{strength:g}") for variant in SYNTHETIC.variants for strength in SYNTHETIC.strengths]


def synthetic_targets():
    targets = []
    if SYNTHETIC and "joint" in SYNTHETIC.kinds:  # the power curve (the config requires its references too)
        summary = LAYOUT.synthetic_summary
        targets += [summary.power, summary.figure("power"), summary.figure("identification")]
    if SYNTHETIC and "standard" in SYNTHETIC.kinds:  # the pair product test reads the standard SAE
        summary = LAYOUT.synthetic_summary
        targets += [summary.integration_power, summary.figure("integration_power")]
    return targets


# ---------------------------------------------------------------------------------------------------------
# integration: the pair product test (workflow/rules/integration.smk)

INTEGRATION_INSTANCES = [(kind, seed) for kind, seed in MODEL_INSTANCES if kind in config["integration"]["models"]]


def integration_targets():
    if not INTEGRATION_INSTANCES:
        return []
    integration = LAYOUT.integration
    return [integration.summary, integration.replication, integration.contexts] + [
        integration.figure(name) for name in featint_layout.INTEGRATION_FIGURES
    ]
