"""Command line: ``python -m featint <stage> ...``; every Snakemake rule calls one of these.

Each stage is declared once, by :func:`stage` on its function: its name, its help line, the config sections it
reads and its own arguments. The parser (:func:`build_parser`) and the sections each rule passes
(:data:`STAGE_SECTIONS`, read by ``workflow/rules/common.smk``) are produced from those declarations, and the
function receives the settings restricted to its sections (:meth:`~featint.config.Settings.restricted`): reading
an undeclared section stops the stage, because its rule would not pass that section and it would silently take
its default.

A stage with sections takes the configuration either as a YAML file (``--config config/config.yaml``, for users)
or as a JSON string (``--config-json``, what rules pass: only the declared sections, so Snakemake reruns a rule
when, and only when, settings it depends on change). Errors of the :class:`~featint.errors.FeatintError` family
print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featint.config import SPLITS, Settings, load_settings
from featint.errors import ConfigError, FeatintError
from featint.layout import BEHAVIOUR_FIGURES, GEOMETRY_FIGURES, BehaviourFigures, GeometryFigures
from featint.runtime import (
    CPU_SHARE_VARIABLE,
    configure_logging,
    cpu_share_from_environment,
    resolve_device,
    seed_everything,
    set_threads,
)
from featint.tables import INTERVENTION_TABLES

log = logging.getLogger("featint")

#: Packages whose versions the run report lists.
REPORTED_PACKAGES = ("featint", "torch", "transformer-lens", "transformers", "numpy", "pandas", "pyarrow", "scipy",
                     "statsmodels", "seaborn", "matplotlib", "snakemake", "safetensors", "gguf")

#: ``sections`` of a stage that reads the whole configuration (it is given a config file by the user).
EVERY_SECTION = ("*",)


@dataclass(frozen=True)
class Arg:
    """One command-line argument of a stage, as ``argparse.add_argument`` takes it."""

    flags: tuple[str, ...]  #: e.g. ("--out",)
    options: dict[str, Any] = field(default_factory=dict)  #: add_argument's keywords (required, type, help, ...)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Stage:
    """A command of ``python -m featint``, declared in one place."""

    name: str  #: the command (a rule runs ``python -m featint <name>``)
    run: Callable[[argparse.Namespace, Settings], None]  #: the function, given its arguments and sections
    help: str  #: the one-line description shown by ``--help``
    sections: tuple[str, ...] | None  #: config sections it reads; None: it takes no config
    args: tuple[Arg, ...]  #: its own arguments (besides --config/--config-json, --threads and --cpu-share)


#: Every stage by name, in declaration order (the order of ``--help``).
STAGES: dict[str, Stage] = {}


def stage(name: str, help: str, sections: tuple[str, ...] | None, *args: Arg
          ) -> Callable[[Callable[[argparse.Namespace, Settings], None]],
                        Callable[[argparse.Namespace, Settings], None]]:
    """Declare the decorated function as the stage ``name``, reading ``sections``, taking ``args``."""

    def register(run: Callable[[argparse.Namespace, Settings], None]) -> Callable[[argparse.Namespace, Settings], None]:
        if name in STAGES:
            raise ValueError(f"stage {name!r} declared twice")
        STAGES[name] = Stage(name, run, help, sections, tuple(args))
        return run

    return register


OUT = arg("--out", required=True)
ACTIVATIONS = arg("--activations", required=True, help="activations directory (splits + normaliser)")
LM = arg("--lm", required=True, help="Hugging Face model directory")
RUN = arg("--run", required=True)
WEIGHTS = arg("--weights", required=True)
CODES = arg("--codes", help="the standard SAE's code cache (frozen-encoder kinds; else they re-encode)")


# ---------------------------------------------------------------------------------------------------------
# configuration and planning


@stage("check-config", "validate a config and print it with defaults filled in", EVERY_SECTION)
def check_config(args: argparse.Namespace, settings: Settings) -> None:
    print(json.dumps(settings.raw, indent=2, sort_keys=True))


@stage("config-docs", "write config/README.md from the configs and the schema", None,
       arg("--out", default="config/README.md"))
def config_docs(args: argparse.Namespace, settings: Settings) -> None:
    from featint.config import config_readme

    Path(args.out).write_text(config_readme(Path(args.out).parent), encoding="utf-8")
    log.info("wrote %s", args.out)


@stage("plan", "memory and disk plan of a config (shards, model states, peak per job)", EVERY_SECTION,
       arg("--out", help="also write the plan as a Parquet table"))
def plan(args: argparse.Namespace, settings: Settings) -> None:
    from featint.io import write_parquet
    from featint.lm import model_dir
    from featint.plan import human, model_shape, plan

    shape = model_shape(settings, model_dir(settings.model))
    table = plan(settings, shape)
    shown = table.assign(amount=[human(v, u) for v, u in zip(table["value"], table["unit"])])
    print(f"Plan for run '{settings.run}' (model shape from {shape.source}: d {shape.d_model}, "
          f"{shape.n_layers} layers, vocab {shape.vocab_size:,}, {shape.n_parameters:.3g} parameters)")
    print(shown[["stage", "item", "amount", "note"]].to_string(index=False))
    if args.out:
        write_parquet(table, args.out)


# ---------------------------------------------------------------------------------------------------------
# the LM, the corpus and the activations


@stage("prepare-lm", "write the embedded/hub model as a Hugging Face directory", ("model",), OUT)
def prepare_lm(args: argparse.Namespace, settings: Settings) -> None:
    from featint.lm import prepare_model

    prepare_model(settings.model, args.out)


@stage("corpus", "read, clean and split the corpus into documents.parquet", ("corpus", "split"), OUT)
def corpus(args: argparse.Namespace, settings: Settings) -> None:
    from featint.corpus import run_corpus

    documents = run_corpus(settings.corpus, settings.split, args.out)
    log.info("documents per split: %s", documents["split"].value_counts().to_dict())


@stage("extract", "extract one split's activations at the hook into shards", ("model", "hook", "extraction"),
       arg("--split", required=True, choices=SPLITS), arg("--documents", required=True), LM,
       arg("--train", help="train split directory (validation/test read its outlier threshold)"), OUT)
def extract(args: argparse.Namespace, settings: Settings) -> None:
    from featint.activations import extract_split

    meta = extract_split(split=args.split, documents_path=args.documents, model_directory=args.lm, out_dir=args.out,
                         model=settings.model, hook=settings.hook, extraction=settings.extraction,
                         device=resolve_device(settings.model.device), train_dir=args.train)
    log.info("extracted %s: %d rows at %s", meta.split, meta.n_rows, meta.hook_name)


@stage("normaliser", "fit the normaliser on train activations", ("normaliser",),
       arg("--train", required=True), OUT)
def normaliser(args: argparse.Namespace, settings: Settings) -> None:
    from featint.activations import fit_normaliser

    fitted = fit_normaliser(args.train, settings.normaliser.kind, settings.normaliser.min_std, args.out)
    log.info("normaliser: %s", fitted.describe())


@stage("summarise", "activation summary table and norm-by-position figure", None,
       arg("--activations", required=True, help="directory holding one folder per split"),
       arg("--normaliser", required=True), arg("--out-table", required=True),
       arg("--out-positions", required=True), arg("--out-figure", required=True))
def summarise(args: argparse.Namespace, settings: Settings) -> None:
    from featint.activations import run_summary

    split_dirs = {split: Path(args.activations) / split for split in SPLITS}
    summary = run_summary(split_dirs, args.normaliser, args.out_table, args.out_positions, args.out_figure)
    log.info("summary:\n%s", summary.to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# training


@stage("select-lr", "choose a model kind's learning rate on the validation split",
       ("model", "sae", "nfm", "training"),
       arg("--kind", required=True), ACTIVATIONS,
       arg("--standard", help="weights of the standard SAE (kinds that start from it)"), CODES,
       arg("--budget-factor", type=float, default=1.0,
           help="multiple of training.lr_selection_tokens (the budget target's choice at a larger budget)"), OUT)
def select_lr(args: argparse.Namespace, settings: Settings) -> None:
    from featint.training import run_lr_selection

    run_lr_selection(settings, args.kind, args.activations, args.out, device=resolve_device(settings.model.device),
                     standard_weights=args.standard, codes_dir=args.codes, budget_factor=args.budget_factor)


@stage("gather-lr-selection", "every kind's LR selection in one table and figure", None,
       arg("--tables", nargs="+", required=True), arg("--out-table", required=True),
       arg("--out-figure", required=True))
def gather_lr_selection(args: argparse.Namespace, settings: Settings) -> None:
    from featint.training import gather_lr_selection

    frame = gather_lr_selection(args.tables, args.out_table, args.out_figure)
    log.info("chosen learning rates:\n%s", frame[frame["chosen"]].to_string(index=False))


@stage("train", "train one model kind for one seed", ("model", "sae", "nfm", "training"),
       arg("--kind", required=True), arg("--seed", required=True, type=int), arg("--activations", required=True),
       arg("--lr-table", help="lr-selection table the kind uses (when training.lr is null)"),
       arg("--standard", help="weights of the standard SAE (sequential kinds and the refit)"),
       arg("--budget-factor", type=float, default=1.0, help="multiple of training.tokens (convergence check)"),
       CODES, arg("--out-weights", required=True), arg("--out-init", required=True, help="the initial weights"),
       arg("--out-log", required=True, help="the training log table"),
       arg("--out-parameters", required=True, help="the parameter counts table"),
       arg("--out-figure", required=True, help="the training curves (PNG)"),
       arg("--checkpoint", required=True, help="the resume point while it trains"))
def train(args: argparse.Namespace, settings: Settings) -> None:
    from featint.training import TrainOutputs, chosen_lr, run_train

    lr = chosen_lr(settings, args.kind, args.lr_table)
    out = TrainOutputs(args.out_weights, args.out_init, args.out_log, args.out_parameters, args.out_figure,
                       args.checkpoint)
    result = run_train(settings, args.kind, args.seed, args.activations, out, lr,
                       device=resolve_device(settings.model.device), standard_weights=args.standard,
                       budget_factor=args.budget_factor, codes_dir=args.codes)
    final = result.log[result.log["split"] == "validation"].iloc[-1]
    log.info("%s seed %d: %d steps at lr %g, validation FVU %.4f", args.kind, args.seed, result.steps, lr,
             final["fvu"])


@stage("cache-codes", "encode the train split once with a trained SAE (frozen-encoder kinds)", ("model", "training"),
       arg("--weights", required=True, help="the SAE (a standard model's weights.safetensors)"), ACTIVATIONS,
       arg("--out", required=True, help="cache directory"))
def cache_codes(args: argparse.Namespace, settings: Settings) -> None:
    from featint.codes import write_code_cache

    device = resolve_device(settings.model.device)
    write_code_cache(args.weights, args.activations, args.out, settings.training.batch_size,
                     device=device, bf16_autocast=settings.training.bf16(device))


@stage("export-saelens", "write a trained SAE in SAELens's format (normaliser folded in)", ("model", "extraction"),
       arg("--weights", required=True, help="an SAE-only model's weights.safetensors"),
       arg("--normaliser", required=True, help="the run's normaliser.safetensors"),
       arg("--out", required=True, help="folder to write (sae_weights.safetensors + cfg.json)"))
def export_saelens(args: argparse.Namespace, settings: Settings) -> None:
    from featint.lm import model_key
    from featint.saelens import export_saelens

    config = export_saelens(args.weights, args.normaliser, args.out, settings.model.name or model_key(settings.model),
                            context_size=settings.extraction.context_length)
    log.info("SAELens %s SAE written to %s (d_in %d, d_sae %d, k %s)", config["architecture"], args.out, config["d_in"],
             config["d_sae"], config.get("k", "per token"))


@stage("saebench-core", "an SAE-only model's core metrics as SAEBench's core eval JSON",
       ("model", "extraction", "corpus"),
       WEIGHTS, ACTIVATIONS, RUN,
       arg("--behaviour", required=True, help="the gathered behaviour summary (its KL and CE)"),
       arg("--out", required=True, help="the JSON file to write"))
def saebench_core(args: argparse.Namespace, settings: Settings) -> None:
    from featint.saebench import core_eval

    output = core_eval(settings, args.weights, args.activations, args.behaviour, args.run, args.out)
    metrics = output["eval_result_metrics"]
    log.info("SAEBench core eval of %s written to %s: explained variance %.4f, CE score %.4f, L0 %.1f", args.weights,
             args.out, metrics["reconstruction_quality"]["explained_variance"],
             metrics["model_performance_preservation"]["ce_loss_score"], metrics["sparsity"]["l0"])


@stage("import-sae", "a SAELens (topk, standard, jumprelu) or sparsify SAE (sae.source, sae.path) as the run's "
       "standard model",
       ("sae", "nfm"),
       arg("--activations", required=True, help="the run's activations directory (splits + normaliser)"),
       arg("--seed", type=int, required=True, help="the seed whose standard model it stands for"),
       arg("--out", required=True, help="results/<run>/models/standard/seed~<s>"))
def import_sae(args: argparse.Namespace, settings: Settings) -> None:
    from featint.saelens import import_sae

    if settings.sae.path is None or settings.sae.source == "featint":
        raise ConfigError("import-sae needs sae.source (saelens or sparsify) and sae.path (the SAE folder) in the "
                          "config.")
    cfg = import_sae(settings.sae.path, args.activations, args.out, args.seed, settings.sae.n_features,
                     settings.sae.k, settings.sae.source, settings.sae.hook_name)
    log.info("imported %s (%s, d_sae %s, k %s) as the standard SAE of seed %d", settings.sae.path, cfg["architecture"],
             cfg["d_sae"], cfg.get("k", "per token"), args.seed)


# ---------------------------------------------------------------------------------------------------------
# reconstruction


@stage("evaluate", "reconstruction metrics of one model on the test split", ("model",),
       WEIGHTS, arg("--activations", required=True), RUN, OUT,
       arg("--out-documents", help="per-document sums of squares (for document-bootstrap intervals)"))
def evaluate(args: argparse.Namespace, settings: Settings) -> None:
    from featint.evaluation import run_evaluate

    run_evaluate(args.weights, args.activations, args.out, run=args.run, out_documents=args.out_documents,
                 device=resolve_device(settings.model.device))


@stage("gather-metrics", "one tidy table and figure over models and seeds", ("seed", "evaluation"),
       arg("--tables", nargs="+", required=True),
       arg("--documents", nargs="+", required=True, help="per-document tables written by evaluate"),
       arg("--parameters", nargs="+", required=True), arg("--out-metrics", required=True),
       arg("--out-summary", required=True), arg("--out-parameters", required=True),
       arg("--out-comparisons", help="each term against its control (featint.kinds.COMPARISONS)"),
       arg("--out-figure", required=True))
def gather_metrics(args: argparse.Namespace, settings: Settings) -> None:
    from featint.evaluation import MetricsOutputs, gather

    out = MetricsOutputs(args.out_metrics, args.out_summary, args.out_parameters, args.out_figure,
                         args.out_comparisons)
    summary = gather(args.tables, args.documents, args.parameters, out, settings.evaluation, settings.seed)
    view = summary[(summary["metric"].isin(["fvu", "improvement_mse"]))
                   & summary["component"].isin(["full", "model"]) & (summary["token_set"] == "selected")]
    log.info("test reconstruction:\n%s", view.to_string(index=False))


@stage("convergence", "does a longer training change the test FVU and the improvement?", ("convergence",),
       arg("--default", nargs="+", required=True, help="reconstruction tables of the default models"),
       arg("--longer", nargs="+", required=True, help="reconstruction tables of the longer trainings"),
       arg("--logs", nargs="+", required=True, help="train logs of the compared models (both budgets)"),
       OUT, arg("--out-figure", required=True))
def convergence(args: argparse.Namespace, settings: Settings) -> None:
    from featint.convergence import run_convergence

    summary = run_convergence(settings.convergence, args.default, args.longer, args.logs, args.out, args.out_figure)
    log.info("convergence:\n%s", summary.to_string(index=False))


@stage("budget", "the verdict as the budget grows: a scaling fit per kind, every comparison per budget",
       ("seed", "evaluation", "budget"),
       arg("--documents", nargs="+", required=True, help="per-document test tables of every budget's models"),
       arg("--logs", nargs="+", required=True, help="their train logs, in the same order"),
       OUT, arg("--out-figure", required=True))
def budget(args: argparse.Namespace, settings: Settings) -> None:
    from featint.budget import run_budget

    table = run_budget(args.documents, args.logs, tuple(settings.budget.alpha_range), settings.evaluation.bootstrap,
                       settings.evaluation.ci_level, settings.seed, args.out, args.out_figure)
    view = table[table["quantity"].isin(["l_inf", "l_inf_improvement", "improvement_moved"])]
    log.info("budget:\n%s", view.to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# geometry


@stage("geometry", "decoder geometry, norm clustering, contributions, PCA of one model", ("model", "geometry"),
       arg("--weights", required=True, help="trained weights.safetensors"),
       arg("--init", required=True, help="step-0 weights the decoder is compared with (init.safetensors)"),
       arg("--activations", required=True), RUN,
       arg("--out-features", required=True, help="the per-feature table"),
       arg("--out-summary", required=True, help="the model's geometry summary"),
       arg("--out-pca", required=True, help="the decoder PCA curves"))
def geometry(args: argparse.Namespace, settings: Settings) -> None:
    from featint.geometry import GeometryOutputs, run_geometry

    out = GeometryOutputs(args.out_features, args.out_summary, args.out_pca)
    summary = run_geometry(args.weights, args.init, args.activations, out, run=args.run,
                           settings=settings.geometry, device=resolve_device(settings.model.device))
    verdict = summary[summary["metric"].str.startswith("verdict")]
    log.info("geometry verdicts:\n%s", verdict.to_string(index=False))


@stage("gather-geometry", "geometry summary, verdicts and figures over models and seeds", ("geometry",),
       arg("--features", nargs="+", required=True), arg("--summaries", nargs="+", required=True),
       arg("--pca", nargs="+", required=True), arg("--out-summary", required=True),
       arg("--out-verdicts", required=True),
       arg("--figures", nargs=len(GEOMETRY_FIGURES), required=True,
           help="the figures (PNG), in GeometryFigures' order"))
def gather_geometry(args: argparse.Namespace, settings: Settings) -> None:
    from featint.geometry import gather

    verdicts = gather(args.features, args.summaries, args.pca, args.out_summary, args.out_verdicts,
                      GeometryFigures(*args.figures), settings.geometry.paper_threshold)
    log.info("geometry verdicts:\n%s", verdicts.to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# integration (the pair product test)


@stage("integration", "the held-out pair product test on one model's SAE latents (data and surrogates)",
       ("model", "integration"), WEIGHTS, ACTIVATIONS, RUN,
       arg("--out-pairs", required=True, help="every pair test, on the data and its surrogates"),
       arg("--out-contexts", required=True, help="the tokens where each tested pair's product is largest"))
def integration(args: argparse.Namespace, settings: Settings) -> None:
    from featint.integration import IntegrationOutputs, run_integration

    pairs = run_integration(args.weights, args.activations, IntegrationOutputs(args.out_pairs, args.out_contexts),
                            run=args.run, settings=settings.integration, device=resolve_device(settings.model.device))
    log.info("pairs flagged:\n%s", pairs.groupby(["data", "target"])["flagged"].sum().to_string())


@stage("gather-integration", "pair test summary, replication across seeds, contexts and figures",
       ("integration",), arg("--pairs", nargs="+", required=True), arg("--contexts", nargs="+", required=True),
       arg("--weights", nargs="+", required=True), ACTIVATIONS, LM,
       arg("--out-summary", required=True), arg("--out-pairs", required=True),
       arg("--out-replication", required=True), arg("--out-contexts", required=True),
       arg("--figures", nargs=2, required=True, help="the pair_z and top_pairs figures (PNG)"))
def gather_integration(args: argparse.Namespace, settings: Settings) -> None:
    from featint.integration import GatheredIntegrationOutputs, IntegrationFigures, gather

    out = GatheredIntegrationOutputs(args.out_summary, args.out_pairs, args.out_replication, args.out_contexts,
                                     IntegrationFigures(*args.figures))
    summary = gather(args.pairs, args.contexts, args.weights, args.activations, args.lm, settings.integration, out)
    log.info("pair product test:\n%s", summary.to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# behaviour


@stage("behaviour-reference", "clean, zero- and mean-ablation per-token KL/CE on the test windows",
       ("seed", "model", "hook", "behaviour"), LM, arg("--activations", required=True), RUN, OUT)
def behaviour_reference(args: argparse.Namespace, settings: Settings) -> None:
    from featint.behaviour import run_reference

    frame = run_reference(settings, args.lm, args.activations, args.out, run=args.run,
                          device=resolve_device(settings.model.device))
    used = frame[frame["spliced"]]
    log.info("reference conditions (spliced tokens):\n%s", used.groupby("condition")[["kl", "ce"]].mean().to_string())


@stage("behaviour", "splice one model's reconstructions into the LM: per-token KL/CE",
       ("seed", "model", "hook", "behaviour"), LM, WEIGHTS, arg("--activations", required=True), RUN, OUT)
def behaviour(args: argparse.Namespace, settings: Settings) -> None:
    from featint.behaviour import run_behaviour

    frame = run_behaviour(settings, args.lm, args.weights, args.activations, args.out, run=args.run,
                          device=resolve_device(settings.model.device))
    used = frame[frame["spliced"]]
    log.info("conditions (spliced tokens):\n%s", used.groupby("condition")[["kl", "ce"]].mean().to_string())


@stage("gather-behaviour", "bootstrap summary over models and seeds, and figures", ("seed", "behaviour"),
       arg("--tables", nargs="+", required=True), arg("--reference", required=True), RUN,
       arg("--out-summary", required=True),
       arg("--figures", nargs=len(BEHAVIOUR_FIGURES), required=True,
           help="the figures (PNG), in BehaviourFigures' order"))
def gather_behaviour(args: argparse.Namespace, settings: Settings) -> None:
    from featint.behaviour import gather

    summary = gather(args.tables, args.reference, args.out_summary, BehaviourFigures(*args.figures), args.run,
                     settings.behaviour, settings.seed)
    view = summary[summary["seed"].isna() & summary["metric"].isin(["pathology_ratio", "improvement_kl"])]
    log.info("behaviour (mean over seeds):\n%s",
             view[["model", "condition", "metric", "reference", "estimate", "ci_low", "ci_high"]]
             .to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# interventions


@stage("secondary-sae", "train the secondary SAE on a model's NFM interaction embedding",
       ("model", "sae", "nfm", "training", "interventions"),
       WEIGHTS, arg("--activations", required=True), arg("--out", required=True, help="secondary SAE directory"))
def secondary_sae(args: argparse.Namespace, settings: Settings) -> None:
    from featint.interventions import run_secondary

    train_log = run_secondary(settings, args.weights, args.activations, args.out,
                              device=resolve_device(settings.model.device))
    final = train_log[train_log["split"] == "validation"].iloc[-1]
    log.info("secondary SAE: validation FVU %.4f after %d steps", final["fvu"],
             int(final["step"]))


@stage("interventions", "2x2 stimuli, feature selection, ANOVAs, clamping, generations",
       ("seed", "model", "hook", "interventions"),
       LM, WEIGHTS, arg("--secondary", required=True, help="secondary SAE directory"),
       arg("--activations", required=True), RUN,
       *(arg(f"--out-{name.replace('_', '-')}", required=True, help=f"the {name} table")
         for name in INTERVENTION_TABLES))
def interventions(args: argparse.Namespace, settings: Settings) -> None:
    from featint.interventions import InterventionOutputs, run_interventions

    out = InterventionOutputs(*(getattr(args, f"out_{name}") for name in INTERVENTION_TABLES))
    tables = run_interventions(settings, args.lm, args.weights, args.secondary, args.activations, out,
                               run=args.run, device=resolve_device(settings.model.device))
    tests = tables["secondary_tests"]
    log.info("secondary two-way ANOVAs (test split):\n%s",
             tests[tests["test"] == "two_way_anova_type2"][["feature", "effect", "F", "p", "q"]].to_string(index=False))


@stage("gather-interventions", "FDR over clamps, summary and figures", ("interventions",),
       *(arg(f"--{name.replace('_', '-')}", nargs="+", required=True, help=f"every model's {name} table")
         for name in INTERVENTION_TABLES),
       arg("--out-summary", required=True),
       *(arg(f"--out-{name.replace('_', '-')}", required=True, help=f"the gathered {name} table")
         for name in INTERVENTION_TABLES),
       arg("--figures", nargs=3, required=True, help="the three figures (PNG), in InterventionFigures' order"))
def gather_interventions(args: argparse.Namespace, settings: Settings) -> None:
    from featint.interventions import GatheredInterventionOutputs, InterventionOutputs, gather
    from featint.layout import InterventionFigures

    out = GatheredInterventionOutputs(
        args.out_summary, InterventionOutputs(*(getattr(args, f"out_{name}") for name in INTERVENTION_TABLES)),
        InterventionFigures(*args.figures))
    summary = gather({name: getattr(args, name) for name in INTERVENTION_TABLES}, out,
                     settings.interventions.fdr_alpha)
    log.info("intervention summary:\n%s", summary.to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# the report


def _claims_inputs() -> list[Arg]:
    from featint.claims import REQUIRED_TABLES, TABLES

    return [arg(f"--{name.replace('_', '-')}", dest=f"table_{name}", required=name in REQUIRED_TABLES, help=source)
            for name, source in TABLES.items()]


@stage("claims", "the paper's headline claims beside this run's numbers", None,
       arg("--paper-claims", required=True, help="config/paper_claims.tsv"), *_claims_inputs(), RUN,
       arg("--out-table", required=True), arg("--out-markdown", required=True),
       arg("--out-kinds", help="every kind's test FVU (and spliced KL) against its parameter count"),
       arg("--out-figure", help="the figure of that table"))
def claims(args: argparse.Namespace, settings: Settings) -> None:
    from featint.claims import TABLES, ClaimsOutputs, run_claims

    tables = {name: getattr(args, f"table_{name}") for name in TABLES}
    out = ClaimsOutputs(args.out_table, args.out_markdown, args.out_kinds, args.out_figure)
    table = run_claims(args.paper_claims, tables, out, run=args.run)
    log.info("claims:\n%s", table[["claim_id", "paper_value", "ours_paper_definition", "ours_corrected"]]
             .to_string(index=False))


@stage("run-info", "the run's full config (defaults filled) and software versions", EVERY_SECTION,
       arg("--out-config", required=True), arg("--out-versions", required=True))
def run_info(args: argparse.Namespace, settings: Settings) -> None:
    import platform
    from importlib import metadata

    import pandas as pd
    import yaml

    from featint.io import atomic_path

    with atomic_path(args.out_config) as tmp:
        tmp.write_text(yaml.safe_dump(settings.raw, sort_keys=True))
    rows = [{"package": "python", "version": platform.python_version()}]
    for name in REPORTED_PACKAGES:
        try:
            rows.append({"package": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            rows.append({"package": name, "version": "not installed"})
    with atomic_path(args.out_versions) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)


# ---------------------------------------------------------------------------------------------------------
# ablations and the layer sweep


@stage("ablation", "train and evaluate one ablation instance (a row of the ablation table)",
       ("model", "sae", "nfm", "training"),
       arg("--instance", required=True, help="the row as JSON (column -> value)"), arg("--activations", required=True),
       arg("--lr-tables", nargs="*", help="lr-selection tables of the instance's kind and of standard "
           "(when training.lr is null)"), RUN,
       arg("--models", required=True, help="the folder the instance's kinds are trained into"),
       arg("--out-table", required=True, help="the instance's reconstruction table"))
def ablation(args: argparse.Namespace, settings: Settings) -> None:
    from featint.ablations import run_ablation

    frame = run_ablation(settings, args.instance, args.activations, args.lr_tables or [], args.models, args.out_table,
                         run=args.run)
    view = frame[(frame["metric"] == "fvu") & (frame["token_set"] == "selected")]
    log.info("ablation %s:\n%s", args.instance, view[["component", "value"]].to_string(index=False))


@stage("gather-ablations", "one table and figure over the ablation instances", None,
       arg("--tables", nargs="+", required=True), arg("--out-summary", required=True),
       arg("--out-figure", required=True))
def gather_ablations(args: argparse.Namespace, settings: Settings) -> None:
    from featint.ablations import gather

    summary = gather(args.tables, args.out_summary, args.out_figure)
    log.info("ablations:\n%s", summary.to_string(index=False))


@stage("layer-models", "train and evaluate the layer sweep's kinds at one layer, one seed",
       ("model", "hook", "sae", "nfm", "training", "layers"),
       arg("--layer", type=int, required=True), arg("--seed", type=int, required=True),
       arg("--activations", required=True, help="that layer's activations directory"),
       arg("--lr-tables", nargs="*", help="the run's LR-selection tables (each names its kind)"), RUN,
       arg("--models", required=True, help="the folder the kinds are trained into (one model folder each)"),
       arg("--out-reconstruction", required=True), arg("--out-documents", required=True),
       arg("--out-parameters", required=True))
def layer_models(args: argparse.Namespace, settings: Settings) -> None:
    from featint.layers import LayerOutputs, run_layer

    out = LayerOutputs(args.out_reconstruction, args.out_documents, args.out_parameters)
    frame = run_layer(settings, args.layer, args.seed, args.activations, args.lr_tables or [], args.models, out,
                      run=args.run, device=resolve_device(settings.model.device))
    view = frame[(frame["metric"] == "fvu") & (frame["token_set"] == "selected") & (frame["component"] == "full")]
    log.info("layer %d:\n%s", args.layer, view[["model", "value"]].to_string(index=False))


@stage("gather-layers", "every comparison and kind per layer: tables and figure", ("seed", "evaluation"),
       arg("--reconstruction", nargs="+", required=True, help="every layer-models job's reconstruction table"),
       arg("--documents", nargs="+", required=True, help="their per-document tables (any order)"),
       arg("--parameters", nargs="+", required=True, help="their parameter tables (any order)"),
       arg("--out-comparisons", required=True), arg("--out-fvu", required=True),
       arg("--out-figure", required=True))
def gather_layers(args: argparse.Namespace, settings: Settings) -> None:
    from featint.layers import GatheredLayerOutputs, gather

    out = GatheredLayerOutputs(args.out_comparisons, args.out_fvu, args.out_figure)
    pooled = gather(args.reconstruction, args.documents, args.parameters, settings.evaluation.bootstrap,
                    settings.evaluation.ci_level, settings.seed, out)
    log.info("layer sweep:\n%s", pooled[["layer", "model", "reference", "estimate", "ci_low", "ci_high"]]
             .to_string(index=False))


# ---------------------------------------------------------------------------------------------------------
# the planted-interaction control


def _synthetic(settings: Settings) -> Any:
    if settings.synthetic is None:
        raise FeatintError("this stage needs a `synthetic` config section (see config/synthetic.yaml).")
    return settings.synthetic


@stage("synthetic-data", "generate one planted-interaction setting's activations", ("synthetic",),
       arg("--variant", required=True, help="a name from synthetic.variants"),
       arg("--strength", required=True, type=float, help="planted interaction strength c"),
       arg("--out", required=True, help="setting directory"))
def synthetic_data(args: argparse.Namespace, settings: Settings) -> None:
    from featint.synthetic import find_variant, write_synthetic_activations

    spec = _synthetic(settings)
    variance = write_synthetic_activations(spec, args.strength, find_variant(spec, args.variant).direction, args.out)
    log.info("synthetic setting %s, strength %g:\n%s", args.variant, args.strength, variance.to_string(index=False))


@stage("synthetic-models", "train and evaluate synthetic.kinds on one setting, one seed",
       ("sae", "nfm", "training", "synthetic"),
       arg("--variant", required=True), arg("--strength", required=True, type=float),
       arg("--seed", required=True, type=int),
       arg("--setting", required=True, help="the setting directory written by synthetic-data"), RUN,
       arg("--models", required=True, help="the folder the kinds are trained into (one model folder each)"),
       arg("--out-fvu", required=True), arg("--out-pairs", required=True))
def synthetic_models(args: argparse.Namespace, settings: Settings) -> None:
    from featint.synthetic import SettingModelsOutputs, run_setting_models

    _synthetic(settings)
    out = SettingModelsOutputs(args.out_fvu, args.out_pairs)
    frame = run_setting_models(settings, args.variant, args.strength, args.setting, args.seed, args.models, out,
                               args.run)
    log.info("test FVU:\n%s", frame.to_string(index=False))


@stage("synthetic-integration", "the pair product test on one planted setting and seed, read against the truth",
       ("integration",), arg("--variant", required=True), arg("--strength", required=True, type=float),
       WEIGHTS, arg("--setting", required=True, help="the setting directory written by synthetic-data"),
       arg("--out-pairs", required=True), arg("--out-calibration", required=True))
def synthetic_integration(args: argparse.Namespace, settings: Settings) -> None:
    from featint.integration import SyntheticIntegrationOutputs, run_synthetic_integration

    out = SyntheticIntegrationOutputs(args.out_pairs, args.out_calibration)
    calibration = run_synthetic_integration(args.weights, args.setting, out, settings.integration, args.variant,
                                            args.strength)
    log.info("calibration:\n%s", calibration.to_string(index=False))


@stage("gather-synthetic-integration", "the pair product test's calibration and power on the planted control",
       ("integration",), arg("--calibration", nargs="+", required=True), arg("--out-calibration", required=True),
       arg("--out-power", required=True), arg("--out-figure", required=True))
def gather_synthetic_integration(args: argparse.Namespace, settings: Settings) -> None:
    from featint.integration import GatheredSyntheticIntegrationOutputs, gather_synthetic

    out = GatheredSyntheticIntegrationOutputs(args.out_calibration, args.out_power, args.out_figure)
    summary = gather_synthetic(args.calibration, out)
    log.info("power and calibration:\n%s", summary.to_string(index=False))


@stage("gather-synthetic", "power curve, detection thresholds and pair identification", ("synthetic",),
       arg("--fvu", nargs="+", required=True), arg("--pairs", nargs="+", required=True),
       arg("--variance", nargs="+", required=True),
       arg("--out-fvu", required=True), arg("--out-power", required=True), arg("--out-detection", required=True),
       arg("--out-identification", required=True), arg("--out-variance", required=True),
       arg("--out-power-figure", required=True), arg("--out-identification-figure", required=True))
def gather_synthetic(args: argparse.Namespace, settings: Settings) -> None:
    from featint.synthetic import SyntheticSummaryOutputs, gather

    out = SyntheticSummaryOutputs(args.out_fvu, args.out_power, args.out_detection, args.out_identification,
                                  args.out_variance, args.out_power_figure, args.out_identification_figure)
    detection = gather(args.fvu, args.pairs, args.variance, _synthetic(settings).ci_level, out)
    log.info("smallest detected strength:\n%s", detection.to_string(index=False))


#: Config sections each stage with a config reads (a rule passes only these, so only their changes rerun it).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    name: s.sections for name, s in STAGES.items() if s.sections is not None and s.sections != EVERY_SECTION}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every declared stage: its arguments, the config options when it reads sections, and the
    thread options every stage takes."""
    parser = argparse.ArgumentParser(prog="featint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for declared in STAGES.values():
        p = sub.add_parser(declared.name, help=declared.help, description=declared.help)
        if declared.sections is not None:
            group = p.add_mutually_exclusive_group(required=True)
            group.add_argument("--config", help="YAML config file (e.g. config/config.yaml)")
            group.add_argument("--config-json", help="config as a JSON string (what Snakemake rules pass)")
        p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (capped at the CPUs)")
        p.add_argument("--cpu-share", type=float, default=cpu_share_from_environment(),
                       help=f"fraction of --threads to use (default: ${CPU_SHARE_VARIABLE} or 1; the workflow sets "
                       "it to the CPUs / --cores share)")
        for option in declared.args:
            p.add_argument(*option.flags, **option.options)
        p.set_defaults(stage=declared)
    return parser


def stage_settings(declared: Stage, args: argparse.Namespace) -> Settings:
    """The settings ``declared`` receives: its config restricted to its sections (all of them for a stage that
    reads the whole config, none for a stage without config)."""
    if declared.sections is None:
        return Settings.from_dict({}, source="defaults").restricted((), declared.name)
    full = load_settings(path=args.config, json_text=args.config_json)
    seed_everything(full.seed)  # the process seed (a stage that trains seeds again by its own --seed)
    if declared.sections == EVERY_SECTION:
        return full
    return full.restricted(declared.sections, declared.name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    threads = set_threads(max(1, int(args.threads * args.cpu_share)))
    started = time.perf_counter()
    declared: Stage = args.stage
    try:
        declared.run(args, stage_settings(declared, args))
    except FeatintError as exc:
        print(f"featint {args.command}: error: {exc}", file=sys.stderr)
        return 2
    log.info("%s finished in %.1f s on %d thread(s)", args.command, time.perf_counter() - started, threads)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():  # read by benchmarks/gpu_smoke.py
        log.info("%s peak GPU memory %.0f MiB on %s", args.command, torch.cuda.max_memory_allocated() / 2**20,
                 torch.cuda.get_device_name())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
