"""The tidy tables a run writes and the others read: each table's columns, their types and allowed values,
declared once and checked when the table is written (and when the claims read it).

A column's allowed values are the vocabulary the readers join on (a component, a metric, a reference, a
method, an effect); the readers use the constants below instead of retyping the strings. A table that does not
match its declaration stops with one message naming the table, the file and the column: written by this
version, that is a bug; read from an earlier run, the fix is to rerun the rule that writes it.

This module imports nothing heavy beyond pandas.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from featint.config import SPLITS
from featint.errors import FeatintError
from featint.kinds import BASELINE, FULL_COMPONENT, MODEL_KINDS, SAE_COMPONENT

# ---------------------------------------------------------------------------------------------------------
# the vocabulary the tables join on

#: token sets of the evaluations: the selected tokens (BOS and massive-norm tokens excluded), or every token
TOKEN_SETS: tuple[str, ...] = ("selected", "with_outliers")
#: the reconstruction components of a model (its SAE alone, each head term beside it, the whole model)
COMPONENTS: tuple[str, ...] = (SAE_COMPONENT, "sae+linear", "sae+interaction", FULL_COMPONENT)
#: the component of a whole-model comparison (an improvement of the final reconstruction over a reference)
MODEL_COMPONENT = "model"
#: the reference of the paper's improvements: the same model's own SAE path
OWN_SAE = "own_sae"
#: the reconstruction metrics of one model on one token set
RECONSTRUCTION_METRICS: tuple[str, ...] = (
    "mse", "fvu", "mse_raw", "fvu_raw", "variance_explained_paper", "tokens", "l0", "dead_fraction",
    "linear_magnitude", "interaction_magnitude", "linear_share", "improvement_mse", "improvement_fvu")
#: the behaviour summary's intervals: the paired bootstrap over test documents and their windows, and the
#: paper's unpaired per-token t
DOCUMENT_WINDOW_BOOTSTRAP = "document_window_bootstrap"
PAPER_UNPAIRED_T = "paper_unpaired_t"
#: the behaviour references: the model's own SAE path, the standard SAE, epsilon-random errors at either norm
BEHAVIOUR_REFERENCES: tuple[str, ...] = (OWN_SAE, BASELINE, "epsilon_own_norm", "epsilon_sae_norm")
BEHAVIOUR_METRICS: tuple[str, ...] = (
    "mean_kl", "mean_ce", "delta_ce", "ce_loss_recovered", "pathology_ratio", "improvement_kl", "improvement_ce",
    "improvement_delta_ce", "paper_t")
#: the clean LM's row of the behaviour summary (its model column)
CLEAN_REFERENCE_MODEL = "reference"
#: the clamped features chosen through the secondary SAE (the paper's clamping experiment), and the controls
SELECTED_SECONDARY = "selected_secondary"
CLAMP_ROLES: tuple[str, ...] = (SELECTED_SECONDARY, "random_secondary", "least_sensitive_secondary",
                                "linear_primary_formality", "linear_primary_emotion")
#: the clamp read-out's response: the logit change against the unclamped pipeline, or against the clean LM
DELTA_VS_PIPELINE = "delta_vs_pipeline"
DELTA_VS_CLEAN = "delta_vs_clean"
#: the formality x emotion interaction of the words' factors (clamping) and of the sentences' (the ANOVAs)
WORD_INTERACTION = "word_formality:word_emotion"
SENTENCE_INTERACTION = "formality:emotion"
CLAMP_TESTS: tuple[str, ...] = ("paper_difference_score_F", "mixedlm_crossed_prompt_word",
                                "two_way_anova_type2_word_means", "two_way_anova_type2_prompt_block", "noop",
                                "no_change")
CLAMP_EFFECTS: tuple[str, ...] = ("word_formality", "word_emotion", WORD_INTERACTION, "prompt_id", "all")


# ---------------------------------------------------------------------------------------------------------
# declarations

Kind = Literal["str", "int", "float", "bool", "any"]


class TableError(FeatintError):
    """A table does not match its declaration in :mod:`featint.tables`."""


@dataclass(frozen=True)
class Column:
    """One column of a declared table."""

    name: str  #: the column's name
    kind: Kind  #: its type: str, int (nullable ints included), float (ints accepted), bool or any
    values: tuple[str, ...] | None = None  #: its allowed values (None: any value of its type)
    nullable: bool = False  #: missing values allowed


@dataclass(frozen=True)
class Table:
    """A tidy table: its name (for messages) and its columns, in order."""

    name: str  #: what the table is (the messages name it)
    columns: tuple[Column, ...]  #: the declared columns

    def validate(self, frame: pd.DataFrame, path: str | Path, extra: Iterable[str] = ()) -> pd.DataFrame:
        """``frame`` itself if it has exactly the declared columns (plus ``extra``, e.g. a sweep's key columns),
        each of its type, without missing values unless nullable, within its allowed values; else a
        :class:`TableError` naming the table, the file and the column."""
        where = f"the {self.name} table {path}"
        declared = [column.name for column in self.columns]
        missing = [name for name in declared if name not in frame.columns]
        unknown = [name for name in frame.columns if name not in declared and name not in set(extra)]
        if missing or unknown:
            raise TableError(f"{where} has columns {list(frame.columns)}; missing {missing}, undeclared {unknown} "
                             "(featint.tables declares its columns): rerun the rule that writes it.")
        for column in self.columns:
            _check_column(frame[column.name], column, where)
        return frame


def _of_kind(values: pd.Series, kind: Kind) -> bool:
    """Whether the (non-missing) ``values`` are of ``kind``: by dtype, or value by value for an object column."""
    api = pd.api.types
    if kind == "str":
        return bool(api.is_string_dtype(values)) and all(isinstance(v, str) for v in values)
    if kind == "bool":
        return bool(api.is_bool_dtype(values)) or all(isinstance(v, (bool, np.bool_)) for v in values)
    if api.is_integer_dtype(values) and not api.is_bool_dtype(values):
        return True
    if kind == "float":
        return bool(api.is_float_dtype(values)) or all(isinstance(v, (int, float, np.integer, np.floating))
                                                        and not isinstance(v, bool) for v in values)
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)


def _check_column(series: pd.Series, column: Column, where: str) -> None:
    present = series.dropna()
    if not column.nullable and len(present) != len(series):
        raise TableError(f"{where}: column {column.name!r} has {len(series) - len(present)} missing values.")
    if column.kind != "any" and len(present) and not _of_kind(present, column.kind):
            raise TableError(f"{where}: column {column.name!r} is {series.dtype}, declared {column.kind}.")
    if column.values is not None:
        stray = sorted(set(map(str, present.unique())) - set(column.values))
        if stray:
            raise TableError(f"{where}: column {column.name!r} holds {stray}, not among its allowed values "
                             f"{list(column.values)}.")


def _c(name: str, kind: Kind, values: Iterable[str] | None = None, nullable: bool = False) -> Column:
    return Column(name, kind, None if values is None else tuple(values), nullable)


_RUN, _SEED = _c("run", "str"), _c("seed", "int")
_MODEL = _c("model", "str", MODEL_KINDS)
_SPLIT, _TOKEN_SET = _c("split", "str", SPLITS), _c("token_set", "str", TOKEN_SETS)
_INTERVAL = (_c("ci_low", "float", nullable=True), _c("ci_high", "float", nullable=True))

#: one model's reconstruction metrics per split, token set and component (and gathered over models and seeds)
RECONSTRUCTION = Table("reconstruction", (
    _RUN, _MODEL, _SEED, _SPLIT, _TOKEN_SET, _c("component", "str", (*COMPONENTS, MODEL_COMPONENT)),
    _c("metric", "str", RECONSTRUCTION_METRICS), _c("reference", "str", (OWN_SAE, BASELINE), nullable=True),
    _c("value", "float", nullable=True)))
#: one model's per-document sums of squares (what the document bootstrap resamples)
RECONSTRUCTION_DOCUMENTS = Table("per-document reconstruction", (
    _RUN, _MODEL, _SEED, _SPLIT, _TOKEN_SET, _c("component", "str", COMPONENTS), _c("doc_id", "int"),
    _c("tokens", "int"), _c("sse", "float"), _c("sst", "float"), _c("sse_raw", "float"), _c("sst_raw", "float")))
#: a model's parameters per part (the head's parts as each head names them) and their total
PARAMETERS = Table("parameters", (
    _MODEL, _SEED, _c("component", "str"), _c("parameters", "int"), _c("share", "float"), _c("trainable", "int")))
#: the reconstruction metrics over seeds, with the document-bootstrap interval where one is computed
RECONSTRUCTION_SUMMARY = Table("reconstruction summary", (
    _RUN, _MODEL, _SPLIT, _TOKEN_SET, _c("component", "str", (*COMPONENTS, MODEL_COMPONENT)),
    _c("metric", "str", RECONSTRUCTION_METRICS), _c("reference", "str", (OWN_SAE, BASELINE), nullable=True),
    _c("mean", "float", nullable=True), _c("sd", "float", nullable=True), _c("n_seeds", "int"),
    _c("minimum", "float", nullable=True), _c("maximum", "float", nullable=True), *_INTERVAL,
    _c("interval", "str"), _c("n_documents", "int"), _c("n_tokens", "int")))
#: each term beside the SAE against the control that differs from it only in that term (featint.kinds)
COMPARISON_TABLE = Table("comparisons", (
    _RUN, _SPLIT, _TOKEN_SET, _MODEL, _c("reference", "str", MODEL_KINDS), _c("seed", "int", nullable=True),
    _c("n_seeds", "int"), _c("metric", "str", ("improvement_mse",)), _c("estimate", "float"), *_INTERVAL,
    _c("model_parameters", "int", nullable=True), _c("reference_parameters", "int", nullable=True),
    _c("n_documents", "int"), _c("n_tokens", "int")))
#: the spliced LM's behaviour over models and seeds (seed missing: the mean over seeds)
BEHAVIOUR_SUMMARY = Table("behaviour summary", (
    _RUN, _c("n_documents", "int"), _c("n_windows", "int"), _c("n_tokens", "int"),
    _c("method", "str", (DOCUMENT_WINDOW_BOOTSTRAP, PAPER_UNPAIRED_T)), _c("ci_level", "float", nullable=True),
    _c("model", "str", (*MODEL_KINDS, CLEAN_REFERENCE_MODEL)), _c("seed", "int", nullable=True),
    _c("n_seeds", "int"), _c("condition", "str"), _c("metric", "str", BEHAVIOUR_METRICS),
    _c("reference", "str", BEHAVIOUR_REFERENCES, nullable=True), _c("estimate", "float", nullable=True),
    *_INTERVAL, _c("se", "float", nullable=True), _c("p_value", "float", nullable=True),
    _c("description", "str")))
#: the clamping experiment's statistics per model, seed, clamped feature, value, reference, test and effect
CLAMP_STATISTICS = Table("clamp statistics", (
    _RUN, _c("model", "str", MODEL_KINDS), _SEED, _c("role", "str", CLAMP_ROLES),
    _c("space", "str", ("secondary", "linear")), _c("feature", "int"), _c("mode", "str", ("multiply", "set")),
    _c("value", "float"), _c("reference", "str", (DELTA_VS_PIPELINE, DELTA_VS_CLEAN)),
    _c("test", "str", CLAMP_TESTS), _c("effect", "str", CLAMP_EFFECTS),
    *(_c(name, "float", nullable=True) for name in (
        "max_abs_delta", "sum_sq", "df", "F", "p", "partial_eta_sq", "interaction_contrast", "coefficient", "se",
        "t", "p_wald_z", "prompt_var", "word_var", "residual_var")),
    _c("converged", "any", nullable=True), _c("q", "float", nullable=True), _c("significant_fdr", "bool")))


def write_table(frame: pd.DataFrame, path: str | Path, table: Table, metadata: dict[str, object] | None = None,
                extra: Iterable[str] = ()) -> None:
    """``frame`` written to ``path`` (:func:`featint.io.write_parquet`) once it matches ``table``."""
    from featint.io import write_parquet

    write_parquet(table.validate(frame, path, extra), path, metadata=metadata)


def read_table(path: str | Path, table: Table, extra: Iterable[str] = ()) -> pd.DataFrame:
    """The table at ``path``, checked against ``table`` (an artefact of an earlier version stops here)."""
    return table.validate(pd.read_parquet(path), path, extra)


# ---------------------------------------------------------------------------------------------------------
# the other gathered tables

#: geometry's measures per model, seed, metric and feature subset, under the paper's or the corrected definition
GEOMETRY_SUMMARY = Table("geometry summary", (
    _RUN, _MODEL, _SEED, _c("metric", "str"), _c("value", "float", nullable=True),
    _c("definition", "str", ("paper", "corrected", "descriptive")), _c("subset", "str", nullable=True)))
#: the bimodality and NFM-share verdicts drawn from the geometry summary
GEOMETRY_VERDICTS = Table("geometry verdicts", (
    _RUN, _MODEL, _SEED, _c("metric", "str"), _c("subset", "str", nullable=True),
    _c("value", "float", nullable=True)))
#: the pair product test on the LM: per model, seed, data (the activations or their surrogates) and target
INTEGRATION_SUMMARY = Table("pair product test summary", (
    _MODEL, _SEED, _c("data", "str", ("data", "surrogate")), _c("target", "str", ("residual", "activation")),
    *(_c(name, "float", nullable=True) for name in ("pairs_tested", "pairs_flagged", "flagged_share", "median_z",
                                                    "flagged_median_estimate", "flagged_explained_share"))))
#: the convergence check: each quantity at the default budget and at the longer one
CONVERGENCE_SUMMARY = Table("convergence", (
    _SEED, _c("tokens_default", "int"), _c("tokens_longer", "int"), _c("quantity", "str"), _MODEL,
    _c("reference", "str", MODEL_KINDS, nullable=True), _c("default", "float"), _c("longer", "float"),
    _c("change", "float"), _c("change_kind", "str", ("relative", "absolute")),
    _c("threshold", "float", nullable=True), _c("threshold_definition", "str"), _c("passes", "bool")))
#: every learning rate tried on the validation split, per kind
LR_SELECTION = Table("LR selection", (
    _MODEL, _c("lr", "float"), _c("steps", "int"), _c("tokens", "int"), _SEED, _c("extension", "int"),
    _c("diverged", "bool"), _c("validation_fvu", "float"), _c("validation_mse", "float"), _c("chosen", "bool"),
    _c("interior", "bool")))
#: every kind's final test FVU and spliced KL against its parameter count
KINDS_BY_PARAMETERS = Table("kinds by parameters", (
    _MODEL, _c("role", "str", ("paper", "control", "ablation", "rival")), _c("parameters", "int"),
    _c("quantity", "str", ("test_fvu", "spliced_kl")), _c("estimate", "float", nullable=True), *_INTERVAL,
    _c("n_seeds", "int")))
#: the layer sweep's final test FVU per layer, kind and seed
LAYER_FVU = Table("layer sweep FVU", (
    _c("layer", "int"), _RUN, _MODEL, _SEED, _SPLIT, _TOKEN_SET, _c("fvu", "float", nullable=True)))


# ---------------------------------------------------------------------------------------------------------
# per-model tables of the behaviour, geometry, pair-test and intervention stages, and the claims table


def _floats(*names: str, nullable: bool = True) -> tuple[Column, ...]:
    return tuple(_c(name, "float", nullable=nullable) for name in names)


#: one model's (or the clean reference's) per-token KL and CE on the test windows, per condition and draw
BEHAVIOUR_TOKENS = Table("behaviour tokens", (
    _RUN, _c("model", "str", (*MODEL_KINDS, CLEAN_REFERENCE_MODEL)), _SEED, _c("condition", "str"),
    _c("condition_kind", "str", ("reconstruction", "epsilon_random", "reference")), _c("component", "str"),
    _c("draw", "int"), _c("doc_id", "int"), _c("window", "int"), _c("position", "int"), _c("spliced", "bool"),
    *_floats("kl", "ce", "error_norm")))
#: one model's per-feature geometry: decoder norms, the paper's ratios, firing and activation-based contributions
GEOMETRY_FEATURES = Table("geometry features", (
    _RUN, _MODEL, _SEED, _c("feature", "int"),
    *_floats("squared_norm", "init_squared_norm", "relative_move_from_init", "paper_residual_ratio",
             "paper_linear_ratio", "paper_interaction_ratio"),
    _c("fires", "int"), *_floats("firing_frequency", "mean_activation_when_active"), _c("contribution_tokens", "int"),
    *_floats("activation_direct", "activation_linear", "activation_interaction", "activation_nfm_share"),
    _c("cluster", "str", nullable=True), _c("paper_group", "str", nullable=True), _c("trained", "bool")))
#: one model's decoder PCA: cumulative explained fraction per component, rows and definition
GEOMETRY_PCA = Table("geometry PCA", (
    _RUN, _MODEL, _SEED, _c("rows", "str", ("raw", "unit")), _c("definition", "str"), _c("component", "int"),
    _c("cumulative_fraction", "float")))
#: the pair product test: one row per tested pair, target and data (the activations, or a surrogate draw)
INTEGRATION_PAIRS = Table("pair product tests", (
    _RUN, _MODEL, _SEED, _c("latent_a", "int"), _c("latent_b", "int"),
    _c("target", "str", ("residual", "activation")), _c("fit_tokens", "int"), _c("test_tokens", "int"),
    _c("test_documents", "int"), *_floats("estimate", "se"), _c("df", "int", nullable=True),
    *_floats("t", "p", "ci_low", "ci_high", "explained_ss", "explained_share", "p_t", "z", "p_empirical", "q"),
    _c("flagged", "bool"), _c("data", "str", ("data", "surrogate")), _c("draw", "int")))
_CONTEXT = (_RUN, _MODEL, _SEED, _c("latent_a", "int"), _c("latent_b", "int"), _c("rank", "int"), _c("row", "int"),
            _c("doc_id", "int"), *_floats("f_a", "f_b", "product", nullable=False))
#: one model's tokens where each tested pair's product is largest (what the gathered contexts show)
INTEGRATION_CONTEXTS = Table("pair contexts", _CONTEXT)
#: the flagged pairs' top contexts with their test and their text
INTEGRATION_SHOWN_CONTEXTS = Table("flagged pair contexts", (
    *_CONTEXT, _c("target", "str", ("residual", "activation")), *_floats("z", "estimate", "ci_low", "ci_high",
                                                                        "explained_share"),
    _c("before", "str"), _c("token", "str")))
#: per ordered pair of seeds and target: how many pairs flagged in one seed are flagged again in the other
INTEGRATION_REPLICATION = Table("pair replication", (
    _SEED, _c("other_seed", "int"), _c("target", "str", ("residual", "activation")), _c("flagged", "int"),
    _c("matched", "int"), _c("tested_there", "int"), _c("replicated", "int"),
    *_floats("replication_rate", "base_rate"), _MODEL))
#: the claims table: each claim of the paper, ours under its definition and the corrected one, and what it rests on
CLAIMS_TABLE = Table("claims", (
    _c("claim_id", "str"), _c("claim", "str"), _c("paper_value", "float", nullable=True), _c("unit", "str"),
    _c("spec_section", "int"), _c("headline_row", "str"), _c("paper_measured", "str"),
    *_floats("ours_paper_definition", "ours_corrected", "ci_low", "ci_high"), _c("interval", "str"),
    _c("seeds", "int"), _c("rests_on", "str"), _c("corrected_definition", "str"), _c("note", "str")))

_LABELS = (_RUN, _c("model", "str", MODEL_KINDS), _SEED)  # every intervention table starts with them
_CELL = _c("cell", "str", ("formal-emotional", "formal-neutral", "informal-emotional", "informal-neutral"))
_CLAMP = (_c("role", "str", (*CLAMP_ROLES, "unclamped_pipeline")), _c("space", "str", ("secondary", "linear", "none")),
          _c("feature", "int"), _c("mode", "str", ("multiply", "set", "none")))
#: the intervention stage's tables of one model and seed (gathered: the same columns over models and seeds,
#: the clamp statistics with their BH-FDR columns, :data:`CLAMP_STATISTICS`)
INTERVENTION_TABLES: dict[str, Table] = {
    "lengths": Table("stimulus lengths", (
        *_LABELS, _CELL, _c("split", "str", ("all", "select", "test")), *_floats("mean_tokens", "sd_tokens"),
        _c("min", "int"), _c("max", "int"), _c("count", "int"))),
    "word_tokens": Table("word-set tokens", (
        *_LABELS, _c("word_id", "int"), _c("word", "str"), _c("formality", "str"), _c("emotion", "str"),
        _c("token_id", "int"), _c("piece", "str"), _c("n_tokens", "int"))),
    "primary_tests": Table("primary feature tests", (
        *_LABELS, _c("factor", "str", ("formality", "emotion")), _c("feature", "int"), *_floats("t", "p", "q"),
        _c("rank", "int"))),
    "secondary_tests": Table("secondary feature tests", (
        *_LABELS, _c("feature", "int"), _c("split", "str", ("select", "test")), _c("test", "str"),
        _c("effect", "str"), *_floats("F", "p"), _c("rank", "int"),
        *_floats("fires_fraction", "sum_sq", "df", "partial_eta_sq", "interaction_contrast", "q"),
        _c("significant_fdr", "any", nullable=True))),
    "sentence_activations": Table("pooled sentence activations", (
        *_LABELS, _c("sentence_id", "int"), _c("text", "str"), _c("formality", "str"), _c("emotion", "str"),
        _c("split", "str", ("select", "test")), _CELL, _c("space", "str", ("primary", "secondary")),
        _c("feature", "int"), _c("activation", "float"), _c("tokens_used", "int"))),
    "clamp_logits": Table("clamped word-set logits", (
        *_LABELS, _c("prompt_id", "int"), _c("prompt", "str"), _c("word", "str"), _c("word_formality", "str"),
        _c("word_emotion", "str"), _c("word_index", "int"), *_CLAMP, _c("value", "float", nullable=True),
        _c("logit", "float"), *_floats(DELTA_VS_PIPELINE, DELTA_VS_CLEAN))),
    "clamp_statistics": Table("clamp statistics of one model", CLAMP_STATISTICS.columns[:-2]),
    "generations": Table("greedy generations", (
        *_LABELS, _c("prompt_id", "int"), _c("prompt", "str"), _c("condition", "str"),
        _c("value", "float", nullable=True), _c("continuation", "str"))),
}
#: the interventions' summary: one row per model, seed and quantity (the clamped feature, tests, selections)
INTERVENTION_SUMMARY = Table("interventions summary", (
    _c("model", "str", MODEL_KINDS), _SEED, _c("quantity", "str"), _c("factor", "str", nullable=True),
    _c("value", "float", nullable=True), _c("feature", "float", nullable=True), _c("role", "str", nullable=True),
    _c("sentences", "str", nullable=True), _c("p", "float", nullable=True), _c("effect", "str", nullable=True),
    *_floats("q", "rank", "fires_fraction"), _c("reference", "str", nullable=True), _c("test", "str", nullable=True),
    _c("clamp_value", "float", nullable=True)))

#: the verdict as the budget grows: one row per quantity, model, reference and budget factor (see
#: :func:`featint.budget.budget_table` for each quantity)
BUDGET_SUMMARY = Table("budget", (
    _c("quantity", "str", ("fvu", "lr", "l_inf", "a", "alpha", "fvu_change_per_doubling", "improvement_mse",
                           "improvement_moved", "l_inf_improvement", "l_inf_difference")),
    _MODEL, _c("reference", "str", MODEL_KINDS, nullable=True), _c("factor", "float", nullable=True),
    _c("tokens", "int", nullable=True), _c("n_seeds", "int"), _c("estimate", "float", nullable=True), *_INTERVAL,
    _c("seed_sd", "float", nullable=True), _c("at_edge", "bool", nullable=True), _c("moved", "bool", nullable=True),
    _c("n_documents", "int"), _c("n_bootstrap", "int")))
#: the ablation sweep: each row's final test FVU, its improvement over its own SAE path and over the standard SAE
#: of the same seed, k, width and decoder (the sweep's key columns ``ablation_*`` are declared extras)
ABLATION_SUMMARY = Table("ablation sweep", (
    _RUN, *_floats("fvu", "improvement_own_sae", "standard_fvu", "improvement_vs_standard_fvu")))

#: the corpus: one row per document, with its split
DOCUMENTS = Table("documents", (
    _c("doc_id", "int"), _c("title", "str"), _c("text", "str"), _c("n_chars", "int"), _SPLIT))
#: one training run's log: train rows every ``log_every`` steps, validation rows every ``validate_every`` (the
#: train-only columns missing there)
TRAIN_LOG = Table("training log", (
    _c("model", "str"), _SEED, _c("step", "int"), _c("tokens", "int"), _c("split", "str", ("train", "validation")),
    *_floats("loss", "mse", "auxk", "fvu", "l0", "dead_fraction", "lr", "grad_norm")))

# ---------------------------------------------------------------------------------------------------------
# the planted-interaction positive control (featint.synthetic) and the pair test's calibration on it

_SETTING = (_c("variant", "str"), _c("strength", "float"))
_TARGET = _c("target", "str", ("residual", "activation"))
_DATA = _c("data", "str", ("data", "surrogate"))
#: which planted pair (or -1: none) each test token of a setting carries
SYNTHETIC_TEST_PAIRS = Table("planted test pairs", (_c("row", "int"), _c("pair", "int")))
#: a setting's planted and noise variance per split (gathered: with the setting's name, a declared extra)
SYNTHETIC_VARIANCE = Table("planted variance", (
    _c("split", "str", SPLITS), _c("strength", "float"), _c("direction", "str"), _c("tokens", "int"),
    *_floats("planted_variance_fraction", "noise_variance_fraction", "pair_token_fraction", "mean_active",
             nullable=False)))
#: every kind's test FVU (and its SAE path's) per setting and seed
SYNTHETIC_FVU = Table("planted-setting FVU", (
    *_SETTING, _c("kind", "str", MODEL_KINDS), _SEED, *_floats("fvu", "sae_fvu", nullable=False),
    _c("parameters", "int"), _c("steps", "int")))
#: per planted and decoy pair, how much a model's interaction term lowers the squared error on its tokens
SYNTHETIC_PAIRS = Table("planted pair identification", (
    _c("pair", "int"), _c("planted", "bool"), _c("tokens", "int"), _c("interaction_gain", "float", nullable=True),
    _MODEL, *_SETTING, _SEED))
#: the joint model's gain over each reference per setting, with its interval over seeds and beyond the null gain
SYNTHETIC_POWER = Table("planted power", (
    *_SETTING, _MODEL, _c("reference", "str", MODEL_KINDS), *_floats("gain", "ci_low", "ci_high", "excess_over_null",
                                                                      "excess_ci_low", "excess_ci_high"),
    _c("interval", "str"), _c("n_seeds", "int"), _c("detected", "bool"), _c("setting", "str"),
    _c("planted_variance_fraction", "float", nullable=True)))
#: the smallest planted strength each comparison detects
SYNTHETIC_DETECTION = Table("planted detection", (
    _c("variant", "str"), _MODEL, _c("reference", "str", MODEL_KINDS),
    _c("smallest_detected_strength", "float", nullable=True), _c("detected_strengths", "int"),
    _c("planted_strengths", "int"), *_floats("null_gain", "null_ci_low", "null_ci_high")))
#: pair identification's AUC (planted pairs above decoys) per setting, model and seed
SYNTHETIC_IDENTIFICATION = Table("planted identification AUC", (
    *_SETTING, _MODEL, _SEED, *_floats("auc", "p", "planted_gain", "decoy_gain")))
#: the pair product test on a planted setting: every test, as on the LM, keyed by the setting
SYNTHETIC_INTEGRATION_PAIRS = Table("planted pair product tests", (
    *_SETTING, *(column for column in INTEGRATION_PAIRS.columns if column.name != "run")))
#: the pair test's calibration per setting, model, seed, data and draw: planted pairs flagged, decoys flagged
INTEGRATION_CALIBRATION = Table("pair test calibration", (
    *_SETTING, _MODEL, _SEED, _DATA, _c("draw", "int"), _TARGET, _c("pairs_tested", "int"), _c("pairs_flagged", "int"),
    _c("planted_tested", "int"), _c("planted_flagged", "int"), _c("planted_flagged_share", "float", nullable=True),
    _c("decoy_tested", "int"), _c("decoy_flagged", "int"), _c("decoy_flagged_share", "float", nullable=True)))
#: the pair test's power per setting, data and target, over runs
INTEGRATION_POWER = Table("pair test power", (
    *_SETTING, _DATA, _TARGET, _c("runs", "int"),
    *_floats("power", "planted_tested", "decoy_flagged_share", "pairs_flagged", "pairs_tested", "any_flagged")))

# ---------------------------------------------------------------------------------------------------------
# the activations

#: each split's stored, excluded and selected tokens, and its norms
ACTIVATION_SUMMARY = Table("activation summary", (
    _SPLIT, _c("documents", "int"), _c("windows", "int"), _c("tokens_stored", "int"),
    _c("tokens_position_zero", "int"), _c("tokens_outlier", "int"), _c("tokens_selected", "int"),
    *_floats("median_norm", "outlier_threshold", "outlier_share_of_sq_norm", "selected_mean_normalised_norm"),
    _c("hook_name", "str"), _c("d_model", "int"), _c("shards", "int")))
#: residual norms by position in the window, raw and normalised, per split
NORM_BY_POSITION = Table("norm by position", (
    _SPLIT, _c("space", "str"), _c("position", "int"), *_floats("median", "p99", "max"), _c("count", "int")))
