"""Feature geometry of the decoder: squared norms, Gram statistics, norm clustering, contributions, PCA — and
the controls that separate "specialisation" from "artefact" (PAPER_SPEC sections 7 and 10, item 10).

Per model and seed (:func:`run_geometry`):

* per feature (``features.parquet``): squared decoder norm, its value at step 0 (``init.safetensors``) and the
  relative distance moved from init, firing frequency and mean activation when active (train tokens), the
  paper's weight-norm contribution ratios, activation-based contributions on one scale (expectations over the
  same scanned tokens: direct E[f_i] ||d_i||, linear E[f_i] ||W_lin_i||, interaction
  E[||I(f) - I(f without i)||], a silent feature contributing 0; NaN where it never fired), the 2-component
  cluster (log squared norm) and the paper's fixed-threshold group;
* summary (``summary.parquet``, tidy, with a ``definition`` column: ``paper``, ``corrected`` or
  ``descriptive``): Gram off-diagonal statistics; on squared and log squared norms the two-peak evidence (the
  fitted 2-component density's maxima = the modes, Ashman's D) and, labelled ``descriptive``, the 1- vs
  2-component BIC, Sarle's coefficient and the component means (skewed unimodal samples meet those too);
  group means, Spearman rho (paper definition and activation-based, with a partial correlation controlling
  for firing frequency), PCA components for 90% of the variance (centred full spectrum and the author's
  uncentred truncated one), and the verdict: bimodal (two density peaks of the squared norms and Ashman's
  D > 2) at all, and still bimodal once features that rarely fired or barely moved from init are removed;
* ``pca.parquet``: cumulative explained-variance curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from featint import stats
from featint.activations import ActivationStore
from featint.config import GeometrySettings
from featint.kinds import KINDS
from featint.layout import ActivationsFolder, GeometryFigures
from featint.models import FeatureModel, SparseCode, load_model
from featint.normaliser import Normaliser
from featint.tables import GEOMETRY_FEATURES, GEOMETRY_PCA, GEOMETRY_SUMMARY, GEOMETRY_VERDICTS, write_table
from featint.training import load_selected

# ---------------------------------------------------------------------------------------------------------
# Weight geometry


@torch.no_grad()
def gram_offdiagonal_statistics(rows: torch.Tensor, block_rows: int = 2048) -> dict[str, float]:
    """Mean, sd and max |.| of off-diagonal dot products and cosines of ``rows`` [F, d], computed blockwise
    (never an F x F matrix)."""
    rows = rows.double()
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = rows.shape[0]
    sums = {"dot": [0.0, 0.0, 0.0], "cosine": [0.0, 0.0, 0.0]}  # sum, sum of squares, max |.|
    for start in range(0, n, block_rows):
        block = slice(start, min(n, start + block_rows))
        for name, matrix in (("dot", rows), ("cosine", unit)):
            gram = matrix[block] @ matrix.T
            diagonal = torch.arange(block.start, block.stop, device=rows.device)
            gram[diagonal - start, diagonal] = 0.0
            acc = sums[name]
            acc[0] += float(gram.sum())
            acc[1] += float((gram * gram).sum())
            acc[2] = max(acc[2], float(gram.abs().max()))
    pairs = n * (n - 1)
    out = {}
    for name, (total, squares, largest) in sums.items():
        mean = total / pairs
        out[f"gram_{name}_offdiag_mean"] = mean
        out[f"gram_{name}_offdiag_sd"] = float(np.sqrt(max(squares / pairs - mean * mean, 0.0)))
        out[f"gram_{name}_offdiag_max_abs"] = largest
    return out


def feature_row_norms(model: FeatureModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per feature: ||d_i|| (decoder row), ||W_lin_i|| (NFM linear row), ||v_i|| (embedding row); zeros where the
    model has no such part. float64, on the CPU."""
    decoder = model.sae.W_dec.detach().norm(dim=1).double().cpu()
    zeros = torch.zeros_like(decoder)
    nfm = model.nfm
    linear = nfm.W_lin.detach().norm(dim=1).double().cpu() if nfm is not None and nfm.use_linear else zeros
    embedding = nfm.V.detach().norm(dim=1).double().cpu() if nfm is not None and nfm.use_interaction else zeros
    return decoder, linear, embedding


def paper_contribution_ratios(model: FeatureModel) -> pd.DataFrame:
    """The author's ratios of weight-vector norms over their sum: decoder row, NFM linear row, embedding row."""
    residual, linear, interaction = feature_row_norms(model)
    total = residual + linear + interaction
    return pd.DataFrame({"paper_residual_ratio": (residual / total).numpy(),
                         "paper_linear_ratio": (linear / total).numpy(),
                         "paper_interaction_ratio": (interaction / total).numpy()})


# ---------------------------------------------------------------------------------------------------------
# Activation statistics


@torch.no_grad()
def activation_statistics(model: FeatureModel, x: torch.Tensor, interaction_tokens: int,
                          chunk: int = 2048) -> pd.DataFrame:
    """Firing count and frequency and mean activation when active (all of ``x``), and activation-based
    contributions on one scale: each term is an expectation over the same scanned tokens (the first
    ``interaction_tokens`` of ``x``, whole chunks), a silent feature contributing 0 to that token:

    * ``activation_direct`` = E[f_i] ||d_i||, ``activation_linear`` = E[f_i] ||W_lin_i||,
    * ``activation_interaction`` = E[||I(f) - I(f without i)||];

    NaN for features that never fired in the scanned tokens (nothing was measured), and 0 for a term the
    model does not have."""
    n_features = model.sae.n_features
    count = torch.zeros(n_features, dtype=torch.float64)
    total = torch.zeros(n_features, dtype=torch.float64)
    scan_count = torch.zeros(n_features, dtype=torch.float64)
    scan_total = torch.zeros(n_features, dtype=torch.float64)
    interaction_sum = torch.zeros(n_features, dtype=torch.float64)
    scanned = 0
    nfm = model.nfm
    with_interaction = nfm is not None and nfm.use_interaction
    device = model.sae.W_enc.device  # the model runs on its device; the float64 counts stay on the CPU
    for start in range(0, x.shape[0], chunk):
        batch = x[start : start + chunk]
        device_code, _ = model.sae.encode(batch.to(device), model.infer_k)
        code = device_code.to("cpu")
        active = code.values > 0
        ones = torch.ones(int(active.sum()), dtype=torch.float64)
        count.index_add_(0, code.indices[active], ones)
        total.index_add_(0, code.indices[active], code.values[active].double())
        if start < interaction_tokens:
            scanned += batch.shape[0]
            scan_count.index_add_(0, code.indices[active], ones)
            scan_total.index_add_(0, code.indices[active], code.values[active].double())
            if with_interaction:
                delta = interaction_removal_effect(model, device_code).cpu()
                interaction_sum.index_add_(0, code.indices[active], delta[active].double())
    n = x.shape[0]
    decoder_norm, linear_norm, _ = feature_row_norms(model)
    seen = scan_count > 0
    nan = torch.full_like(total, float("nan"))
    expected = scan_total / max(scanned, 1)
    frame = pd.DataFrame({
        "fires": count.numpy().astype(np.int64),
        "firing_frequency": (count / n).numpy(),
        "mean_activation_when_active": torch.where(count > 0, total / count.clamp_min(1), nan).numpy(),
        "contribution_tokens": np.full(n_features, scanned, dtype=np.int64),
        "activation_direct": torch.where(seen, expected * decoder_norm, nan).numpy(),
        "activation_linear": torch.where(seen, expected * linear_norm, nan).numpy(),
        "activation_interaction": torch.where(seen, interaction_sum / max(scanned, 1), nan).numpy(),
    })
    parts = frame[["activation_direct", "activation_linear", "activation_interaction"]].sum(axis=1, min_count=3)
    frame["activation_nfm_share"] = np.where(
        parts > 0, (frame["activation_linear"] + frame["activation_interaction"]) / parts.where(parts > 0, 1), np.nan)
    return frame


@torch.no_grad()
def interaction_removal_effect(model: FeatureModel, code: SparseCode, chunk: int = 256) -> torch.Tensor:
    """||I(f) - I(f without feature j)|| for every token and each of its k active features: [N, k].

    Removing feature j changes the pooled vector to p - f_j v_j * (s - f_j v_j), with s = sum_i f_i v_i
    (the [N, k, d] intermediate is built ``chunk`` tokens at a time)."""
    nfm = model.nfm
    assert nfm is not None and nfm.use_interaction
    was_training = nfm.training
    nfm.eval()
    out = []
    for start in range(0, code.indices.shape[0], chunk):
        part = SparseCode(code.indices[start : start + chunk], code.values[start : start + chunk])
        pooled = nfm.bi_interaction(part)  # [n, K]
        fv = part.values.unsqueeze(-1) * nfm.V[part.indices]  # [n, k, K]
        without = pooled.unsqueeze(1) - fv * (fv.sum(dim=1, keepdim=True) - fv)
        full = nfm.interaction_from_embedding(nfm.embedding_from_pooled(pooled))  # [n, d]
        reduced = nfm.interaction_from_embedding(nfm.embedding_from_pooled(without))  # [n, k, d]
        out.append((reduced - full.unsqueeze(1)).norm(dim=-1))
    nfm.train(was_training)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------
# Stage


#: Bimodality metrics that only describe the sample (skewed unimodal samples meet them too; not verdicts).
DESCRIPTIVE_BIMODALITY = ("bic_1", "bic_2", "prefers_2", "bimodality_coefficient", "component_mean_low",
                          "component_mean_high", "weight_low")


def _bimodality(values: np.ndarray) -> dict[str, float]:
    """Two-peak evidence (:func:`featint.stats.two_peak_test`: the fitted 2-component density's maxima,
    Ashman's D, the verdict) and, descriptive only, the 1- vs 2-component BIC, Sarle's coefficient and the
    components' means."""
    values = np.asarray(values, dtype=np.float64)
    names = ("bic_1", "bic_2", "prefers_2", "bimodality_coefficient", "component_mean_low", "component_mean_high",
             "weight_low", "n_density_modes", "density_mode_low", "density_mode_high", "ashman_d", "two_peak_bimodal")
    if values.size < 10 or np.ptp(values) == 0:
        return dict.fromkeys(names, float("nan"))
    one = stats.fit_gaussian_mixture_1d(values, 1)
    two = stats.fit_gaussian_mixture_1d(values, 2)
    peaks = stats.two_peak_test(values, two)
    return {"bic_1": one.bic, "bic_2": two.bic, "prefers_2": float(two.bic < one.bic),
            "bimodality_coefficient": stats.bimodality_coefficient(values),
            "component_mean_low": float(two.means[0]), "component_mean_high": float(two.means[1]),
            "weight_low": float(two.weights[0]), "n_density_modes": float(peaks.modes.size),
            "density_mode_low": float(peaks.modes[0]),
            "density_mode_high": float(peaks.modes[-1]) if peaks.two_peaks else float("nan"),
            "ashman_d": peaks.ashman_d, "two_peak_bimodal": float(peaks.bimodal)}


def feature_table(model: FeatureModel, init: FeatureModel, x: torch.Tensor,
                  settings: GeometrySettings) -> pd.DataFrame:
    decoder = model.sae.W_dec.detach().double().cpu()
    init_decoder = init.sae.W_dec.detach().double().cpu()
    frame = pd.DataFrame({
        "feature": np.arange(model.sae.n_features),
        "squared_norm": decoder.pow(2).sum(1).numpy(),
        "init_squared_norm": init_decoder.pow(2).sum(1).numpy(),
        "relative_move_from_init": ((decoder - init_decoder).norm(dim=1)
                                    / init_decoder.norm(dim=1).clamp_min(1e-12)).numpy(),
    })
    frame = pd.concat([frame, paper_contribution_ratios(model),
                       activation_statistics(model, x, settings.interaction_tokens)], axis=1)
    log_norm = np.log(frame["squared_norm"].to_numpy())
    two = stats.fit_gaussian_mixture_1d(log_norm, 2)
    frame["cluster"] = np.where(two.labels(log_norm) == 0, "low", "high")
    frame["paper_group"] = np.where(frame["squared_norm"] < settings.paper_threshold, "below", "above")
    frame["trained"] = (frame["fires"] >= settings.min_fires) & (
        frame["relative_move_from_init"] >= settings.min_relative_move)
    return frame


def summary_rows(model: FeatureModel, features: pd.DataFrame, settings: GeometrySettings) -> list[dict]:
    rows: list[dict] = []

    def add(metric: str, value: float, definition: str = "corrected", subset: str = "all") -> None:
        rows.append({"metric": metric, "value": float(value), "definition": definition, "subset": subset})

    for name, value in gram_offdiagonal_statistics(model.sae.W_dec.detach(), settings.block_rows).items():
        add(name, value)
    squared = features["squared_norm"].to_numpy()
    add("squared_norm_median", float(np.median(squared)))
    add("init_squared_norm_median", float(features["init_squared_norm"].median()))
    add("fraction_never_fired", float((features["fires"] == 0).mean()))
    add("fraction_trained", float(features["trained"].mean()))
    for subset, mask in (("all", np.ones(len(features), dtype=bool)), ("trained", features["trained"].to_numpy())):
        for space, values in (("squared_norm", squared[mask]), ("log_squared_norm", np.log(squared[mask]))):
            for metric, value in _bimodality(values).items():
                add(f"{space}_{metric}", value, "descriptive" if metric in DESCRIPTIVE_BIMODALITY else "corrected",
                    subset=subset)
    below = features["paper_group"] == "below"
    add("paper_fraction_below_threshold", float(below.mean()), "paper")
    for ratio in ("paper_residual_ratio", "paper_linear_ratio", "paper_interaction_ratio"):
        add(f"{ratio}_mean", float(features.loc[below, ratio].mean()), "paper", subset="paper_below_threshold")
        add(f"{ratio}_mean", float(features.loc[~below, ratio].mean()), "paper", subset="paper_above_threshold")
    if model.nfm is not None:
        nfm_ratio = 1.0 - features["paper_residual_ratio"].to_numpy()
        add("spearman_squared_norm_vs_nfm_ratio", stats.spearman(squared, nfm_ratio)[0], "paper")
        share = features["activation_nfm_share"].to_numpy()
        fired = features["fires"].to_numpy() > 0
        add("spearman_squared_norm_vs_activation_nfm_share", stats.spearman(squared[fired], share[fired])[0],
            subset="fired")
        add("partial_spearman_squared_norm_vs_activation_nfm_share_given_frequency",
            stats.partial_spearman(squared[fired], share[fired], features["firing_frequency"].to_numpy()[fired]),
            subset="fired")
    add("spearman_squared_norm_vs_firing_frequency",
        stats.spearman(squared, features["firing_frequency"].to_numpy())[0])
    add("spearman_squared_norm_vs_relative_move", stats.spearman(squared, features["relative_move_from_init"])[0])
    for subset in ("all", "trained"):
        found = {r["metric"]: r["value"] for r in rows if r["subset"] == subset}
        # two peaks in the fitted density of the squared norms (the paper's scale) and Ashman's D > 2
        bimodal = found["squared_norm_two_peak_bimodal"] == 1.0
        add("verdict_bimodal", float(bimodal), subset=subset)  # subset "trained": after removing untrained rows
    return rows


def pca_curves(model: FeatureModel, settings: GeometrySettings) -> tuple[pd.DataFrame, list[dict]]:
    decoder = model.sae.W_dec.detach().double().cpu().numpy()
    unit = decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)
    curves, rows = [], []
    for rows_name, matrix in (("raw", decoder), ("unit", unit)):
        spectrum = stats.centred_pca_spectrum(matrix)
        n90 = stats.components_for_fraction(spectrum, 0.9)
        rows.append({"metric": f"pca_centred_{rows_name}_components_for_90pct", "value": float(n90),
                     "definition": "corrected", "subset": "all"})
        curves.append(pd.DataFrame({"rows": rows_name, "definition": "centred, full spectrum",
                                    "component": np.arange(1, spectrum.size + 1),
                                    "cumulative_fraction": np.cumsum(spectrum) / spectrum.sum()}))
    truncated = stats.uncentred_truncated_spectrum(decoder, settings.paper_pca_components)
    rows.append({"metric": "pca_paper_components_for_90pct_of_truncated",
                 "value": float(stats.components_for_fraction(truncated, 0.9)), "definition": "paper",
                 "subset": f"first {truncated.size} singular values"})
    curves.append(pd.DataFrame({"rows": "raw", "definition": f"paper: uncentred, first {truncated.size}",
                                "component": np.arange(1, truncated.size + 1),
                                "cumulative_fraction": np.cumsum(truncated) / truncated.sum()}))
    return pd.concat(curves, ignore_index=True), rows


class GeometryOutputs(NamedTuple):
    """What :func:`run_geometry` writes for one model and seed."""

    features: str | Path  #: one row per feature: norms, the paper's ratios, firing, activation-based contributions
    summary: str | Path  #: the model's geometry measures and verdicts under each definition
    pca: str | Path  #: the decoder PCA's cumulative explained fraction per component


def run_geometry(weights_path: str | Path, init_path: str | Path, activations_dir: str | Path,
                 out: GeometryOutputs, run: str, settings: GeometrySettings,
                 device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: the feature table, summary and PCA curves of one model and seed, to the files of
    ``out``.

    ``init_path`` holds the step-0 weights the decoder is compared with: the model's own ``init.safetensors``,
    or, for models started from the trained standard SAE, that SAE's initialisation. The model runs on
    ``device`` (its codes and the Gram blocks); the tables are computed on the CPU."""
    activations = ActivationsFolder(activations_dir)
    model, extra = load_model(weights_path, device)
    if model.kind in KINDS and not KINDS[model.kind].nfm_geometry:
        raise ValueError(f"{weights_path} is a {model.kind} model: geometry reads SAE-only and NFM models "
                         "(featint.kinds.ModelKind.nfm_geometry)")
    init, _ = load_model(init_path)
    if init.sae.n_features != model.sae.n_features:
        raise ValueError(f"{init_path} has {init.sae.n_features} features, {weights_path} {model.sae.n_features}")
    normaliser = Normaliser.load(activations.normaliser)
    x = load_selected(ActivationStore(activations.split("train")), normaliser, settings.tokens)
    features = feature_table(model, init, x, settings)
    curves, pca_rows = pca_curves(model, settings)
    summary = pd.DataFrame(summary_rows(model, features, settings) + pca_rows)
    keys = {"run": run, "model": model.kind, "seed": int(extra["seed"])}
    for frame in (features, summary, curves):
        for position, (key, value) in enumerate(keys.items()):
            frame.insert(position, key, value)
    write_table(features, out.features, GEOMETRY_FEATURES)
    write_table(summary, out.summary, GEOMETRY_SUMMARY)
    write_table(curves, out.pca, GEOMETRY_PCA)
    return summary


def gather(feature_tables: list[str | Path], summary_tables: list[str | Path], pca_tables: list[str | Path],
           out_summary: str | Path, out_verdicts: str | Path, figures: GeometryFigures,
           paper_threshold: float) -> pd.DataFrame:
    """Stage entry point: the summary over models and seeds, the verdict table, and the geometry ``figures``."""
    from featint import plots

    features = pd.concat([pd.read_parquet(p) for p in feature_tables], ignore_index=True)
    summary = pd.concat([pd.read_parquet(p) for p in summary_tables], ignore_index=True)
    curves = pd.concat([pd.read_parquet(p) for p in pca_tables], ignore_index=True)
    write_table(summary, out_summary, GEOMETRY_SUMMARY)
    verdict_metrics = ["verdict_bimodal", "squared_norm_ashman_d",
                       "squared_norm_n_density_modes", "squared_norm_density_mode_low",
                       "squared_norm_density_mode_high", "squared_norm_prefers_2",
                       "squared_norm_bimodality_coefficient", "fraction_never_fired", "fraction_trained",
                       "spearman_squared_norm_vs_nfm_ratio", "spearman_squared_norm_vs_activation_nfm_share",
                       "partial_spearman_squared_norm_vs_activation_nfm_share_given_frequency",
                       "spearman_squared_norm_vs_firing_frequency"]
    # tidy: one row per model, seed, metric and feature subset (never the subset packed into a column name)
    chosen = summary[summary["metric"].isin(verdict_metrics)]
    verdicts = chosen[["run", "model", "seed", "metric", "subset", "value"]].sort_values(
        ["model", "seed", "metric", "subset"], ignore_index=True)
    write_table(verdicts, out_verdicts, GEOMETRY_VERDICTS)
    plots.squared_norm_histograms(features, figures.squared_norm_histograms, paper_threshold)
    plots.squared_norm_scatter(features, "firing_frequency", figures.squared_norm_vs_firing_frequency,
                               "Squared norm vs firing frequency (train tokens)")
    nfm_features = features[features["paper_interaction_ratio"] > 0]
    plots.squared_norm_scatter(nfm_features, "paper_interaction_ratio",
                               figures.squared_norm_vs_paper_interaction_ratio,
                               "Paper's weight-norm interaction ratio vs squared norm")
    plots.squared_norm_scatter(nfm_features, "activation_nfm_share",
                               figures.squared_norm_vs_activation_nfm_share,
                               "Activation-based NFM share vs squared norm (features that fired)")
    plots.squared_norm_violins(features, figures.squared_norm_by_cluster)
    plots.pca_elbows(curves, figures.pca_elbows)
    return verdicts
