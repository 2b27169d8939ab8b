"""The intervention stage: one model and seed, from its weights and secondary SAE to every table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from featint.activations import ActivationStore
from featint.config import Settings
from featint.interventions.base import TABLES, InterventionError, InterventionOutputs
from featint.interventions.clamping import (
    Clamp,
    clamp_read_out,
    clamp_specs,
    clamp_statistics,
    greedy_generations,
)
from featint.interventions.readout import Pipeline, primary_tests, secondary_tests, sentence_features, tokenize_batch
from featint.interventions.secondary import require_interaction
from featint.layout import ActivationsFolder, ModelFolder
from featint.lm import HookPoint, load_bridge
from featint.models import load_model
from featint.normaliser import Normaliser
from featint.splice import ModelContinuation
from featint.stimuli import Stimuli, check_length_match, length_report, load_stimuli, word_tokens
from featint.tables import INTERVENTION_TABLES, SELECTED_SECONDARY, write_table

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Stage entry point


def load_pipeline(weights_path: str | Path, secondary_dir: str | Path, activations_dir: str | Path,
                  device: torch.device | str = "cpu") -> tuple[Pipeline, dict[str, Any], ActivationStore]:
    from featint.evaluation import check_model_matches_store

    model, extra = load_model(weights_path)
    require_interaction(model, weights_path)
    store = ActivationStore(ActivationsFolder(activations_dir).split("test"))
    check_model_matches_store(model, extra, store, weights_path)
    secondary, _ = load_model(ModelFolder(secondary_dir).weights)
    secondary_normaliser = Normaliser.load(ModelFolder(secondary_dir).normaliser)
    if secondary.sae.d_model != model.nfm.V.shape[1]:  # type: ignore[union-attr]
        raise InterventionError(f"{secondary_dir} holds a secondary SAE of width {secondary.sae.d_model}, but "
                                f"{weights_path} has an interaction embedding of {model.nfm.V.shape[1]}; "  # type: ignore[union-attr]
                                "retrain the secondary SAE for this model.")
    normaliser = Normaliser.load(ActivationsFolder(activations_dir).normaliser)
    return Pipeline(model, normaliser, secondary, secondary_normaliser).to(device), extra, store


def run_interventions(settings: Settings, lm_dir: str | Path, weights_path: str | Path, secondary_dir: str | Path,
                      activations_dir: str | Path, out: InterventionOutputs, run: str,
                      device: torch.device | str = "cpu") -> dict[str, pd.DataFrame]:
    """Stage entry point: stimuli checks, sentence features, selection and ANOVAs, clamping read-out and its
    statistics, greedy generations; every table to its file of ``out``."""
    config = settings.interventions
    stimuli: Stimuli = load_stimuli(config.stimuli, config.min_sentences_per_cell, config.min_prompts,
                                    config.min_words_per_set)
    pipeline, extra, store = load_pipeline(weights_path, secondary_dir, activations_dir, device)
    seed = int(extra["seed"])
    bridge = load_bridge(lm_dir, settings.model.dtype, device)
    tokenizer, bos_id = bridge.tokenizer, int(bridge.tokenizer.bos_token_id)
    continuation = ModelContinuation(bridge, HookPoint.from_settings(settings.hook))
    lengths = length_report(stimuli.sentences, tokenizer)
    spread = check_length_match(lengths, config.max_length_difference, stimuli.directory / "sentences.tsv")
    words = word_tokens(stimuli.words, tokenizer)
    features = sentence_features(continuation, tokenizer, bos_id, pipeline, stimuli.sentences["text"].tolist(),
                                 store.meta.outlier_threshold)
    log.info("stimuli: %d sentences, cell means differ by %.2f tokens, %d outlier token(s) excluded",
             len(stimuli.sentences), spread, features.outliers_excluded)
    primary = primary_tests(features.primary, stimuli.sentences)
    secondary = secondary_tests(features.secondary, stimuli.sentences, config.top_secondary, config.fdr_alpha,
                                config.min_fires_fraction)
    specs = clamp_specs(settings, primary, secondary, features, seed)
    prompts = tokenize_batch(tokenizer, stimuli.prompts, bos_id)
    read_out = clamp_read_out(continuation, prompts, pipeline, specs, words, stimuli.prompts)
    clamp_stats = clamp_statistics(read_out)
    selected = [s for s in specs if s.role == SELECTED_SECONDARY and s.mode == "multiply"][:len(config.multipliers)]
    conditions: list[tuple[str, Clamp | None, bool]] = [("clean", None, False), ("unclamped_pipeline", None, True)]
    conditions += [(f"{s.role}:{s.feature}x{s.value:g}", s, True) for s in selected if not s.is_noop]
    generations = greedy_generations(continuation, tokenizer, bos_id, pipeline, conditions,
                                     stimuli.prompts[: config.generation_prompts], config.generation_tokens)

    labels = {"run": run, "model": pipeline.model.kind, "seed": seed}
    pooled_rows = []
    tested = secondary.loc[secondary["test"] == "two_way_anova_type2", "feature"].unique()
    for space, values, chosen in (("secondary", features.secondary, tested),
                                  ("primary", features.primary, primary.loc[primary["rank"] == 1, "feature"])):
        for feature in chosen:
            pooled_rows.append(stimuli.sentences.assign(space=space, feature=np.int32(feature),
                                                        activation=values[:, int(feature)],
                                                        tokens_used=features.tokens_used))
    tables = {
        "lengths": lengths, "word_tokens": words, "primary_tests": primary, "secondary_tests": secondary,
        "sentence_activations": pd.concat(pooled_rows, ignore_index=True), "clamp_logits": read_out,
        "clamp_statistics": clamp_stats, "generations": generations,
    }
    for name in TABLES:
        table = tables[name].copy()
        for i, (column, value) in enumerate(labels.items()):
            table.insert(i, column, value)
        tables[name] = table
        write_table(table, getattr(out, name), INTERVENTION_TABLES[name],
                    metadata={"interventions": settings.raw["interventions"]})
    return tables
