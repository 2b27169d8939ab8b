"""End-to-end: the Snakemake DAG on the tiny config, run once per session in a temporary copy of the workflow
(the ``tiny_run`` fixture of conftest.py); one test per stage reads its results, then the sweeps, the report in
a browser and an imported SAE run on top of it."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from browser import BrowserUnavailable, rendered_report
from conftest import TINY_THREADS, TinyRun, snakemake, workflow_copy

from featint.activations import ActivationStore
from featint.config import load_settings
from featint.kinds import KINDS, comparisons, lr_selection_kind
from featint.models import load_model
from featint.normaliser import Normaliser


def fvu_of(metrics: pd.DataFrame, model: str, component: str | None = None) -> float:
    """The test FVU (selected tokens, seed 0) of ``model``'s final reconstruction, or of one ``component``."""
    from featint.evaluation import final_reconstruction

    rows = metrics[(metrics["token_set"] == "selected") & (metrics["seed"] == 0) & (metrics["metric"] == "fvu")
                   & (metrics["model"] == model)]
    if component is not None:
        return float(rows[rows["component"] == component]["value"].item())
    return float(final_reconstruction(rows)["value"].item())


@pytest.mark.slow
def test_the_dag_plans_every_stage_and_a_finished_run_plans_nothing(tiny_run: TinyRun) -> None:
    for rule in ("prepare_lm", "corpus", "extract", "fit_normaliser", "summarise_activations", "select_lr",
                 "train", "evaluate_reconstruction", "gather_reconstruction", "geometry", "gather_geometry",
                 "behaviour_reference", "behaviour", "gather_behaviour", "secondary_sae", "interventions",
                 "gather_interventions", "integration", "gather_integration", "claims", "run_info"):
        assert rule in tiny_run.planned
    again = snakemake(tiny_run.workdir, "--configfile", "config/tiny.yaml", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_corpus_and_activations(tiny_run: TinyRun) -> None:
    results, workdir = tiny_run.results, tiny_run.workdir
    summary = pd.read_parquet(results / "activations" / "summary.parquet")
    assert list(summary["split"]) == ["train", "validation", "test"]
    assert (summary["tokens_selected"] > 0).all()
    assert (summary["tokens_position_zero"] == summary["windows"]).all()
    assert summary["outlier_threshold"].nunique() == 1  # one threshold, from train
    assert summary["hook_name"].eq("blocks.3.hook_resid_pre").all()
    normaliser = Normaliser.load(results / "activations" / "normaliser.safetensors")
    train = summary.set_index("split").loc["train"]
    assert normaliser.n_tokens == train["tokens_selected"]
    # normalised selected train tokens have mean norm ~ sqrt(d) under a z-score
    assert 0.8 * 576**0.5 < train["selected_mean_normalised_norm"] < 1.2 * 576**0.5

    documents = pd.read_parquet(results / "corpus" / "documents.parquet")
    split_of = dict(zip(documents["doc_id"], documents["split"]))
    for split in ("train", "validation", "test"):
        store = ActivationStore(results / "activations" / split)
        assert {split_of[d] for d in store.tokens()["doc_id"].unique()} == {split}
        assert sum(1 for _ in store.iter_shards()) == len(store.manifest)  # every shard verifies

    assert (results / "activations" / "figures" / "norm_by_position.png").stat().st_size > 10_000
    logs = workdir / "logs" / "tiny"
    assert {p.name for p in logs.iterdir()} >= {"prepare_lm.log", "corpus.log", "extract_train.log",
                                                 "extract_test.log", "fit_normaliser.log",
                                                 "summarise_activations.log"}
    assert (workdir / "benchmarks" / "results" / "tiny" / "extract_train.tsv").is_file()


@pytest.mark.slow
def test_training_lr_selection_and_reconstruction(tiny_run: TinyRun) -> None:
    """Every kind trained, evaluated on test, gathered with improvements over the standard SAE; an LR chosen per
    kind on validation; each term against its control, paired by seed and document."""
    results, metrics, kinds = tiny_run.results, tiny_run.metrics, set(tiny_run.kinds)
    assert {"sequential_linear_input", "sequential_poly", "sequential_mlp"} <= kinds  # rivals (joint_poly: unit tests)
    assert set(metrics["model"]) == kinds and set(metrics["split"]) == {"test"}
    improvement = metrics[(metrics["metric"] == "improvement_mse") & (metrics["reference"] == "standard")
                          & (metrics["token_set"] == "selected")]
    assert improvement.set_index("model")["value"]["standard"] == 0.0
    assert set(improvement["model"]) == kinds
    fvu = metrics[(metrics["metric"] == "fvu") & (metrics["component"].isin(["full", "sae"]))]
    assert fvu["value"].between(0.0, 1.5).all()
    parameters = pd.read_parquet(results / "metrics" / "parameters.parquet")
    totals = parameters[parameters["component"] == "total"].set_index("model")["parameters"]
    assert abs(totals["param_matched"] - totals["joint"]) < 2 * 576 + 1
    for kind in kinds:
        model_dir = results / "models" / kind / "seed~0"
        assert {"weights.safetensors", "init.safetensors", "train_log.parquet", "parameters.parquet",
                "reconstruction.parquet"} <= {p.name for p in model_dir.iterdir()}
        assert not (model_dir / "checkpoint.pt").exists()
    # a learning rate chosen per kind on the validation split (sequential_truncated shares sequential's choice)
    lr = pd.read_parquet(results / "lr_selection" / "summary.parquet")
    assert set(lr["model"]) == {lr_selection_kind(kind) for kind in kinds} == kinds - {"sequential_truncated"}
    for _, table in lr.groupby("model"):
        assert table["chosen"].sum() == 1
        assert table.loc[table["chosen"], "validation_fvu"].item() == table["validation_fvu"].min()
    assert (results / "lr_selection" / "figures" / "lr_selection.png").stat().st_size > 10_000
    summary_rec = pd.read_parquet(results / "metrics" / "reconstruction_summary.parquet")
    assert (summary_rec["n_documents"] == tiny_run.test_documents).all() and summary_rec["n_tokens"].gt(0).all()
    joint_gain = summary_rec[(summary_rec["model"] == "joint") & (summary_rec["metric"] == "improvement_mse")
                             & (summary_rec["reference"] == "standard")
                             & (summary_rec["token_set"] == "selected")].iloc[0]
    assert joint_gain["ci_low"] <= joint_gain["mean"] <= joint_gain["ci_high"]
    table = pd.read_parquet(results / "metrics" / "comparisons.parquet")
    pooled = table[table["seed"].isna() & (table["token_set"] == "selected")]
    assert set(zip(pooled["model"], pooled["reference"])) == {
        (c.model, c.reference) for c in comparisons(kinds, baseline=False)}
    assert pooled[["estimate", "ci_low", "ci_high"]].notna().all().all()
    rival = pooled[(pooled["model"] == "sequential_poly")].iloc[0]
    assert rival["estimate"] == pytest.approx(1 - fvu_of(metrics, "sequential_poly") / fvu_of(
        metrics, "sequential_linear_input"), rel=1e-5)
    assert abs(rival["model_parameters"] - rival["reference_parameters"]) < 0.01 * rival["model_parameters"]
    # the convergence check: standard and joint retrained at twice the budget, criteria reported
    convergence = pd.read_parquet(results / "convergence" / "summary.parquet")
    assert set(convergence["quantity"]) == {"test_fvu", "improvement_mse"}
    assert (convergence["tokens_longer"] == 2 * convergence["tokens_default"]).all()
    assert (results / "convergence" / "figures" / "convergence.png").stat().st_size > 10_000


@pytest.mark.slow
def test_saelens_export_reconstructs_as_featint(tiny_run: TinyRun) -> None:
    """Every SAE-only model also in SAELens's format, its reconstruction equal to ours on raw test activations."""
    from featint.saelens import saelens_reconstruction

    results = tiny_run.results
    exported = results / "models" / "standard" / "seed~0" / "saelens"
    assert json.loads((exported / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    raw = torch.cat([v for _, v in ActivationStore(results / "activations" / "test").iter_shards()])[:256]
    standard_model, _ = load_model(results / "models" / "standard" / "seed~0" / "weights.safetensors")
    normaliser = Normaliser.load(results / "activations" / "normaliser.safetensors")
    with torch.no_grad():
        ours = normaliser.invert(standard_model(normaliser.apply(raw)).total)
    torch.testing.assert_close(saelens_reconstruction(exported, raw), ours, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_geometry(tiny_run: TinyRun) -> None:
    results = tiny_run.results
    verdicts = pd.read_parquet(results / "geometry" / "verdicts.parquet")
    assert set(verdicts["model"]) == {kind for kind in tiny_run.kinds if KINDS[kind].nfm_geometry}
    bimodal = verdicts[(verdicts["metric"] == "verdict_bimodal") & (verdicts["subset"] == "all")]
    assert set(bimodal["model"]) == set(verdicts["model"]) and bimodal["value"].isin([0.0, 1.0]).all()
    features = pd.read_parquet(results / "geometry" / "joint" / "seed~0" / "features.parquet")
    assert len(features) == 256 and features["squared_norm"].gt(0).all()
    assert (results / "geometry" / "figures" / "squared_norm_histograms.png").stat().st_size > 10_000


@pytest.mark.slow
def test_behaviour(tiny_run: TinyRun) -> None:
    """Every model spliced on test windows, references, a bootstrap summary, figures."""
    results, kinds = tiny_run.results, set(tiny_run.kinds)
    behaviour = pd.read_parquet(results / "behaviour" / "summary.parquet")
    boot = behaviour[behaviour["method"] == "document_window_bootstrap"]
    assert set(boot["model"]) == kinds | {"reference"}
    ratios = boot[(boot["metric"] == "pathology_ratio") & (boot["reference"] == "epsilon_own_norm")
                  & boot["seed"].isna()]
    assert set(ratios["model"]) == kinds and (ratios["estimate"] > 0).all()
    assert (ratios["ci_low"] <= ratios["estimate"]).all() and (ratios["estimate"] <= ratios["ci_high"]).all()
    clean = boot[(boot["model"] == "reference") & (boot["condition"] == "clean")].set_index("metric")["estimate"]
    assert clean["mean_kl"] == 0.0 and clean["ce_loss_recovered"] == 1.0
    tokens = pd.read_parquet(results / "behaviour" / "joint" / "seed~0" / "tokens.parquet")
    assert tokens["window"].nunique() == 8 and tokens["position"].max() == 15
    assert tokens["doc_id"].nunique() == min(8, tiny_run.test_documents)  # windows spread over the test documents
    assert (boot["n_documents"] == tokens["doc_id"].nunique()).all()
    assert (results / "behaviour" / "figures" / "pathology_ratios.png").stat().st_size > 10_000


@pytest.mark.slow
def test_interventions(tiny_run: TinyRun) -> None:
    """Secondary SAEs, selection + ANOVAs, clamps with an exact no-op, FDR, a tidy summary, figures."""
    results = tiny_run.results
    clamp = pd.read_parquet(results / "interventions" / "clamp_statistics.parquet")
    assert set(clamp["model"]) == {"sequential", "joint"}
    noop = clamp[(clamp["test"] == "noop")]
    assert len(noop) and (noop["value"] == 1.0).all() and (noop["max_abs_delta"] == 0.0).all()
    unit = clamp[(clamp["value"] == 1.0) & (clamp["mode"] == "multiply") & (clamp["reference"] == "delta_vs_pipeline")]
    assert (unit["test"] == "noop").all()
    tested = clamp[clamp["test"] == "two_way_anova_type2_word_means"]
    assert tested["q"].notna().any() and tested["p"].between(0, 1).all()
    mixed = clamp[clamp["test"] == "mixedlm_crossed_prompt_word"]
    assert len(mixed) == len(tested) and mixed["p"].between(0, 1).all() and mixed["word_var"].ge(0).all()
    summary = pd.read_parquet(results / "interventions" / "summary.parquet")
    secondary = summary[summary["quantity"] == "secondary_F"]
    assert set(zip(secondary["role"], secondary["sentences"])) == {
        (role, sentences) for role in ("top_ranked", "clamped") for sentences in ("select", "test")}
    # tidy: what a row measures is in `quantity`, of what in its own columns, never packed into the name
    assert not summary["quantity"].str.contains(r"[\[|]|(?:^|_)(?:select|test)(?:_|$)|emotion|formality").any()
    clamp_rows = summary[summary["quantity"] == "clamp_min_p"]
    assert len(clamp_rows) and clamp_rows[["role", "reference", "test"]].notna().all().all()
    secondary_log = pd.read_parquet(results / "interventions" / "joint" / "seed~0" / "secondary" / "train_log.parquet")
    assert secondary_log["fvu"].iloc[-1] < 1.0
    generations = pd.read_parquet(results / "interventions" / "generations.parquet")
    assert generations["continuation"].str.len().gt(0).all()
    assert (results / "interventions" / "figures" / "clamp_interaction_lines.png").stat().st_size > 10_000


@pytest.mark.slow
def test_integration(tiny_run: TinyRun) -> None:
    """The pair product test on the tiny run's standard and joint SAEs: every tested pair on the data and on each
    surrogate draw, per target, with its statistic and flags; the summary counts them; contexts carry text."""
    results = tiny_run.results / "integration"
    pairs = pd.read_parquet(results / "pairs.parquet")
    assert set(pairs["model"]) == {"standard", "joint"} and set(pairs["target"]) == {"activation", "residual"}
    assert set(pairs["data"]) == {"data", "surrogate"} and set(pairs["draw"]) == {-1, 0, 1, 2}
    tested = pairs[pairs["t"].notna()]
    assert len(tested) > 0 and (tested["latent_a"] < tested["latent_b"]).all()
    assert (tested["ci_low"] <= tested["estimate"]).all() and (tested["estimate"] <= tested["ci_high"]).all()
    # z is defined exactly where a reference exists: a finite t of the same pair on another surrogate draw (the
    # data is referred to every draw, a draw to the others; re-encoding can leave a pair too rare to test there)
    key = ["model", "target", "latent_a", "latent_b"]
    finite_draws = tested[tested["draw"] >= 0].groupby(key)["draw"].apply(set)
    references = [len(finite_draws.get(tuple(row[key]), set()) - {row["draw"]}) for _, row in tested.iterrows()]
    assert (tested["z"].notna().to_numpy() == (np.asarray(references) > 0)).all()
    assert tested["z"].notna().mean() > 0.5 and tested["q"].dropna().between(0, 1).all()
    summary = pd.read_parquet(results / "summary.parquet")
    data = summary[summary["data"] == "data"].set_index(["model", "target"])
    counted = tested[tested["data"] == "data"].groupby(["model", "target"])["flagged"].sum()
    assert (data.loc[counted.index, "pairs_flagged"] == counted).all()
    contexts = pd.read_parquet(results / "contexts.parquet")
    assert {"before", "token", "z", "target"} <= set(contexts.columns)
    flagged = tested[(tested["data"] == "data") & tested["flagged"]]
    assert contexts.empty == flagged.empty  # the top flagged pairs with their text, or nothing flagged
    assert contexts["token"].str.len().gt(0).all()
    assert (results / "figures" / "top_pairs.png").stat().st_size > 5_000
    assert (results / "replication.parquet").is_file()


@pytest.mark.slow
def test_claims_come_from_the_artefacts(tiny_run: TinyRun) -> None:
    results, metrics = tiny_run.results, tiny_run.metrics
    claims = pd.read_parquet(results / "report" / "claims.parquet").set_index("claim_id")
    own = metrics[(metrics["model"] == "joint") & (metrics["metric"] == "improvement_mse")
                  & (metrics["reference"] == "own_sae") & (metrics["token_set"] == "selected")]["value"].mean()
    assert claims.loc["joint_improvement", "ours_paper_definition"] == pytest.approx(own)
    behaviour = pd.read_parquet(results / "behaviour" / "summary.parquet")
    ratio = behaviour[(behaviour["method"] == "document_window_bootstrap") & (behaviour["model"] == "standard")
                      & (behaviour["condition"] == "sae") & (behaviour["metric"] == "pathology_ratio")
                      & (behaviour["reference"] == "epsilon_own_norm")
                      & behaviour["seed"].isna()]["estimate"].item()
    assert claims.loc["sae_pathology_ratio", "ours_corrected"] == pytest.approx(ratio)
    unreported = ["budget_convergence", "budget_extrapolated", "nonlinear_vs_linear_control",
                  "dual_encoding"]  # no number in the paper
    assert claims.drop(index=unreported)["paper_value"].notna().all() and len(claims) >= 20
    table = pd.read_parquet(results / "metrics" / "comparisons.parquet")
    pooled = table[table["seed"].isna() & (table["token_set"] == "selected")]
    best = pooled[(pooled["reference"] == "sequential_linear_input")]["estimate"].max()
    assert claims.loc["nonlinear_vs_linear_control", "ours_corrected"] == pytest.approx(best)
    by_parameters = pd.read_parquet(results / "report" / "kinds_by_parameters.parquet")
    assert set(by_parameters["model"]) == tiny_run.kinds
    assert set(by_parameters["quantity"]) == {"test_fvu", "spliced_kl"}
    assert (results / "report" / "figures" / "kinds_by_parameters.png").stat().st_size > 10_000
    convergence = pd.read_parquet(results / "convergence" / "summary.parquet")
    largest = convergence.loc[convergence["quantity"] == "test_fvu", "change"].abs().max()
    assert claims.loc["budget_convergence", "ours_corrected"] == pytest.approx(largest)
    summary = pd.read_parquet(results / "integration" / "summary.parquet")
    flagged = summary[(summary["model"] == "standard") & (summary["data"] == "data")
                      & (summary["target"] == "residual")]["flagged_share"]
    assert claims.loc["dual_encoding", "ours_corrected"] == pytest.approx(flagged.mean())
    assert claims.loc["dual_encoding", "seeds"] == len(flagged) and "surrogates" in claims.loc["dual_encoding", "note"]
    assert claims.loc["joint_improvement", "rests_on"].startswith(f"{tiny_run.test_documents} test documents")
    assert "| Joint training improves reconstruction |" in (results / "report" / "claims.md").read_text()
    assert "snakemake" in (results / "report" / "versions.tsv").read_text()


@pytest.mark.slow
def test_html_report_renders_in_a_browser(tiny_run: TinyRun, tmp_path: Path) -> None:
    """The HTML report builds from the finished run and renders in headless Chromium: every registered result
    (each figure, the claims table, config and versions) is listed, each figure displays as an image, the
    claims table shows, and the page logs no console error. A screenshot is left in the test's folder."""
    report = tmp_path / "report.html"
    built = snakemake(tiny_run.workdir, "--configfile", "config/tiny.yaml", "--report", str(report))
    assert built.returncode == 0, built.stderr[-3000:]
    try:
        seen = rendered_report(report, tmp_path / "report.png")
    except BrowserUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no headless Chromium: {exc}")
    assert not seen.errors, seen.errors
    # every figure the run made (the sweeps' come with their own targets), the claims, config and versions
    made = {str(path.relative_to(tiny_run.workdir)) for path in tiny_run.results.rglob("*.png")
            if not {"ablations", "layers"} & set(path.relative_to(tiny_run.results).parts)}
    assert made and made <= set(seen.results), sorted(made - set(seen.results))
    assert sorted(seen.listed) == sorted(seen.results)  # each shown on its (sub)category's page
    assert sorted(seen.images) == sorted(path for path in seen.results if path.endswith(".png"))  # all decode
    claims = next(text for path, text in seen.texts.items() if path.endswith("claims.md"))
    assert "| Joint training improves reconstruction |" in claims
    assert any(path.endswith("versions.tsv") and "snakemake" in text for path, text in seen.texts.items())
    assert (tmp_path / "report.png").stat().st_size > 20_000


@pytest.mark.slow
def test_ablation_sweep_and_one_instance_alone(tiny_run: TinyRun) -> None:
    workdir, results = tiny_run.workdir, tiny_run.results
    sweep = snakemake(workdir, *TINY_THREADS, "ablations", "--configfile", "config/tiny.yaml")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    ablations = pd.read_parquet(results / "ablations" / "summary.parquet")
    assert len(ablations) == 3 and ablations["fvu"].between(0, 1.5).all()
    standard_row = ablations[ablations["ablation_kind"] == "standard"].iloc[0]
    assert standard_row["fvu"] == pytest.approx(fvu_of(tiny_run.metrics, "standard", component="sae"))  # same model
    instance = "kind~joint/seed~0/k~8/width~256/embed~4/decoder~free/auxk~True/truncated_k~2"
    target = f"results/tiny/ablations/{instance}/reconstruction.parquet"
    before = (workdir / target).stat().st_mtime
    alone = snakemake(workdir, *TINY_THREADS, target, "--forcerun", "ablation", "--configfile", "config/tiny.yaml")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert (workdir / target).stat().st_mtime > before
    assert re.search(r"^ablation\s+1$", alone.stdout + alone.stderr, re.MULTILINE)  # that instance only


@pytest.mark.slow
def test_budget_target(tiny_run: TinyRun) -> None:
    """`snakemake budget` on the tiny run: its 1x models are the run's own (not retrained), the 2x and 4x ones
    train with an LR chosen again at their budget; one table with the fit and every comparison per budget, a
    figure, and the claims table with the budget_extrapolated row read from it."""
    workdir, results = tiny_run.workdir, tiny_run.results
    before = (results / "models" / "joint" / "seed~0" / "weights.safetensors").stat().st_mtime
    run = snakemake(workdir, *TINY_THREADS, "budget", "--configfile", "config/tiny.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (results / "models" / "joint" / "seed~0" / "weights.safetensors").stat().st_mtime == before
    assert (results / "budget_x4" / "lr_selection" / "param_matched.parquet").is_file()
    table = pd.read_parquet(results / "budget" / "summary.parquet")
    fvu = table[table["quantity"] == "fvu"]
    assert sorted(fvu["factor"].unique()) == [1.0, 2.0, 4.0]
    assert set(fvu["model"]) == {"standard", "joint", "joint_no_interaction", "param_matched"}
    one = fvu[(fvu["model"] == "joint") & (fvu["factor"] == 1.0)]["estimate"].item()
    assert one == pytest.approx(fvu_of(tiny_run.metrics, "joint"))  # the default run's own model
    tokens = fvu[fvu["model"] == "standard"].sort_values("factor")["tokens"].tolist()
    assert tokens[1] == 2 * tokens[0] and tokens[2] == 4 * tokens[0]
    assert {"l_inf", "alpha", "l_inf_improvement", "improvement_moved"} <= set(table["quantity"])
    assert (results / "budget" / "figures" / "budget.png").stat().st_size > 10_000
    claims = pd.read_parquet(results / "budget" / "report" / "claims.parquet").set_index("claim_id")
    limit = table[(table["quantity"] == "l_inf_improvement") & (table["model"] == "joint")
                  & (table["reference"] == "standard")]["estimate"].item()
    assert claims.loc["budget_extrapolated", "ours_corrected"] == pytest.approx(limit, nan_ok=True)
    default_claims = pd.read_parquet(results / "report" / "claims.parquet").set_index("claim_id")
    assert default_claims.loc["budget_extrapolated", "interval"] == "not run"


@pytest.mark.slow
def test_layer_sweep(tiny_run: TinyRun) -> None:
    """Layer 1 extracted anew, layer 3 (the run's own) reuses the run's activations and gives the run's model."""
    workdir, results = tiny_run.workdir, tiny_run.results
    layers = snakemake(workdir, *TINY_THREADS, "layers", "--configfile", "config/tiny.yaml")
    assert layers.returncode == 0, layers.stderr[-3000:]
    assert not (results / "layers" / "layer~3" / "activations").exists()
    assert ActivationStore(results / "layers" / "layer~1" / "activations" / "test").meta.hook_name == \
        "blocks.1.hook_resid_pre"
    layer_fvu = pd.read_parquet(results / "layers" / "fvu.parquet")
    sweep_kinds = set(load_settings(workdir / "config" / "tiny.yaml").layers.kinds)
    assert set(zip(layer_fvu["layer"], layer_fvu["model"])) == {(layer, kind) for layer in (1, 3)
                                                                 for kind in sweep_kinds}
    same = layer_fvu[(layer_fvu["layer"] == 3) & (layer_fvu["model"] == "standard")
                     & (layer_fvu["token_set"] == "selected")]["fvu"].item()
    assert same == pytest.approx(fvu_of(tiny_run.metrics, "standard"))  # same layer, settings, seed and LR: same model
    layer_comparisons = pd.read_parquet(results / "layers" / "comparisons.parquet")
    pooled_layers = layer_comparisons[layer_comparisons["seed"].isna() & (layer_comparisons["token_set"] == "selected")]
    assert set(zip(pooled_layers["layer"], pooled_layers["model"], pooled_layers["reference"])) == {
        (layer, c.model, c.reference) for layer in (1, 3) for c in comparisons(sweep_kinds, baseline=False)}
    assert (results / "layers" / "figures" / "layers.png").stat().st_size > 10_000


@pytest.mark.slow
def test_bring_your_own_sae(tiny_run: TinyRun) -> None:
    """The run's exported standard SAE imported as the standard model of another run on the same activations;
    the frozen-SAE kinds, evaluation, behaviour and geometry run on it."""
    workdir, results = tiny_run.workdir, tiny_run.results
    imported = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
    imported.update({"run": "tiny_import", "models": ["standard", "sequential", "standard_refit"],
                     "single_seed_models": [], "convergence": {"models": []}})
    imported["interventions"]["models"] = ["sequential"]
    imported["sae"].update({"source": "saelens", "path": "results/tiny/models/standard/seed~0/saelens"})
    (workdir / "config" / "tiny_import.yaml").write_text(yaml.safe_dump(imported))
    for part in ("corpus", "activations"):  # the same text and activations: nothing to extract again
        shutil.copytree(results / part, workdir / "results" / "tiny_import" / part)
    targets = [f"results/tiny_import/{path}" for path in ("metrics/reconstruction_summary.parquet",
                                                          "behaviour/summary.parquet", "geometry/summary.parquet")]
    byo = snakemake(workdir, *TINY_THREADS, *targets, "--configfile", "config/tiny_import.yaml")
    assert byo.returncode == 0, byo.stderr[-3000:]
    assert re.search(r"^import_sae\s+1$", byo.stdout + byo.stderr, re.MULTILINE)
    assert not (workdir / "results" / "tiny_import" / "models" / "standard" / "seed~0" / "train_log.parquet").exists()
    imported_fvu = fvu_of(pd.read_parquet(workdir / "results" / "tiny_import" / "metrics" / "reconstruction.parquet"),
                          "standard")
    assert imported_fvu == pytest.approx(fvu_of(tiny_run.metrics, "standard"), rel=1e-4)  # the same SAE, via SAELens
    assert not (workdir / "results" / "tiny_import" / "lr_selection" / "standard.parquet").exists()


@pytest.mark.slow
def test_every_sae_only_model_has_a_saebench_core_file_that_agrees_with_the_runs_tables(tiny_run: TinyRun) -> None:
    """The default target writes SAEBench's core eval JSON for every SAE-only model; its explained variance is
    the run's raw-space test FVU complement, its MSE the per-dimension MSE times d, its CE score the behaviour
    stage's CE loss recovered."""
    from featint.kinds import SAE_ONLY

    behaviour = pd.read_parquet(tiny_run.results / "behaviour" / "summary.parquet")
    metrics_table = tiny_run.metrics
    for kind in sorted(set(SAE_ONLY) & tiny_run.kinds):
        core = json.loads((tiny_run.results / "models" / kind / "seed~0" / "saebench_core.json").read_text())
        metrics = core["eval_result_metrics"]
        rows = metrics_table[(metrics_table["model"] == kind) & (metrics_table["seed"] == 0)
                             & (metrics_table["token_set"] == "selected") & (metrics_table["component"] == "sae")]
        value = rows.set_index("metric")["value"]
        quality = metrics["reconstruction_quality"]
        assert quality["explained_variance"] == pytest.approx(1 - value["fvu_raw"], rel=1e-5)
        d = ActivationStore(tiny_run.results / "activations" / "test").meta.d_model
        assert quality["mse"] == pytest.approx(value["mse_raw"] * d, rel=1e-5)
        recovered = behaviour[(behaviour["model"] == kind) & (behaviour["seed"] == 0)
                              & (behaviour["condition"] == "sae") & (behaviour["metric"] == "ce_loss_recovered")
                              & (behaviour["method"] == "document_window_bootstrap")]["estimate"]
        assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(recovered.item(), rel=1e-9)
        assert core["eval_result_unstructured"]["model"] == kind and len(core["eval_result_details"]) > 0


def jumprelu_folder(topk_folder: Path, activations: Path, out: Path, mean_l0: int) -> Path:
    """A SAELens JumpReLU SAE folder of ``topk_folder``'s weights (a TopK export, raw-activation space) behind
    per-latent thresholds: each latent's threshold is its pre-activation quantile on the test split's tokens
    that lets it fire on about ``mean_l0 / d_sae`` of them, times a factor in [0.8, 1.2], so the SAE activates
    a varying number of latents per token, about ``mean_l0`` on average (as SAELens saves a JumpReLU SAE:
    architecture ``jumprelu`` and a ``threshold`` tensor)."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((topk_folder / "cfg.json").read_text())
    weights = load_file(str(topk_folder / "sae_weights.safetensors"))
    store = ActivationStore(activations / "test")
    raw = torch.cat([store.read_shard_rows(i, store.selected_mask())[1] for i in range(len(store.manifest))])
    pre = (raw - weights["b_dec"] * cfg["apply_b_dec_to_input"]) @ weights["W_enc"] + weights["b_enc"]
    quantile = torch.quantile(pre, 1 - mean_l0 / cfg["d_sae"], dim=0).clamp_min(1e-3)
    weights["threshold"] = (quantile * torch.linspace(0.8, 1.2, cfg["d_sae"])).contiguous()
    cfg["architecture"] = "jumprelu"
    del cfg["k"]
    out.mkdir(parents=True)
    save_file(weights, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.slow
def test_the_dag_runs_on_an_imported_jumprelu_sae(tiny_run: TinyRun) -> None:
    """A JumpReLU SAE (a varying number of active latents per token) imported as the standard model: the
    frozen-SAE kinds train on its cached codes, and evaluation, behaviour, geometry and the pair test run on
    it; its reconstruction is SAELens's JumpReLU forward of the folder."""
    from featint.saelens import saelens_reconstruction

    workdir, results = tiny_run.workdir, tiny_run.results
    run = workdir / "results" / "tiny_jumprelu"
    for part in ("corpus", "activations"):
        shutil.copytree(results / part, run / part)
    folder = jumprelu_folder(results / "models" / "standard" / "seed~0" / "saelens", run / "activations",
                             workdir / "jumprelu_sae", mean_l0=8)
    imported = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
    imported.update({"run": "tiny_jumprelu", "models": ["standard", "sequential", "standard_refit"],
                     "single_seed_models": [], "convergence": {"models": []}})
    imported["interventions"]["models"] = ["sequential"]
    imported["integration"]["models"] = ["standard"]
    imported["sae"].update({"source": "saelens", "path": str(folder)})
    (workdir / "config" / "tiny_jumprelu.yaml").write_text(yaml.safe_dump(imported))
    targets = [f"results/tiny_jumprelu/{path}" for path in (
        "metrics/reconstruction_summary.parquet", "behaviour/summary.parquet", "geometry/summary.parquet",
        "integration/summary.parquet")]
    done = snakemake(workdir, *TINY_THREADS, *targets, "--configfile", "config/tiny_jumprelu.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^import_sae\s+1$", done.stdout + done.stderr, re.MULTILINE)
    standard, extra = load_model(run / "models" / "standard" / "seed~0" / "weights.safetensors")
    assert standard.sae.activation == "jumprelu" and 4 < extra["test_l0_mean"] < 16 < extra["test_l0_max"]
    normaliser = Normaliser.load(run / "activations" / "normaliser.safetensors")
    store = ActivationStore(run / "activations" / "test")
    raw = store.read_shard_rows(0, store.selected_mask())[1]
    with torch.no_grad():
        ours = normaliser.invert(standard(normaliser.apply(raw)).total)
    torch.testing.assert_close(ours, saelens_reconstruction(folder, raw), rtol=1e-4, atol=1e-4)
    metrics = pd.read_parquet(run / "metrics" / "reconstruction.parquet")
    assert fvu_of(metrics, "sequential") < fvu_of(metrics, "standard")  # the NFM on its codes fits the residual
    l0 = metrics[(metrics["metric"] == "l0") & (metrics["model"] == "standard")
                 & (metrics["token_set"] == "selected")]["value"]
    assert l0.item() == pytest.approx(extra["test_l0_mean"], rel=0.05)
    geometry = pd.read_parquet(run / "geometry" / "summary.parquet")
    assert set(geometry["model"]) >= {"sequential"}
    assert (run / "integration" / "summary.parquet").stat().st_size > 0


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("run: bad\nextraction:\n  context_lenght: 64\n", "unknown config key 'extraction.context_lenght'"),
        ("run: bad\nhook: {layer: fifteen}\n", "config key 'hook.layer'"),
        ("run: bad\nmodel: {source: local, path: /no/such/model}\n", "model directory /no/such/model does not exist"),
        ("run: bad\nmodel: {device: cuda}\n", "model.device is 'cuda' but this machine has no usable CUDA GPU"),
    ],
    ids=["unknown-key", "wrong-type", "missing-local-model", "cuda-without-gpu"],
)
def test_bad_input_stops_at_dag_start(tmp_path: Path, config_text: str, message: str) -> None:
    workdir = workflow_copy(tmp_path)
    (workdir / "config" / "bad.yaml").write_text(config_text)
    result = snakemake(workdir, "--configfile", "config/bad.yaml", "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (workdir / "results").exists()
