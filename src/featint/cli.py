"""Command line: ``python -m featint <stage> ...``; every Snakemake rule calls one of these.

Each stage takes the configuration either as a YAML file (``--config config/config.yaml``, for users) or as
a JSON string (``--config-json``, what rules pass: only the sections the stage reads, so Snakemake reruns a
rule when, and only when, settings it depends on change; see :data:`STAGE_SECTIONS`). Errors of the
:class:`~featint.errors.FeatintError` family print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from featint.config import SPLITS, Settings, load_settings
from featint.errors import ConfigError, FeatintError
from featint.runtime import (
    CPU_SHARE_VARIABLE,
    configure_logging,
    cpu_share_from_environment,
    resolve_device,
    seed_everything,
    set_threads,
)

log = logging.getLogger("featint")

#: Config sections each stage reads (a rule passes only these, so only their changes rerun it).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare-lm": ("model",),
    "corpus": ("corpus", "split"),
    "extract": ("model", "hook", "extraction"),
    "normaliser": ("normaliser",),
    "summarise": (),
    "select-lr": ("model", "sae", "nfm", "training"),
    "gather-lr-selection": (),
    "train": ("model", "sae", "nfm", "training"),
    "cache-codes": ("model", "training"),
    "export-saelens": ("model", "extraction"),
    "import-saelens": ("sae", "nfm"),
    "evaluate": (),
    "gather-metrics": ("seed", "evaluation"),
    "convergence": ("convergence",),
    "geometry": ("geometry",),
    "gather-geometry": ("geometry",),
    "behaviour-reference": ("seed", "model", "hook", "behaviour"),
    "behaviour": ("seed", "model", "hook", "behaviour"),
    "gather-behaviour": ("seed", "behaviour"),
    "secondary-sae": ("model", "sae", "nfm", "training", "interventions"),
    "interventions": ("seed", "model", "hook", "interventions"),
    "gather-interventions": ("interventions",),
    "claims": (),
    "ablation": ("model", "sae", "nfm", "training"),
    "layer-models": ("model", "hook", "sae", "nfm", "training", "layers"),
    "gather-layers": ("seed", "evaluation"),
    "synthetic-data": ("synthetic",),
    "synthetic-models": ("sae", "nfm", "training", "synthetic"),
    "gather-synthetic": ("synthetic",),
}

#: Packages whose versions the run report lists.
REPORTED_PACKAGES = ("featint", "torch", "transformer-lens", "transformers", "numpy", "pandas", "pyarrow", "scipy",
                     "statsmodels", "seaborn", "matplotlib", "snakemake", "safetensors", "gguf")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(path=args.config, json_text=args.config_json)


def cmd_check_config(args: argparse.Namespace) -> None:
    settings = _settings(args)
    print(json.dumps(settings.raw, indent=2, sort_keys=True))


def cmd_prepare_lm(args: argparse.Namespace) -> None:
    from featint.lm import prepare_model

    settings = _settings(args)
    prepare_model(settings.model, args.out)


def cmd_corpus(args: argparse.Namespace) -> None:
    from featint.corpus import run_corpus

    settings = _settings(args)
    documents = run_corpus(settings.corpus, settings.split, args.out)
    log.info("documents per split: %s", documents["split"].value_counts().to_dict())


def cmd_extract(args: argparse.Namespace) -> None:
    from featint.activations import extract_split

    settings = _settings(args)
    meta = extract_split(
        split=args.split,
        documents_path=args.documents,
        model_directory=args.lm,
        out_dir=args.out,
        model=settings.model,
        hook=settings.hook,
        extraction=settings.extraction,
        device=resolve_device(settings.model.device),
        train_dir=args.train,
    )
    log.info("extracted %s: %d rows at %s", meta.split, meta.n_rows, meta.hook_name)


def cmd_normaliser(args: argparse.Namespace) -> None:
    from featint.activations import fit_normaliser

    settings = _settings(args)
    normaliser = fit_normaliser(args.train, settings.normaliser.kind, settings.normaliser.min_std, args.out)
    log.info("normaliser: %s", normaliser.describe())


def cmd_summarise(args: argparse.Namespace) -> None:
    from featint.activations import run_summary

    split_dirs = {split: Path(args.activations) / split for split in SPLITS}
    summary = run_summary(split_dirs, args.normaliser, args.out_table, args.out_positions, args.out_figure)
    log.info("summary:\n%s", summary.to_string(index=False))


def cmd_select_lr(args: argparse.Namespace) -> None:
    from featint.training import run_lr_selection

    settings = _settings(args)
    run_lr_selection(settings, args.kind, args.activations, args.out,
                     device=resolve_device(settings.model.device), standard_weights=args.standard,
                     codes_dir=args.codes)


def cmd_gather_lr_selection(args: argparse.Namespace) -> None:
    from featint.training import gather_lr_selection

    frame = gather_lr_selection(args.tables, args.out_table, args.out_figure)
    log.info("chosen learning rates:\n%s", frame[frame["chosen"]].to_string(index=False))


def cmd_train(args: argparse.Namespace) -> None:
    from featint.training import chosen_lr, run_train

    settings = _settings(args)
    lr = chosen_lr(settings, args.kind, args.lr_table)
    result = run_train(settings, args.kind, args.seed, args.activations, args.out, lr,
                       device=resolve_device(settings.model.device), standard_weights=args.standard,
                       budget_factor=args.budget_factor, codes_dir=args.codes)
    final = result.log[result.log["split"] == "validation"].iloc[-1]
    log.info("%s seed %d: %d steps at lr %g, validation FVU %.4f", args.kind, args.seed, result.steps, lr,
             final["fvu"])


def cmd_config_docs(args: argparse.Namespace) -> None:
    from featint.config import config_readme

    Path(args.out).write_text(config_readme(Path(args.out).parent), encoding="utf-8")
    log.info("wrote %s", args.out)


def cmd_plan(args: argparse.Namespace) -> None:
    from featint.io import write_parquet
    from featint.lm import model_dir
    from featint.plan import human, model_shape, plan

    settings = _settings(args)
    shape = model_shape(settings, model_dir(settings.model))
    table = plan(settings, shape)
    shown = table.assign(amount=[human(v, u) for v, u in zip(table["value"], table["unit"])])
    print(f"Plan for run '{settings.run}' (model shape from {shape.source}: d {shape.d_model}, "
          f"{shape.n_layers} layers, vocab {shape.vocab_size:,}, {shape.n_parameters:.3g} parameters)")
    print(shown[["stage", "item", "amount", "note"]].to_string(index=False))
    if args.out:
        write_parquet(table, args.out)


def cmd_export_saelens(args: argparse.Namespace) -> None:
    from featint.lm import model_key
    from featint.saelens import export_saelens

    settings = _settings(args)
    config = export_saelens(args.weights, args.normaliser, args.out, settings.model.name or model_key(settings.model),
                            context_size=settings.extraction.context_length)
    log.info("SAELens TopK SAE written to %s (d_in %d, d_sae %d, k %d)", args.out, config["d_in"], config["d_sae"],
             config["k"])


def cmd_cache_codes(args: argparse.Namespace) -> None:
    from featint.codes import write_code_cache

    settings = _settings(args)
    write_code_cache(args.weights, args.activations, args.out, settings.training.batch_size,
                     device=resolve_device(settings.model.device))


def _synthetic_settings(args: argparse.Namespace) -> Settings:
    settings = _settings(args)
    if settings.synthetic is None:
        raise FeatintError("this stage needs a `synthetic` config section (see config/synthetic.yaml).")
    return settings


def cmd_synthetic_data(args: argparse.Namespace) -> None:
    from featint.synthetic import find_variant, write_synthetic_activations

    spec = _synthetic_settings(args).synthetic
    assert spec is not None
    variance = write_synthetic_activations(spec, args.strength, find_variant(spec, args.variant).direction, args.out)
    log.info("synthetic setting %s, strength %g:\n%s", args.variant, args.strength, variance.to_string(index=False))


def cmd_synthetic_models(args: argparse.Namespace) -> None:
    from featint.synthetic import run_setting_models

    frame = run_setting_models(_synthetic_settings(args), args.variant, args.strength, args.setting, args.seed,
                               args.out, args.run)
    log.info("test FVU:\n%s", frame.to_string(index=False))


def cmd_gather_synthetic(args: argparse.Namespace) -> None:
    from featint.synthetic import gather

    spec = _synthetic_settings(args).synthetic
    assert spec is not None
    detection = gather(args.fvu, args.pairs, args.variance, spec.ci_level, args.out)
    log.info("smallest detected strength:\n%s", detection.to_string(index=False))


def cmd_convergence(args: argparse.Namespace) -> None:
    from featint.convergence import run_convergence

    settings = _settings(args)
    summary = run_convergence(settings.convergence, args.default, args.longer, args.logs, args.out,
                              args.out_figure)
    log.info("convergence:\n%s", summary.to_string(index=False))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from featint.evaluation import run_evaluate

    run_evaluate(args.weights, args.activations, args.out, run=args.run, out_documents=args.out_documents)


def cmd_gather_metrics(args: argparse.Namespace) -> None:
    from featint.evaluation import gather

    settings = _settings(args)
    summary = gather(args.tables, args.documents, args.parameters, args.out_metrics, args.out_summary,
                     args.out_parameters, args.out_figure, settings.evaluation, settings.seed,
                     out_comparisons=args.out_comparisons)
    view = summary[(summary["metric"].isin(["fvu", "improvement_vs_standard_mse"]))
                   & summary["component"].isin(["full", "model"]) & (summary["token_set"] == "selected")]
    log.info("test reconstruction:\n%s", view.to_string(index=False))


def cmd_geometry(args: argparse.Namespace) -> None:
    from featint.geometry import run_geometry

    settings = _settings(args)
    summary = run_geometry(args.weights, args.init, args.activations, args.out, run=args.run,
                           settings=settings.geometry)
    verdict = summary[summary["metric"].str.startswith("verdict")]
    log.info("geometry verdicts:\n%s", verdict.to_string(index=False))


def cmd_gather_geometry(args: argparse.Namespace) -> None:
    from featint.geometry import gather

    settings = _settings(args)
    verdicts = gather(args.features, args.summaries, args.pca, args.out_summary, args.out_verdicts, args.figures,
                      settings.geometry.paper_threshold)
    log.info("geometry verdicts:\n%s", verdicts.to_string(index=False))


def cmd_behaviour_reference(args: argparse.Namespace) -> None:
    from featint.behaviour import run_reference

    settings = _settings(args)
    frame = run_reference(settings, args.lm, args.activations, args.out, run=args.run,
                          device=resolve_device(settings.model.device))
    used = frame[frame["spliced"]]
    log.info("reference conditions (spliced tokens):\n%s",
             used.groupby("condition")[["kl", "ce"]].mean().to_string())


def cmd_behaviour(args: argparse.Namespace) -> None:
    from featint.behaviour import run_behaviour

    settings = _settings(args)
    frame = run_behaviour(settings, args.lm, args.weights, args.activations, args.out, run=args.run,
                          device=resolve_device(settings.model.device))
    used = frame[frame["spliced"]]
    log.info("conditions (spliced tokens):\n%s", used.groupby("condition")[["kl", "ce"]].mean().to_string())


def cmd_gather_behaviour(args: argparse.Namespace) -> None:
    from featint.behaviour import gather

    settings = _settings(args)
    summary = gather(args.tables, args.reference, args.out_summary, args.figures, args.run, settings.behaviour,
                     settings.seed)
    view = summary[summary["seed"].isna() & summary["metric"].isin(["pathology_ratio", "improvement_kl_vs_standard"])]
    log.info("behaviour (mean over seeds):\n%s",
             view[["model", "condition", "metric", "estimate", "ci_low", "ci_high"]].to_string(index=False))


def cmd_secondary_sae(args: argparse.Namespace) -> None:
    from featint.interventions import run_secondary

    settings = _settings(args)
    train_log = run_secondary(settings, args.weights, args.activations, args.out,
                              device=resolve_device(settings.model.device))
    final = train_log[train_log["split"] == "validation"].iloc[-1]
    log.info("secondary SAE: validation FVU %.4f after %d steps", final["fvu"], int(final["step"]))


def cmd_interventions(args: argparse.Namespace) -> None:
    from featint.interventions import run_interventions

    settings = _settings(args)
    tables = run_interventions(settings, args.lm, args.weights, args.secondary, args.activations, args.out,
                               run=args.run, device=resolve_device(settings.model.device))
    tests = tables["secondary_tests"]
    log.info("secondary two-way ANOVAs (test split):\n%s",
             tests[tests["test"] == "two_way_anova_type2"][["feature", "effect", "F", "p", "q"]].to_string(index=False))


def cmd_gather_interventions(args: argparse.Namespace) -> None:
    from featint.interventions import gather

    settings = _settings(args)
    summary = gather(args.models, args.out, args.figures, settings.interventions.fdr_alpha)
    log.info("intervention summary:\n%s", summary.to_string(index=False))


def cmd_claims(args: argparse.Namespace) -> None:
    from featint.claims import run_claims

    table = run_claims(args.paper_claims, args.results, args.out_table, args.out_markdown, run=args.run,
                       out_kinds=args.out_kinds, out_figure=args.out_figure)
    log.info("claims:\n%s", table[["claim_id", "paper_value", "ours_paper_definition", "ours_corrected"]]
             .to_string(index=False))


def cmd_run_info(args: argparse.Namespace) -> None:
    import platform
    from importlib import metadata

    import pandas as pd
    import yaml

    from featint.io import atomic_path

    settings = _settings(args)
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


def cmd_ablation(args: argparse.Namespace) -> None:
    from featint.ablations import run_ablation

    settings = _settings(args)
    frame = run_ablation(settings, args.instance, args.activations, args.lr_tables or [], args.out, run=args.run)
    view = frame[(frame["metric"] == "fvu") & (frame["token_set"] == "selected")]
    log.info("ablation %s:\n%s", args.instance, view[["component", "value"]].to_string(index=False))


def cmd_gather_ablations(args: argparse.Namespace) -> None:
    from featint.ablations import gather

    summary = gather(args.tables, args.out_summary, args.out_figure)
    log.info("ablations:\n%s", summary.to_string(index=False))


def cmd_layer_models(args: argparse.Namespace) -> None:
    from featint.layers import run_layer

    settings = _settings(args)
    frame = run_layer(settings, args.layer, args.seed, args.activations, args.lr_tables or [], args.out, run=args.run,
                      device=resolve_device(settings.model.device))
    view = frame[(frame["metric"] == "fvu") & (frame["token_set"] == "selected") & (frame["component"] == "full")]
    log.info("layer %d:\n%s", args.layer, view[["model", "value"]].to_string(index=False))


def cmd_gather_layers(args: argparse.Namespace) -> None:
    from featint.layers import gather

    settings = _settings(args)
    pooled = gather(args.folders, settings.evaluation.bootstrap, settings.evaluation.ci_level, settings.seed, args.out)
    log.info("layer sweep:\n%s", pooled[["layer", "model", "reference", "estimate", "ci_low", "ci_high"]]
             .to_string(index=False))


def cmd_import_saelens(args: argparse.Namespace) -> None:
    from featint.saelens import import_saelens

    settings = _settings(args)
    if settings.sae.path is None:
        raise ConfigError("import-saelens needs sae.path (a SAELens SAE folder) in the config.")
    cfg = import_saelens(settings.sae.path, args.activations, args.out, args.seed, settings.sae.n_features,
                         settings.sae.k)
    log.info("imported %s (d_sae %s, k %s) as the standard SAE of seed %d", settings.sae.path, cfg["d_sae"], cfg["k"],
             args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_text: str,
            config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        if config:
            group = p.add_mutually_exclusive_group(required=True)
            group.add_argument("--config", help="YAML config file (e.g. config/config.yaml)")
            group.add_argument("--config-json", help="config as a JSON string (what Snakemake rules pass)")
        p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (capped at the CPUs)")
        p.add_argument("--cpu-share", type=float, default=cpu_share_from_environment(),
                       help=f"fraction of --threads to use (default: ${CPU_SHARE_VARIABLE} or 1; the workflow sets "
                       "it to the CPUs / --cores share)")
        p.set_defaults(func=func)
        return p

    add("check-config", cmd_check_config, "validate a config and print it with defaults filled in")
    p = add("prepare-lm", cmd_prepare_lm, "write the embedded/hub model as a Hugging Face directory")
    p.add_argument("--out", required=True)
    p = add("corpus", cmd_corpus, "read, clean and split the corpus into documents.parquet")
    p.add_argument("--out", required=True)
    p = add("extract", cmd_extract, "extract one split's activations at the hook into shards")
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--documents", required=True)
    p.add_argument("--lm", required=True, help="Hugging Face model directory")
    p.add_argument("--train", help="train split directory (validation/test read its outlier threshold)")
    p.add_argument("--out", required=True)
    p = add("normaliser", cmd_normaliser, "fit the normaliser on train activations")
    p.add_argument("--train", required=True)
    p.add_argument("--out", required=True)
    p = add("summarise", cmd_summarise, "activation summary table and norm-by-position figure", config=False)
    p.add_argument("--activations", required=True, help="directory holding one folder per split")
    p.add_argument("--normaliser", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-positions", required=True)
    p.add_argument("--out-figure", required=True)
    p = add("select-lr", cmd_select_lr, "choose a model kind's learning rate on the validation split")
    p.add_argument("--kind", required=True)
    p.add_argument("--activations", required=True, help="activations directory (splits + normaliser)")
    p.add_argument("--standard", help="weights of the standard SAE (kinds that start from it)")
    p.add_argument("--codes", help="the standard SAE's code cache (frozen-encoder kinds; else they re-encode)")
    p.add_argument("--out", required=True)
    p = add("gather-lr-selection", cmd_gather_lr_selection, "every kind's LR selection in one table and figure",
            config=False)
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-figure", required=True)
    p = add("train", cmd_train, "train one model kind for one seed")
    p.add_argument("--kind", required=True)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--activations", required=True)
    p.add_argument("--lr-table", help="lr-selection table the kind uses (when training.lr is null)")
    p.add_argument("--standard", help="weights of the standard SAE (sequential kinds and the refit)")
    p.add_argument("--budget-factor", type=float, default=1.0, help="multiple of training.tokens (convergence check)")
    p.add_argument("--codes", help="the standard SAE's code cache (frozen-encoder kinds; else they re-encode)")
    p.add_argument("--out", required=True, help="model directory")
    p = add("config-docs", cmd_config_docs, "write config/README.md from the configs and the schema", config=False)
    p.add_argument("--out", default="config/README.md")
    p = add("plan", cmd_plan, "memory and disk plan of a config (shards, model states, peak per job)")
    p.add_argument("--out", help="also write the plan as a Parquet table")
    p = add("export-saelens", cmd_export_saelens, "write a trained SAE in SAELens's format (normaliser folded in)")
    p.add_argument("--weights", required=True, help="an SAE-only model's weights.safetensors")
    p.add_argument("--normaliser", required=True, help="the run's normaliser.safetensors")
    p.add_argument("--out", required=True, help="folder to write (sae_weights.safetensors + cfg.json)")
    p = add("cache-codes", cmd_cache_codes, "encode the train split once with a trained SAE (frozen-encoder kinds)")
    p.add_argument("--weights", required=True, help="the SAE (a standard model's weights.safetensors)")
    p.add_argument("--activations", required=True, help="activations directory (splits + normaliser)")
    p.add_argument("--out", required=True, help="cache directory")
    p = add("synthetic-data", cmd_synthetic_data, "generate one planted-interaction setting's activations")
    p.add_argument("--variant", required=True, help="a name from synthetic.variants")
    p.add_argument("--strength", required=True, type=float, help="planted interaction strength c")
    p.add_argument("--out", required=True, help="setting directory")
    p = add("synthetic-models", cmd_synthetic_models, "train and evaluate synthetic.kinds on one setting, one seed")
    p.add_argument("--variant", required=True)
    p.add_argument("--strength", required=True, type=float)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--setting", required=True, help="the setting directory written by synthetic-data")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("gather-synthetic", cmd_gather_synthetic, "power curve, detection thresholds and pair identification")
    p.add_argument("--fvu", nargs="+", required=True)
    p.add_argument("--pairs", nargs="+", required=True)
    p.add_argument("--variance", nargs="+", required=True)
    p.add_argument("--out", required=True, help="summary directory")
    p = add("convergence", cmd_convergence, "does a longer training change the test FVU and the improvement?")
    p.add_argument("--default", nargs="+", required=True, help="reconstruction tables of the default models")
    p.add_argument("--longer", nargs="+", required=True, help="reconstruction tables of the longer trainings")
    p.add_argument("--logs", nargs="+", required=True, help="train logs of the compared models (both budgets)")
    p.add_argument("--out", required=True)
    p.add_argument("--out-figure", required=True)
    p = add("evaluate", cmd_evaluate, "reconstruction metrics of one model on the test split", config=False)
    p.add_argument("--weights", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--out-documents", help="per-document sums of squares (for document-bootstrap intervals)")
    p = add("gather-metrics", cmd_gather_metrics, "one tidy table and figure over models and seeds")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--documents", nargs="+", required=True, help="per-document tables written by evaluate")
    p.add_argument("--parameters", nargs="+", required=True)
    p.add_argument("--out-metrics", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-parameters", required=True)
    p.add_argument("--out-comparisons", help="each term against its control (featint.kinds.COMPARISONS)")
    p.add_argument("--out-figure", required=True)
    p = add("geometry", cmd_geometry, "decoder geometry, norm clustering, contributions, PCA of one model")
    p.add_argument("--weights", required=True, help="trained weights.safetensors")
    p.add_argument("--init", required=True, help="step-0 weights the decoder is compared with (init.safetensors)")
    p.add_argument("--activations", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("gather-geometry", cmd_gather_geometry, "geometry summary, verdicts and figures over models and seeds")
    p.add_argument("--features", nargs="+", required=True)
    p.add_argument("--summaries", nargs="+", required=True)
    p.add_argument("--pca", nargs="+", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-verdicts", required=True)
    p.add_argument("--figures", required=True, help="figure directory")
    p = add("behaviour-reference", cmd_behaviour_reference,
            "clean, zero- and mean-ablation per-token KL/CE on the test windows")
    p.add_argument("--lm", required=True, help="Hugging Face model directory")
    p.add_argument("--activations", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("behaviour", cmd_behaviour, "splice one model's reconstructions into the LM: per-token KL/CE")
    p.add_argument("--lm", required=True, help="Hugging Face model directory")
    p.add_argument("--weights", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("gather-behaviour", cmd_gather_behaviour, "bootstrap summary over models and seeds, and figures")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--figures", required=True, help="figure directory")
    p = add("secondary-sae", cmd_secondary_sae, "train the secondary SAE on a model's NFM interaction embedding")
    p.add_argument("--weights", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--out", required=True, help="secondary SAE directory")
    p = add("interventions", cmd_interventions, "2x2 stimuli, feature selection, ANOVAs, clamping, generations")
    p.add_argument("--lm", required=True, help="Hugging Face model directory")
    p.add_argument("--weights", required=True)
    p.add_argument("--secondary", required=True, help="secondary SAE directory")
    p.add_argument("--activations", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("gather-interventions", cmd_gather_interventions, "FDR over clamps, summary and figures")
    p.add_argument("--models", nargs="+", required=True, help="per-model intervention directories")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", required=True)
    p = add("ablation", cmd_ablation, "train and evaluate one ablation instance (a row of the ablation table)")
    p.add_argument("--instance", required=True, help="the row as JSON (column -> value)")
    p.add_argument("--activations", required=True)
    p.add_argument("--lr-tables", nargs="*", help="lr-selection tables of the instance's kind and of standard "
                   "(when training.lr is null)")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("gather-ablations", cmd_gather_ablations, "one table and figure over the ablation instances",
            config=False)
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-figure", required=True)
    p = add("run-info", cmd_run_info, "the run's full config (defaults filled) and software versions")
    p.add_argument("--out-config", required=True)
    p.add_argument("--out-versions", required=True)
    p = add("layer-models", cmd_layer_models, "train and evaluate the layer sweep's kinds at one layer, one seed")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--activations", required=True, help="that layer's activations directory")
    p.add_argument("--lr-tables", nargs="*", help="the run's LR-selection tables (each names its kind)")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = add("gather-layers", cmd_gather_layers, "every comparison and kind per layer: tables and figure")
    p.add_argument("--folders", nargs="+", required=True, help="the layer-models output folders")
    p.add_argument("--out", required=True)
    p = add("import-saelens", cmd_import_saelens, "a SAELens TopK SAE (sae.path) as the run's standard model")
    p.add_argument("--activations", required=True, help="the run's activations directory (splits + normaliser)")
    p.add_argument("--seed", type=int, required=True, help="the seed whose standard model it stands for")
    p.add_argument("--out", required=True, help="results/<run>/models/standard/seed~<s>")
    p = add("claims", cmd_claims, "the paper's headline claims beside this run's numbers", config=False)
    p.add_argument("--paper-claims", required=True, help="config/paper_claims.tsv")
    p.add_argument("--results", required=True, help="results/<run>")
    p.add_argument("--run", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-markdown", required=True)
    p.add_argument("--out-kinds", help="every kind's test FVU (and spliced KL) against its parameter count")
    p.add_argument("--out-figure", help="the figure of that table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    threads = set_threads(max(1, int(args.threads * args.cpu_share)))
    started = time.perf_counter()
    try:
        if getattr(args, "config", None) or getattr(args, "config_json", None):
            seed_everything(_settings(args).seed)
        args.func(args)
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
