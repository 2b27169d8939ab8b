"""Gathering the intervention tables over models and seeds, FDR across clamps, and the tidy summary."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

import featint.tables as featint_tables
from featint import stats
from featint.interventions.base import TABLES, InterventionOutputs
from featint.layout import InterventionFigures
from featint.tables import SELECTED_SECONDARY, SENTENCE_INTERACTION, WORD_INTERACTION

# ---------------------------------------------------------------------------------------------------------
# Gathering


class GatheredInterventionOutputs(NamedTuple):
    """What :func:`gather` writes."""

    summary: str | Path  #: per model and seed: the selections, the ANOVAs and the clamping tests, tidy
    tables: InterventionOutputs  #: every table over models and seeds (the clamp statistics with their BH-FDR q)
    figures: InterventionFigures  #: the clamp interaction lines, the clamp heatmaps, the activations by cell


def gather(model_tables: dict[str, list[str | Path]], out: GatheredInterventionOutputs,
           alpha: float) -> pd.DataFrame:
    """Stage entry point: one table per kind over models and seeds (``model_tables``: each table's files of
    every model and seed, by the names of :data:`TABLES`); BH-FDR of the clamping interaction tests across all
    features x clamp values of a model and seed (per reference); the summary and figures, to the files of
    ``out``."""
    from featint import plots

    missing = sorted(set(TABLES) - set(model_tables))
    if missing:
        raise ValueError(f"gather needs every intervention table; {missing} not given")
    tables = {name: pd.concat([pd.read_parquet(path) for path in model_tables[name]], ignore_index=True)
              for name in TABLES}
    clamp = tables["clamp_statistics"]
    clamp["q"] = np.nan
    interaction = (clamp["effect"] == WORD_INTERACTION) & clamp["p"].notna()
    for idx in clamp[interaction].groupby(["model", "seed", "reference", "test"]).groups.values():
        clamp.loc[idx, "q"] = stats.benjamini_hochberg(clamp.loc[idx, "p"].to_numpy())
    clamp["significant_fdr"] = clamp["q"] < alpha
    for name, table in tables.items():
        declared = featint_tables.CLAMP_STATISTICS if name == "clamp_statistics" else \
            featint_tables.INTERVENTION_TABLES[name]
        featint_tables.write_table(table, getattr(out.tables, name), declared)
    summary = intervention_summary(tables, alpha)
    featint_tables.write_table(summary, out.summary, featint_tables.INTERVENTION_SUMMARY)
    figures = out.figures
    plots.clamp_interaction_lines(tables["clamp_logits"], figures.clamp_interaction_lines)
    plots.clamp_heatmaps(tables["clamp_logits"], figures.clamp_heatmaps)
    plots.secondary_activation_by_cell(tables["sentence_activations"], tables["secondary_tests"],
                                       figures.secondary_activation_by_cell)
    return summary


def intervention_summary(tables: dict[str, pd.DataFrame], alpha: float) -> pd.DataFrame:
    """Per model and seed: how many primary features pass FDR per factor and the top one's t; the secondary
    features' F on the select sentences (one-way, the ranking) and on the test sentences (two-way, per effect)
    for the top-ranked feature and the clamped one; and the smallest clamping interaction p (vs pipeline and vs
    clean) of each clamp role and test. Tidy: ``quantity`` names what is measured; ``factor``, ``role``
    (``top_ranked`` / ``clamped`` feature, or the clamp's role), ``sentences`` (select / test), ``effect``,
    ``reference`` and ``test`` say of what (empty where they do not apply)."""
    rows = []
    for (model, seed), primary in tables["primary_tests"].groupby(["model", "seed"]):
        base = {"model": model, "seed": seed}
        for factor, group in primary.groupby("factor"):
            rows.append({**base, "quantity": "primary_features_passing_fdr", "factor": factor,
                         "value": float((group["q"] < alpha).sum())})
            top = group[group["rank"] == 1].iloc[0]
            rows.append({**base, "quantity": "primary_top_t", "factor": factor, "value": float(top["t"]),
                         "feature": int(top["feature"])})
        secondary = tables["secondary_tests"]
        secondary = secondary[(secondary["model"] == model) & (secondary["seed"] == seed)]
        ranking = secondary[secondary["test"] == "one_way_anova_cells"].sort_values("rank")
        top = ranking.iloc[0]
        rows.append({**base, "quantity": "secondary_F", "role": "top_ranked", "sentences": "select",
                     "value": float(top["F"]), "feature": int(top["feature"]), "p": float(top["p"])})
        two_way = secondary[(secondary["test"] == "two_way_anova_type2") & (secondary["feature"] == top["feature"])]
        for record in two_way.to_dict("records"):
            rows.append({**base, "quantity": "secondary_F", "role": "top_ranked", "sentences": "test",
                         "effect": record["effect"],
                         "value": float(record["F"]), "feature": int(top["feature"]), "p": float(record["p"]),
                         "q": float(record["q"])})
        # the feature that is clamped (best-ranked among those firing often enough; may differ from rank 1)
        clamped = tables["clamp_statistics"]
        clamped = clamped[(clamped["model"] == model) & (clamped["seed"] == seed)
                          & (clamped["role"] == SELECTED_SECONDARY)]
        if len(clamped):
            feature = int(clamped["feature"].iloc[0])
            own = ranking[ranking["feature"] == feature].iloc[0]
            rows.append({**base, "quantity": "secondary_F", "role": "clamped", "sentences": "select",
                         "value": float(own["F"]),
                         "feature": feature, "p": float(own["p"]), "rank": int(own["rank"]),
                         "fires_fraction": float(own["fires_fraction"])})
            tested = secondary[(secondary["test"] == "two_way_anova_type2") & (secondary["feature"] == feature)]
            for record in tested.to_dict("records"):
                rows.append({**base, "quantity": "secondary_F", "role": "clamped", "sentences": "test",
                             "effect": record["effect"],
                             "value": float(record["F"]), "feature": feature, "p": float(record["p"]),
                             "q": float(record["q"])})
        rows.append({**base, "quantity": "secondary_tested_interaction_passing_fdr",
                     "value": float(((secondary["effect"] == SENTENCE_INTERACTION) & (secondary["q"] < alpha)).sum())})
        clamp = tables["clamp_statistics"]
        clamp = clamp[(clamp["model"] == model) & (clamp["seed"] == seed)
                      & (clamp["effect"] == WORD_INTERACTION)]
        for (role, reference, test), group in clamp.groupby(["role", "reference", "test"]):
            best = group.sort_values("p").iloc[0]
            rows.append({**base, "quantity": "clamp_min_p", "role": role, "reference": reference, "test": test,
                         "effect": WORD_INTERACTION, "value": float(best["F"]),
                         "feature": int(best["feature"]), "p": float(best["p"]), "q": float(best["q"]),
                         "clamp_value": float(best["value"])})
    return pd.DataFrame(rows)
