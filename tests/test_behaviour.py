"""Behavioural evaluation: known answers of the metrics, the stage on real (tiny) activations, the summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_extraction_settings

from featint import stats
from featint.activations import ActivationStore, extract_split, fit_normaliser
from featint.behaviour import (
    BehaviourError,
    CleanDistribution,
    check_residual_matches_store,
    kl_and_ce,
    kl_per_token,
    next_token_ce,
    run_behaviour,
    run_reference,
    summarise,
)
from featint.config import Settings
from featint.errors import ShardError
from featint.lm import HookPoint
from featint.models import build_model, save_model
from featint.normaliser import Normaliser
from featint.splice import default_positions, run_with_splice

# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_kl_known_answer() -> None:
    p = torch.tensor([[0.0, 0.0]])  # uniform
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_per_token(p, q, chunk_tokens=1).item() == pytest.approx(expected, rel=1e-6)


def test_kl_of_a_distribution_with_itself_is_exactly_zero_and_matches_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(37, 5000, generator=generator) * 3
    other = clean + torch.randn(37, 5000, generator=generator) * 0.5
    assert kl_per_token(clean, clean).abs().max().item() == 0.0
    log_p, log_q = torch.log_softmax(clean.double(), -1), torch.log_softmax(other.double(), -1)
    reference = (log_p.exp() * (log_p - log_q)).sum(-1)
    torch.testing.assert_close(kl_per_token(clean, other, chunk_tokens=8), reference, rtol=0, atol=1e-5)


def test_ce_known_answer_and_missing_targets() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    _, ce = kl_and_ce(CleanDistribution.from_logits(logits), logits, torch.tensor([2, -1]))
    assert ce[0].item() == pytest.approx(-math.log(0.7), rel=1e-6)
    assert math.isnan(ce[1].item())
    tokens = torch.tensor([[0, 2]])
    assert next_token_ce(logits[None, :2], tokens).item() == pytest.approx(-math.log(0.7), rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_logit_makes_its_tokens_kl_non_finite(bad: float) -> None:
    """evaluate_conditions checks the [N] KLs instead of the [N, vocab] logits: one bad logit, wherever it
    sits in the vocabulary, must show in its token's KL and only there."""
    generator = torch.Generator().manual_seed(1)
    clean = CleanDistribution.from_logits(torch.randn(4, 3000, generator=generator))
    logits = torch.randn(4, 3000, generator=generator)
    logits[2, 1234] = bad
    kl, _ = kl_and_ce(clean, logits, None, chunk_tokens=3)
    assert torch.isfinite(kl).tolist() == [True, True, False, True]


# ---------------------------------------------------------------------------------------------------------
# Statistics


def test_cluster_bootstrap_weights() -> None:
    weights = stats.cluster_bootstrap_weights(7, 50, seed=3)
    assert weights.shape == (51, 7)
    assert np.all(weights[0] == 1.0) and np.all(weights.sum(1) == 7)
    assert np.array_equal(weights, stats.cluster_bootstrap_weights(7, 50, seed=3))


def test_nested_bootstrap_keeps_the_between_document_variance() -> None:
    # 10 documents x 20 windows; windows of a document share its effect (sd 1): the spread of the mean comes
    # from the documents, which a bootstrap over windows alone would miss.
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(10), 20)
    values = rng.normal(0.0, 1.0, 10)[groups] + rng.normal(0.0, 0.01, groups.size)
    nested = stats.nested_cluster_bootstrap_weights(groups, 2000, seed=0)
    windows_only = stats.cluster_bootstrap_weights(groups.size, 2000, seed=0)
    assert np.all(nested[0] == 1.0) and nested.shape == (2001, 200)
    se_nested = np.std((nested @ values) / nested.sum(1))
    se_windows = np.std((windows_only @ values) / windows_only.sum(1))
    document_se = values.reshape(10, 20).mean(1).std(ddof=1) / np.sqrt(10)
    assert 0.8 * document_se < se_nested < 1.2 * document_se
    assert se_windows < 0.3 * se_nested
    # one window per document: the one-stage bootstrap over documents (every replicate draws n units)
    single = stats.nested_cluster_bootstrap_weights(np.arange(7), 50, seed=3)
    assert np.all(single.sum(1) == 7)
    assert np.array_equal(single, stats.nested_cluster_bootstrap_weights(np.arange(7), 50, seed=3))


def test_windows_spread_over_every_document() -> None:
    from featint.behaviour import spread_over_documents

    doc_of_window = pd.Series(np.repeat([0, 1, 2, 3], [2, 40, 5, 30]))
    chosen = spread_over_documents(doc_of_window, 13)
    assert chosen.size == 13 and set(doc_of_window[chosen]) == {0, 1, 2, 3}
    per_doc = doc_of_window[chosen].value_counts()
    assert per_doc[0] == 2 and per_doc.max() - per_doc[per_doc.index != 0].min() <= 1
    assert spread_over_documents(doc_of_window, 500).size == 77  # all there are


def test_benjamini_hochberg_known_answer() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    q = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(q[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(q[4])


def _planted_tokens(n_windows: int = 12, per_window: int = 5) -> pd.DataFrame:
    """Per-token rows where every reconstruction KL is exactly 2x its epsilon control, token by token."""
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.1, size=(n_windows, per_window))
    ce_clean = rng.uniform(2, 4, size=(n_windows, per_window))
    rows = []

    def add(model: str, seed: int, condition: str, kind: str, component: str, kl: np.ndarray, ce: np.ndarray,
            draw: int = -1) -> None:
        w, p = np.meshgrid(np.arange(n_windows), np.arange(per_window), indexing="ij")
        rows.append(pd.DataFrame({"run": "t", "model": model, "seed": np.int32(seed), "condition": condition,
                                  "condition_kind": kind, "component": component, "draw": np.int16(draw),
                                  "doc_id": w.ravel() // 3, "window": w.ravel(), "position": p.ravel() + 1,
                                  "spliced": True,
                                  "kl": kl.ravel(), "ce": ce.ravel(), "error_norm": 1.0}))

    add("reference", -1, "clean", "reference", "clean", np.zeros_like(base), ce_clean)
    add("reference", -1, "zero_ablation", "reference", "zero_ablation", base * 0 + 5.0, ce_clean + 4.0)
    add("reference", -1, "mean_ablation", "reference", "mean_ablation", base * 0 + 3.0, ce_clean + 3.0)
    for model, factor in (("standard", 1.0), ("joint", 0.5)):
        add(model, 0, "sae", "reconstruction", "sae", 2 * base * factor, ce_clean + base * factor)
        for draw in range(3):
            add(model, 0, "epsilon:sae", "epsilon_random", "sae", base * factor, ce_clean + 0.5 * base * factor, draw)
    # the joint model's full reconstruction: 3x its own epsilon control, which has 1/4 of the SAE path's norm KL
    add("joint", 0, "full", "reconstruction", "full", 0.375 * base, ce_clean + 0.2 * base)
    for draw in range(3):
        add("joint", 0, "epsilon:full", "epsilon_random", "full", 0.125 * base, ce_clean + 0.1 * base, draw)
    return pd.concat(rows, ignore_index=True)


def test_summary_known_answers_and_pairing() -> None:
    tokens = _planted_tokens()
    summary = summarise(tokens, "t", n_boot=300, level=0.95, seed=0)
    boot = summary[summary["method"] == "document_window_bootstrap"].set_index(
        ["model", "seed", "condition", "metric", "reference"])
    ratio = boot.loc[("standard", 0, "sae", "pathology_ratio", "epsilon_own_norm")]
    # paired resampling: an exact 2x per token gives exactly 2 in every replicate
    assert ratio["estimate"] == pytest.approx(2.0) and ratio["ci_low"] == pytest.approx(2.0)
    assert ratio["ci_high"] == pytest.approx(2.0)
    # the paper's definition divides every condition by the epsilon control at the SAE path's error norm
    paper_ratio = boot.loc[("joint", 0, "full", "pathology_ratio", "epsilon_sae_norm")]
    assert paper_ratio["estimate"] == pytest.approx(0.375 / 0.5) and paper_ratio["ci_low"] == pytest.approx(0.75)
    assert boot.loc[("joint", 0, "full", "pathology_ratio", "epsilon_own_norm")]["estimate"] == pytest.approx(3.0)
    improvement = boot.loc[("joint", 0, "sae", "improvement_kl", "standard")]
    assert improvement["estimate"] == pytest.approx(0.5) and improvement["ci_high"] == pytest.approx(0.5)
    recovered = boot.xs(("standard", 0, "sae", "ce_loss_recovered"), level=[0, 1, 2, 3]).iloc[0]
    kl = tokens[(tokens["model"] == "standard") & (tokens["condition"] == "sae")]
    expected = 1.0 - (kl["ce"].mean() - tokens[tokens["condition"] == "clean"]["ce"].mean()) / 4.0
    assert recovered["estimate"] == pytest.approx(expected)
    assert recovered["ci_low"] < recovered["estimate"] < recovered["ci_high"]
    pooled = summary[summary["seed"].isna()]
    assert set(pooled["model"]) == {"standard", "joint"} and (pooled["n_seeds"] == 1).all()
    paper = summary[summary["method"] == "paper_unpaired_t"].set_index(["model", "condition", "metric", "reference"])
    kl_sae = kl["kl"].to_numpy()
    eps = tokens[(tokens["model"] == "standard") & (tokens["condition"] == "epsilon:sae")]["kl"].to_numpy()
    from scipy.stats import ttest_ind

    assert paper.loc[("standard", "sae", "paper_t", "epsilon_own_norm"), "estimate"] == pytest.approx(
        ttest_ind(kl_sae, eps).statistic)


def test_summary_rejects_tables_over_different_tokens() -> None:
    tokens = _planted_tokens()
    tokens = tokens[~((tokens["model"] == "joint") & (tokens["window"] == 0))]
    with pytest.raises(BehaviourError, match="same windows"):
        summarise(tokens, "t", n_boot=10, level=0.95, seed=0)


# ---------------------------------------------------------------------------------------------------------
# The stage on real activations of the embedded model


@pytest.fixture(scope="module")
def activations(tmp_path_factory: pytest.TempPathFactory, embedded_lm_dir: Path) -> Path:
    from conftest import SAMPLE_TEXTS

    root = tmp_path_factory.mktemp("behaviour")
    documents = pd.DataFrame({"doc_id": pd.array([0, 1, 2, 3], dtype="int32"), "title": list("abcd"),
                              "text": SAMPLE_TEXTS, "n_chars": [len(t) for t in SAMPLE_TEXTS],
                              "split": ["train", "train", "test", "test"]})
    documents.to_parquet(root / "documents.parquet")
    settings = tiny_extraction_settings()
    for split in ("train", "test"):
        extract_split(split=split, documents_path=root / "documents.parquet", model_directory=embedded_lm_dir,
                      out_dir=root / "acts" / split, model=settings.model, hook=settings.hook,
                      extraction=settings.extraction, train_dir=None if split == "train" else root / "acts" / "train")
    fit_normaliser(root / "acts" / "train", "zscore", 1e-6, root / "acts" / "normaliser.safetensors")
    return root / "acts"


def behaviour_settings(**behaviour: object) -> Settings:
    return Settings.from_dict({"hook": {"layer": 3}, "sae": {"n_features": 64, "k": 4},
                               "nfm": {"embed_dim": 4, "truncated_k": 2},
                               "behaviour": {"windows": 4, "positions": 12, "epsilon_draws": 2, **behaviour}})


@pytest.fixture(scope="module")
def joint_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = behaviour_settings()
    torch.manual_seed(0)
    model = build_model("joint", 576, settings.sae, settings.nfm)
    path = tmp_path_factory.mktemp("model") / "weights.safetensors"
    save_model(model, path, extra={"hook_name": "blocks.3.hook_resid_pre", "seed": 0})
    return path


@pytest.mark.slow
@torch.no_grad()
def test_reference_conditions_match_direct_computations(activations: Path, embedded_lm_dir: Path, bridge,
                                                        tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = behaviour_settings()
    frame = run_reference(settings, embedded_lm_dir, activations, tmp_path / "ref.parquet", run="t")
    assert set(frame["condition"]) == {"clean", "zero_ablation", "mean_ablation"}
    assert frame[frame["condition"] == "clean"]["kl"].abs().max() == 0.0
    assert frame[frame["position"] == 0]["kl"].abs().max() == 0.0  # BOS kept clean: nothing before it changed
    assert not frame[frame["position"] == 0]["spliced"].any()
    # zero-ablation by a hooked full forward of the same tokens gives the same per-token KL and CE
    store = ActivationStore(activations / "test")
    tokens_table = store.tokens()
    window = int(frame["window"].iloc[0])
    ids = tokens_table[tokens_table["window"] == window].sort_values("position")["token_id"].to_numpy()[:13]
    tokens = torch.from_numpy(ids[None, :12].astype(np.int64))
    clean = bridge(tokens)
    zeroed = run_with_splice(bridge, tokens, HookPoint(3, "resid_pre"), torch.zeros_like,
                             positions=default_positions(1, 12))
    expected_kl = kl_per_token(clean, zeroed)[0].numpy()
    rows = frame[(frame["condition"] == "zero_ablation") & (frame["window"] == window)].sort_values("position")
    np.testing.assert_allclose(rows["kl"].to_numpy(), expected_kl, atol=2e-4)
    targets = torch.from_numpy(ids[1:13].astype(np.int64))
    expected_ce = -torch.log_softmax(zeroed[0].double(), -1)[torch.arange(12), targets]
    np.testing.assert_allclose(rows["ce"].to_numpy(), expected_ce.numpy(), atol=2e-4)
    # mean-ablation error norm = distance of the clean residual to the raw train mean
    normaliser = Normaliser.load(activations / "normaliser.safetensors")
    residual = bridge(tokens, stop_at_layer=3)[0]
    mean_rows = frame[(frame["condition"] == "mean_ablation") & (frame["window"] == window)].sort_values("position")
    expected_norm = (residual - normaliser.raw_mean).norm(dim=-1)[1:].numpy()
    np.testing.assert_allclose(mean_rows["error_norm"].to_numpy()[1:], expected_norm, rtol=1e-4)


@pytest.mark.slow
def test_model_conditions_are_deterministic_with_matched_epsilon(activations: Path, embedded_lm_dir: Path,
                                                                  joint_weights: Path, tmp_path: Path) -> None:
    settings = behaviour_settings()
    first = run_behaviour(settings, embedded_lm_dir, joint_weights, activations, tmp_path / "a.parquet", run="t")
    again = run_behaviour(settings, embedded_lm_dir, joint_weights, activations, tmp_path / "b.parquet", run="t")
    pd.testing.assert_frame_equal(first, again)
    assert set(first["condition"]) == {"sae", "sae+linear", "sae+interaction", "full", "epsilon:sae",
                                       "epsilon:sae+linear", "epsilon:sae+interaction", "epsilon:full"}
    assert first.groupby("condition")["draw"].nunique()["epsilon:full"] == 2
    spliced = first[first["spliced"]]
    for component in ("sae", "full"):
        recon = spliced[spliced["condition"] == component].set_index(["window", "position"])["error_norm"]
        for draw in (0, 1):
            eps = spliced[(spliced["condition"] == "epsilon:" + component) & (spliced["draw"] == draw)]
            np.testing.assert_allclose(eps.set_index(["window", "position"])["error_norm"].loc[recon.index],
                                       recon, rtol=1e-4)
    assert (spliced["kl"] >= -1e-6).all() and (first[first["position"] == 0]["kl"] == 0).all()


@pytest.mark.slow
def test_bad_inputs_stop_with_clear_errors(activations: Path, embedded_lm_dir: Path, joint_weights: Path,
                                           tmp_path: Path) -> None:
    settings = behaviour_settings()
    torch.manual_seed(0)
    other_hook = tmp_path / "other.safetensors"
    model = build_model("standard", 576, settings.sae, settings.nfm)
    save_model(model, other_hook, extra={"hook_name": "blocks.5.hook_resid_pre", "seed": 0})
    with pytest.raises(ShardError, match="blocks.5.hook_resid_pre"):
        run_behaviour(settings, embedded_lm_dir, other_hook, activations, tmp_path / "x.parquet", run="t")
    with torch.no_grad():
        model.sae.W_dec.fill_(float("nan"))
    nan_weights = tmp_path / "nan.safetensors"
    save_model(model, nan_weights, extra={"hook_name": "blocks.3.hook_resid_pre", "seed": 0})
    with pytest.raises(BehaviourError, match="condition 'sae'"):
        run_behaviour(settings, embedded_lm_dir, nan_weights, activations, tmp_path / "y.parquet", run="t")
    assert not (tmp_path / "y.parquet").exists()
    wrong_hook = Settings.from_dict({"hook": {"layer": 4}, "behaviour": {"windows": 2, "positions": 8}})
    with pytest.raises(ShardError, match="blocks.4.hook_resid_pre"):
        run_reference(wrong_hook, embedded_lm_dir, activations, tmp_path / "z.parquet", run="t")


def test_residual_check_names_the_store(tmp_path: Path) -> None:
    stored = torch.ones(2, 3, 4)
    hook = HookPoint(3, "resid_pre")
    assert check_residual_matches_store(stored.clone(), stored, tmp_path / "test", hook, 0.01) == 0.0
    with pytest.raises(ShardError, match="differs from the activations stored in .*test"):
        check_residual_matches_store(stored * 1.1, stored, tmp_path / "test", hook, 0.01)
