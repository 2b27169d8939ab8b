"""The 2x2 experiment: stimuli checks, pooling, planted effects through the statistics, the exact no-op clamp."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from featint import stats
from featint.config import Settings
from featint.interventions import (
    Clamp,
    Pipeline,
    clamp_statistics,
    clamped_reconstruction,
    pool_per_sequence,
    primary_tests,
    prompt_logits,
    secondary_tests,
    tokenize_batch,
)
from featint.kinds import SECONDARY_KIND
from featint.lm import HookPoint
from featint.models import FeatureModel, TopKSAE, build_model
from featint.normaliser import Normaliser
from featint.splice import ModelContinuation
from featint.stimuli import StimulusError, check_length_match, length_report, load_stimuli, word_tokens

REPO = Path(__file__).resolve().parents[1]
STIMULI = REPO / "config" / "stimuli"


# ---------------------------------------------------------------------------------------------------------
# Stimuli


@pytest.fixture(scope="module")
def tokenizer(embedded_lm_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_lm_dir))


def test_shipped_stimuli_are_complete_and_length_matched(tokenizer) -> None:  # type: ignore[no-untyped-def]
    stimuli = load_stimuli(STIMULI, min_sentences_per_cell=48, min_prompts=20, min_words_per_set=8)
    assert stimuli.sentences.groupby("cell").size().min() >= 48
    assert set(stimuli.sentences["split"]) == {"select", "test"}
    report = length_report(stimuli.sentences, tokenizer)
    assert check_length_match(report, 1.5, STIMULI) <= 1.5
    per_split = report[report["split"] != "all"]
    assert per_split.groupby("split")["mean_tokens"].agg(lambda m: m.max() - m.min()).max() <= 1.5
    words = word_tokens(stimuli.words, tokenizer)
    assert words["token_id"].is_unique
    assert (words["n_tokens"] == 1).all()  # every shipped word is one token: its logit is the word's
    single = words[words["word"] == "therefore"].iloc[0]
    assert tokenizer.decode([int(single["token_id"])]) == " therefore" and single["n_tokens"] == 1


def _copy_stimuli(tmp_path: Path) -> Path:
    target = tmp_path / "stimuli"
    shutil.copytree(STIMULI, target)
    return target


def test_length_mismatch_is_an_error(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    directory = _copy_stimuli(tmp_path)
    sentences = pd.read_csv(directory / "sentences.tsv", sep="\t")
    formal = sentences["formality"] == "formal"
    sentences.loc[formal, "text"] = sentences.loc[formal, "text"] + " This clause adds several more tokens."
    sentences.to_csv(directory / "sentences.tsv", sep="\t", index=False)
    report = length_report(load_stimuli(directory).sentences, tokenizer)
    with pytest.raises(StimulusError, match="not length-matched"):
        check_length_match(report, 1.5, directory / "sentences.tsv")


def test_empty_cell_and_bad_words_name_the_file(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    directory = _copy_stimuli(tmp_path)
    sentences = pd.read_csv(directory / "sentences.tsv", sep="\t")
    cell = (sentences["formality"] == "informal") & (sentences["emotion"] == "neutral")
    sentences[~cell].to_csv(directory / "sentences.tsv", sep="\t", index=False)
    with pytest.raises(StimulusError, match=r"sentences.tsv: cell informal x neutral has 0"):
        load_stimuli(directory)
    words = pd.DataFrame({"word": ["kindness", "kinda"], "formality": "casual", "emotion": "neutral"})
    assert word_tokens(words[1:], tokenizer)["n_tokens"].item() == 2  # split words are read by their first piece
    words = pd.DataFrame({"word": ["appalling", "appallingly"], "formality": "casual", "emotion": "neutral"})
    with pytest.raises(StimulusError, match="share their first token"):
        word_tokens(words, tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Pooling


def test_pooling_ignores_padding_bos_and_excluded_tokens_on_either_side() -> None:
    values = [torch.tensor([[100.0], [1.0], [2.0], [3.0]]), torch.tensor([[100.0], [5.0]])]
    right = torch.zeros(2, 4, 1)
    left = torch.zeros(2, 4, 1)
    real_right = torch.zeros(2, 4, dtype=torch.bool)
    real_left = torch.zeros(2, 4, dtype=torch.bool)
    for i, v in enumerate(values):
        right[i, : len(v)] = v
        real_right[i, : len(v)] = True
        left[i, 4 - len(v):] = v
        real_left[i, 4 - len(v):] = True
    right[1, 2:] = left[1, :2] = -7.0  # padding values must not leak in
    pooled_right, counts = pool_per_sequence(right, real_right)
    pooled_left, _ = pool_per_sequence(left, real_left)
    torch.testing.assert_close(pooled_right, torch.tensor([[2.0], [5.0]]))
    torch.testing.assert_close(pooled_left, pooled_right)
    assert counts.tolist() == [3, 1]
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[0, 3] = False  # e.g. a massive-norm outlier
    assert pool_per_sequence(right, real_right, keep)[0][0].item() == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------------------
# Statistics on planted effects


def _planted_sentences(n_per_cell: int = 20) -> pd.DataFrame:
    cells = [(f, e) for f in ("formal", "informal") for e in ("emotional", "neutral")]
    rows = [{"formality": f, "emotion": e, "split": s} for f, e in cells for s in ("select", "test")
            for _ in range(n_per_cell)]
    frame = pd.DataFrame(rows)
    frame["cell"] = frame["formality"] + "-" + frame["emotion"]
    return frame


def test_two_way_anova_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    frame = _planted_sentences(10)
    y = rng.normal(size=len(frame)) + 2.0 * ((frame["formality"] == "formal") & (frame["emotion"] == "emotional"))
    frame["y"] = y
    table = stats.two_way_anova(frame, "y", "formality", "emotion").set_index("effect")
    # balanced design: Type II SS are the classical SS; interaction SS from cell, row and column means
    grand = frame["y"].mean()
    cell = frame.groupby(["formality", "emotion"])["y"].transform("mean")
    row = frame.groupby("formality")["y"].transform("mean")
    col = frame.groupby("emotion")["y"].transform("mean")
    ss_interaction = float(((cell - row - col + grand) ** 2).sum())
    ss_residual = float(((frame["y"] - cell) ** 2).sum())
    f_interaction = ss_interaction / (ss_residual / (len(frame) - 4))
    assert table.loc["formality:emotion", "sum_sq"] == pytest.approx(ss_interaction)
    assert table.loc["formality:emotion", "F"] == pytest.approx(f_interaction)
    assert table.loc["formality:emotion", "p"] < 1e-3
    assert table.loc["formality:emotion", "partial_eta_sq"] == pytest.approx(
        ss_interaction / (ss_interaction + ss_residual))


def test_feature_selection_recovers_planted_features() -> None:
    rng = np.random.default_rng(1)
    sentences = _planted_sentences(24)
    pooled = rng.gamma(1.0, 0.1, size=(len(sentences), 40))
    formal = (sentences["formality"] == "formal").to_numpy()
    emotional = (sentences["emotion"] == "emotional").to_numpy()
    pooled[:, 7] += 0.5 * formal
    pooled[:, 11] += 0.5 * emotional
    pooled[:, 23] += 0.6 * (formal & emotional)  # a pure cell effect: the interaction feature
    primary = primary_tests(pooled, sentences)
    top = primary[primary["rank"] == 1].set_index("factor")["feature"]
    assert top["formality"] == 7 and top["emotion"] == 11
    assert primary[(primary["factor"] == "formality") & (primary["q"] < 0.05)]["feature"].tolist() == [7, 23]
    tests = secondary_tests(pooled, sentences, top=3, alpha=0.05)
    two_way = tests[tests["test"] == "two_way_anova_type2"].set_index(["feature", "effect"])
    assert two_way.loc[(23, "formality:emotion"), "significant_fdr"]
    assert not two_way.loc[(7, "formality:emotion"), "significant_fdr"]
    assert two_way.loc[(23, "formality:emotion"), "interaction_contrast"] == pytest.approx(0.6, abs=0.15)


def test_the_clamped_feature_is_tested_and_firing_is_counted_on_select_sentences_only() -> None:
    rng = np.random.default_rng(2)
    sentences = _planted_sentences(24)
    select = (sentences["split"] == "select").to_numpy()
    formal = (sentences["formality"] == "formal").to_numpy()
    pooled = rng.gamma(1.0, 0.1, size=(len(sentences), 40))
    pooled[:, 3] = 0.0
    pooled[formal, 3] = 1.0  # rank 1 on select, fires on half the select sentences
    pooled[:, 30] = 0.0
    pooled[~select, 30] = 1.0  # fires on test sentences only: never selected for firing
    tests = secondary_tests(pooled, sentences, top=1, alpha=0.05, min_fires_fraction=0.6)
    ranking = tests[tests["test"] == "one_way_anova_cells"].set_index("feature")
    assert ranking.loc[3, "rank"] == 1 and ranking.loc[3, "fires_fraction"] == pytest.approx(0.5)
    assert ranking.loc[30, "fires_fraction"] == 0.0  # test sentences do not count
    tested = set(tests.loc[tests["test"] == "two_way_anova_type2", "feature"])
    firing = ranking[ranking["fires_fraction"] >= 0.6].sort_values("rank")
    assert tested == {3, int(firing.index[0])}  # the top one, and the one clamp_specs will clamp


def _planted_read_out(effect: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    sets = [(f, e) for f in ("formal", "casual") for e in ("emotional", "neutral")]
    for prompt_id in range(12):
        prompt_shift = rng.normal()
        for f, e in sets:
            for index in range(8):
                delta = prompt_shift + rng.normal(scale=0.3) + (effect if (f, e) == ("formal", "emotional") else 0.0)
                rows.append({"prompt_id": prompt_id, "word": f"{f}{e}{index}", "word_formality": f, "word_emotion": e,
                             "word_index": index, "delta_vs_pipeline": delta, "delta_vs_clean": delta + 1.0})
    frame = pd.DataFrame(rows)
    return frame.assign(role="selected_secondary", space="secondary", feature=5, mode="multiply", value=4.0)


def test_clamp_statistics_recover_a_planted_interaction_and_stay_quiet_without_one() -> None:
    planted = clamp_statistics(_planted_read_out(1.0))
    interaction = planted[(planted["effect"] == "word_formality:word_emotion")
                          & (planted["reference"] == "delta_vs_pipeline")].set_index("test")
    assert interaction.loc["two_way_anova_type2_prompt_block", "p"] < 1e-6
    assert interaction.loc["two_way_anova_type2_word_means", "p"] < 1e-3
    assert interaction.loc["two_way_anova_type2_prompt_block", "interaction_contrast"] == pytest.approx(1.0, abs=0.2)
    assert interaction.loc["paper_difference_score_F", "df"] == 2 * 12 * 8 - 2
    # without an effect the tests are calibrated: about 5% of null data sets reach p < 0.05
    null_p = []
    for seed in range(40):
        null = clamp_statistics(_planted_read_out(0.0, seed=100 + seed))
        quiet = null[(null["effect"] == "word_formality:word_emotion") & (null["reference"] == "delta_vs_pipeline")]
        null_p.append(quiet.set_index("test").loc[["two_way_anova_type2_prompt_block",
                                                    "two_way_anova_type2_word_means"], "p"].to_numpy())
    assert (np.array(null_p) < 0.05).mean(axis=0).max() <= 0.15


def _crossed_null(seed: int, prompts: int = 12, words_per_set: int = 6, unbalanced: bool = False,
                  effect: float = 0.0) -> pd.DataFrame:
    """Read-out with crossed random effects: prompt intercepts (sd 1), word intercepts (sd 0.7, each word's
    response repeats across prompts), residual noise (sd 0.5); ``effect`` added to the formal-emotional set."""
    rng = np.random.default_rng(seed)
    prompt_effect = rng.normal(size=prompts)
    rows = []
    for f in ("formal", "casual"):
        for e in ("emotional", "neutral"):
            for index in range(words_per_set):
                word_effect = rng.normal(scale=0.7)
                for prompt_id in range(prompts):
                    rows.append({"prompt_id": prompt_id, "word": f"{f}{e}{index}", "word_formality": f,
                                 "word_emotion": e, "delta": prompt_effect[prompt_id] + word_effect
                                 + rng.normal(scale=0.5) + (effect if (f, e) == ("formal", "emotional") else 0.0)})
    frame = pd.DataFrame(rows)
    if unbalanced:  # a word's logit missing at some prompts (e.g. a failed read-out)
        frame = frame.drop(index=rng.choice(len(frame), size=len(frame) // 10, replace=False))
    return frame


def test_crossed_mixed_model_equals_the_by_item_test_on_a_balanced_design() -> None:
    frame = _crossed_null(3, effect=3.0)
    mixed = stats.crossed_random_intercepts(frame, "delta", "word_formality", "word_emotion", "prompt_id", "word")
    means = frame.groupby(["word", "word_formality", "word_emotion"])["delta"].mean().reset_index()
    by_item = stats.two_way_anova(means, "delta", "word_formality", "word_emotion").set_index("effect")
    mixed = mixed.set_index("effect")
    for effect in ("word_formality", "word_emotion", "word_formality:word_emotion"):
        assert mixed.loc[effect, "F"] == pytest.approx(by_item.loc[effect, "F"], rel=1e-3)
        assert mixed.loc[effect, "p"] == pytest.approx(by_item.loc[effect, "p"], rel=1e-2)
    assert mixed["df"].eq(24 - 4).all() and mixed["converged"].all() and mixed["word_var"].gt(0).all()
    assert mixed.loc["word_formality:word_emotion", "p"] < 0.01
    # sum coding: the interaction coefficient is a quarter of the (FE - FN) - (CE - CN) contrast
    cell = frame.groupby(["word_formality", "word_emotion"])["delta"].mean()
    contrast = (cell["formal", "emotional"] - cell["formal", "neutral"]) - (
        cell["casual", "emotional"] - cell["casual", "neutral"])
    assert abs(mixed.loc["word_formality:word_emotion", "coefficient"]) == pytest.approx(abs(contrast) / 4, rel=1e-3)


def test_crossed_mixed_model_holds_its_level_under_prompt_and_word_random_effects() -> None:
    """Null calibration with word- and prompt-level random effects. Prompt x word rows are then not independent:
    the prompt-blocked row-level ANOVA rejects far too often, while the by-item test (words as units) and the
    crossed random-intercept model hold 5% (within sampling error of 300 draws), the mixed model also with a
    tenth of the rows missing."""
    draws = 300
    rejections = {"row_level": 0, "by_item": 0, "mixed": 0, "mixed_wald_z": 0, "mixed_unbalanced": 0}
    for seed in range(draws):
        frame = _crossed_null(5000 + seed)
        row_level = stats.two_way_anova(frame, "delta", "word_formality", "word_emotion", block="prompt_id")
        rejections["row_level"] += int(row_level.set_index("effect").loc["word_formality:word_emotion", "p"] < 0.05)
        means = frame.groupby(["word", "word_formality", "word_emotion"])["delta"].mean().reset_index()
        by_item = stats.two_way_anova(means, "delta", "word_formality", "word_emotion")
        rejections["by_item"] += int(by_item.set_index("effect").loc["word_formality:word_emotion", "p"] < 0.05)
        mixed = stats.crossed_random_intercepts(frame, "delta", "word_formality", "word_emotion", "prompt_id", "word")
        interaction = mixed.set_index("effect").loc["word_formality:word_emotion"]
        rejections["mixed"] += int(interaction["p"] < 0.05)
        rejections["mixed_wald_z"] += int(interaction["p_wald_z"] < 0.05)
        if seed < draws // 2:
            unbalanced = stats.crossed_random_intercepts(_crossed_null(9000 + seed, unbalanced=True), "delta",
                                                         "word_formality", "word_emotion", "prompt_id", "word")
            rejections["mixed_unbalanced"] += int(
                unbalanced.set_index("effect").loc["word_formality:word_emotion", "p"] < 0.05)
    rate = {name: count / (draws // 2 if name == "mixed_unbalanced" else draws) for name, count in rejections.items()}
    assert rate["row_level"] >= 0.3, rate
    assert rate["by_item"] <= 0.07 and rate["mixed"] <= 0.07 and rate["mixed_unbalanced"] <= 0.08, rate
    assert rate["mixed"] <= rate["mixed_wald_z"], rate  # the between-word t reference is the stricter one


def test_noop_clamp_rows_are_reported_not_tested() -> None:
    frame = _planted_read_out(0.0).assign(value=1.0, delta_vs_pipeline=0.0)
    table = clamp_statistics(frame)
    noop = table[table["reference"] == "delta_vs_pipeline"]
    assert noop["test"].tolist() == ["noop"] and noop["max_abs_delta"].item() == 0.0


# ---------------------------------------------------------------------------------------------------------
# Clamping inside the splice, on the real model


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    settings = Settings.from_dict({"sae": {"n_features": 64, "k": 4}, "nfm": {"embed_dim": 6, "truncated_k": 2}})
    torch.manual_seed(0)
    model = build_model("joint", 576, settings.sae, settings.nfm).eval()
    with torch.no_grad():  # a visible interaction pathway (the fresh NFM's is ~1e-4)
        model.nfm.mlp2.weight.mul_(300.0)  # type: ignore[union-attr]
    residual = torch.randn(4096, 576) * 3.0
    normaliser = Normaliser.fit([residual], "zscore", "blocks.3.hook_resid_pre")
    embeddings = model(normaliser.apply(residual)).embedding
    secondary_normaliser = Normaliser.fit([embeddings.detach()], "zscore", "embedding")
    secondary = FeatureModel(SECONDARY_KIND, TopKSAE(6, 24, 3)).eval()
    return Pipeline(model, normaliser, secondary, secondary_normaliser)


@pytest.mark.slow
@torch.no_grad()
def test_multiplier_one_is_an_exact_noop_and_others_move_logits(bridge, pipeline: Pipeline) -> None:  # type: ignore[no-untyped-def]
    continuation = ModelContinuation(bridge, HookPoint(3, "resid_pre"))
    prompts = tokenize_batch(bridge.tokenizer, ["I think that", "The situation is quite", "Yes"],
                             int(bridge.tokenizer.bos_token_id))
    assert prompts.last.tolist() == [3, 4, 1]
    token_ids = torch.tensor([11, 500, 2000])
    unclamped = prompt_logits(continuation, prompts, pipeline, None, token_ids)
    residual = continuation.residual(prompts.tokens)
    code, secondary_code = pipeline.codes(residual[0, 1:])
    feature = int(secondary_code.indices[0, 0])
    for space, index in (("secondary", feature), ("linear", int(code.indices[0, 0]))):
        same = prompt_logits(continuation, prompts, pipeline, Clamp("t", space, index, "multiply", 1.0), token_ids)
        assert torch.equal(same, unclamped)
        moved = prompt_logits(continuation, prompts, pipeline, Clamp("t", space, index, "multiply", 4.0), token_ids)
        assert (moved - unclamped).abs().max() > 0
    # the clamped reconstruction changes only through the chosen feature's decoder row
    z = pipeline.normaliser.apply(residual[0, 1:])
    base = clamped_reconstruction(pipeline, None)(z)
    zeroed = clamped_reconstruction(pipeline, Clamp("t", "secondary", feature, "multiply", 0.0))(z)
    value = (secondary_code.values * (secondary_code.indices == feature)).sum(1)
    expected_embedding = pipeline.model(z).embedding - value[:, None] * (
        pipeline.secondary.sae.W_dec[feature] / pipeline.secondary_normaliser.scale)
    expected = pipeline.model(z).sae + pipeline.model(z).linear + pipeline.model.nfm.interaction_from_embedding(  # type: ignore[union-attr]
        expected_embedding)
    torch.testing.assert_close(zeroed, expected)
    assert (zeroed - base).abs().max() > 0
