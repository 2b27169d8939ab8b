"""SAEBench's core evaluation output for an SAE-only model: the run's numbers in the JSON that SAEBench's
``CoreEvalOutput`` (sae-bench :data:`SAEBENCH_VERSION`, ``sae_bench/evals/core/eval_output.py``) writes, so a
featint result sits beside SAEBench's tables without conversion (validated by SAEBench's own class in a test).

Every metric uses the definition of SAEBench's core eval (``sae_bench/evals/core/main.py``, read, not copied),
on this run's data rather than SAEBench's:

* the reconstruction, sparsity and shrinkage metrics are computed on the raw (un-normalised) activations of the
  run's **test split**, its selected tokens (position 0 and massive-norm outliers left out, as everywhere in the
  run), treated as one batch: ``explained_variance`` = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2) (float64
  sums), ``explained_variance_legacy`` = the token mean of 1 - ||x - x_hat||^2 / ||x - mean(x)||^2, ``mse`` = the
  token mean of ||x - x_hat||^2 (summed over dimensions), ``cossim``, the L2 norms and their per-token ratio,
  ``relative_reconstruction_bias`` = E||x_hat||^2 / E<x, x_hat>, ``l0`` and ``l1`` per token;
* the feature densities and ``consistent_activation_heuristic`` count the same tokens, a "prompt" being one of
  the split's context windows; the weight-based metrics read the SAE as SAELens holds it (the normaliser folded
  in, :func:`featint.saelens.folded_weights`);
* KL and CE are the behaviour stage's (its test windows and spliced positions, document-window bootstrap point
  estimates): the SAE's reconstruction against **zero-ablation** of the residual at the same positions, so
  ``ce_loss_score`` = (CE_zero - CE_sae) / (CE_zero - CE_clean) and ``kl_div_score`` = (KL_zero - KL_sae) / KL_zero.

SAEBench did not run: ``sae_bench_commit_hash`` says so, and ``eval_result_unstructured`` names the run, model,
seed and these differences.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from featint import __version__
from featint.activations import ActivationStore
from featint.config import Settings
from featint.errors import FeatintError
from featint.io import atomic_path, sha256_file
from featint.kinds import SAE_ONLY, final_component
from featint.layout import ActivationsFolder
from featint.models import FeatureModel, load_model
from featint.normaliser import Normaliser
from featint.saelens import SAELENS_VERSION, FoldedSAE, folded_weights
from featint.tables import CLEAN_REFERENCE_MODEL, DOCUMENT_WINDOW_BOOTSTRAP

#: The SAEBench release whose core eval output this file follows.
SAEBENCH_VERSION = "0.6.0"
EVAL_TYPE_ID = "core"
#: SAEBench rounds the per-feature details to this many decimals (``DEFAULT_FLOAT_PRECISION``)
FEATURE_PRECISION = 10
#: the per-feature details, in SAEBench's order (``CoreFeatureMetric``)
FEATURE_METRICS = ("feature_density", "consistent_activation_heuristic", "encoder_bias", "encoder_norm",
                   "encoder_decoder_cosine_sim", "max_decoder_cosine_sim", "max_encoder_cosine_sim")


@torch.no_grad()
def reconstruction_metrics(model: FeatureModel, normaliser: Normaliser, store: ActivationStore,
                           chunk: int = 4096) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], int]:
    """(metric categories without the LM's behaviour, per-feature densities and consistency, tokens) of the
    SAE-only ``model`` on the raw selected activations of ``store`` (see the module docstring for each
    definition)."""
    mask = store.selected_mask()
    windows = store.tokens()["window"].to_numpy()
    n_features = model.sae.n_features
    sum_x = torch.zeros(store.meta.d_model, dtype=torch.float64)
    n = 0
    for _, raw in store.iter_shards(mask):  # pass 1: the split's mean (the legacy formula's batch mean)
        sum_x += raw.double().sum(0)
        n += raw.shape[0]
    if n == 0:
        raise FeatintError(f"{store.directory} has no selected test tokens to evaluate.")
    mean = sum_x / n
    per_token: dict[str, list[torch.Tensor]] = {name: [] for name in
                                                ("sq_norm", "resid", "legacy", "dot", "l2_in", "l2_out", "l0", "l1")}
    fires = torch.zeros(n_features, dtype=torch.float64)
    window_fires: list[tuple[np.ndarray, np.ndarray]] = []
    for rows, raw in store.iter_shards(mask):
        for start in range(0, raw.shape[0], chunk):
            x = raw[start : start + chunk]
            rec = model(normaliser.apply(x))
            x_hat, code = normaliser.invert(rec.total).double(), rec.code
            x = x.double()
            resid = (x - x_hat).pow(2).sum(-1)
            per_token["sq_norm"].append(x.pow(2).sum(-1))
            per_token["resid"].append(resid)
            per_token["legacy"].append(1 - resid / (x - mean).pow(2).sum(-1))
            per_token["dot"].append((x * x_hat).sum(-1))
            per_token["l2_in"].append(x.norm(dim=-1))
            per_token["l2_out"].append(x_hat.norm(dim=-1))
            active = code.values > 0
            per_token["l0"].append(active.sum(-1).double())
            per_token["l1"].append(code.values.double().clamp_min(0).sum(-1))
            fires.index_add_(0, code.indices[active], torch.ones(int(active.sum()), dtype=torch.float64))
            token_windows = np.repeat(windows[rows[start : start + chunk]], active.sum(-1).numpy())
            window_fires.append((token_windows, code.indices[active].numpy()))
    t = {name: torch.cat(values) for name, values in per_token.items()}
    l2_in, l2_out = t["l2_in"], t["l2_out"]
    total_variance = float(t["sq_norm"].mean()) - float(mean.pow(2).sum())
    mse = float(t["resid"].mean())
    explained = (1.0 if mse < 1e-10 else 0.0) if total_variance < 1e-10 else 1.0 - mse / total_variance
    # tokens per window that activate a feature, among the windows where it fires (SAEBench: per prompt)
    pairs = np.unique(np.stack([np.concatenate([w for w, _ in window_fires]),
                                np.concatenate([f for _, f in window_fires])], axis=1), axis=0)
    prompts = np.bincount(pairs[:, 1], minlength=n_features).astype(np.float64) if len(pairs) else \
        np.zeros(n_features)
    density = (fires / n).numpy()
    consistency = np.divide(fires.numpy(), prompts, out=np.zeros(n_features), where=prompts > 0)
    categories = {
        "reconstruction_quality": {"explained_variance": explained,
                                   "explained_variance_legacy": float(t["legacy"].mean()), "mse": mse,
                                   "cossim": float((t["dot"] / (l2_in * l2_out)).mean())},
        "shrinkage": {"l2_norm_in": float(l2_in.mean()), "l2_norm_out": float(l2_out.mean()),
                      "l2_ratio": float((l2_out / torch.where(l2_in.abs() < 1e-4, torch.ones_like(l2_in),
                                                               l2_in)).mean()),
                      "relative_reconstruction_bias": float(l2_out.pow(2).mean() / t["dot"].mean())},
        "sparsity": {"l0": float(t["l0"].mean()), "l1": float(t["l1"].mean())},
    }
    return categories, {"feature_density": density, "consistent_activation_heuristic": consistency}, n


def max_cosine_similarity(vectors: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each row of ``vectors`` [F, d], its largest cosine similarity with any other row ([F]; chunks of rows
    against all, never the F x F matrix at once)."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    out = torch.empty(unit.shape[0], dtype=torch.float64)
    for start in range(0, unit.shape[0], chunk):
        sims = unit[start : start + chunk] @ unit.T
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = float("-inf")
        out[start : start + chunk] = sims.max(dim=1).values
    return out


def weight_metrics(folded: FoldedSAE) -> dict[str, np.ndarray]:
    """SAEBench's per-feature weight metrics of the SAE as SAELens holds it (raw activation space)."""
    state = folded.state
    W_enc, W_dec = state["W_enc"].double(), state["W_dec"].double()  # [d, F], [F, d]
    return {
        "encoder_bias": state["b_enc"].double().numpy(),
        "encoder_norm": W_enc.norm(dim=0).numpy(),
        "encoder_decoder_cosine_sim": torch.nn.functional.cosine_similarity(W_dec, W_enc.T, dim=1).numpy(),
        "max_encoder_cosine_sim": max_cosine_similarity(W_enc.T).numpy(),
        "max_decoder_cosine_sim": max_cosine_similarity(W_dec).numpy(),
    }


def behaviour_metrics(summary: pd.DataFrame, kind: str, seed: int) -> dict[str, dict[str, float]]:
    """The behaviour stage's KL and CE of ``kind`` / ``seed`` and of the clean and zero-ablated LM (point
    estimates of the document-window bootstrap), in SAEBench's two categories."""
    rows = summary[summary["method"] == DOCUMENT_WINDOW_BOOTSTRAP]

    def value(model: str, row_seed: int, condition: str, metric: str) -> float:
        hit = rows[(rows["model"] == model) & (rows["seed"] == row_seed) & (rows["condition"] == condition)
                   & (rows["metric"] == metric)]
        if len(hit) != 1:
            raise FeatintError(f"the behaviour summary has {len(hit)} rows of {metric} for {model} seed {row_seed} "
                               f"({condition}); rerun gather_behaviour with this model in the run's models.")
        return float(hit["estimate"].iloc[0])

    condition = final_component(kind)
    kl_sae, ce_sae = value(kind, seed, condition, "mean_kl"), value(kind, seed, condition, "mean_ce")
    kl_zero = value(CLEAN_REFERENCE_MODEL, -1, "zero_ablation", "mean_kl")
    ce_zero = value(CLEAN_REFERENCE_MODEL, -1, "zero_ablation", "mean_ce")
    ce_clean = value(CLEAN_REFERENCE_MODEL, -1, "clean", "mean_ce")
    return {
        "model_behavior_preservation": {"kl_div_score": (kl_zero - kl_sae) / kl_zero,
                                        "kl_div_with_ablation": kl_zero, "kl_div_with_sae": kl_sae},
        "model_performance_preservation": {"ce_loss_score": (ce_zero - ce_sae) / (ce_zero - ce_clean),
                                           "ce_loss_with_ablation": ce_zero, "ce_loss_with_sae": ce_sae,
                                           "ce_loss_without_sae": ce_clean},
    }


def misc_metrics(features: dict[str, np.ndarray]) -> dict[str, float]:
    """SAEBench's summary of the per-feature metrics (``calculate_misc_metrics``)."""
    density = features["feature_density"]
    total = density.sum()
    return {
        "freq_over_1_percent": float((density > 0.01).mean()),
        "freq_over_10_percent": float((density > 0.1).mean()),
        "normalized_freq_over_1_percent": float(density[density > 0.01].sum() / total) if total > 0 else 0.0,
        "normalized_freq_over_10_percent": float(density[density > 0.1].sum() / total) if total > 0 else 0.0,
        "average_max_encoder_cosine_sim": float(features["max_encoder_cosine_sim"].mean()),
        "average_max_decoder_cosine_sim": float(features["max_decoder_cosine_sim"].mean()),
        "frac_alive": float((density > 0).mean()),
    }


def core_eval(settings: Settings, weights_path: str | Path, activations_dir: str | Path,
              behaviour_summary: str | Path, run: str, out_path: str | Path) -> dict[str, Any]:
    """Stage entry point: SAEBench's core eval JSON of the SAE-only model at ``weights_path`` (its KL and CE
    from the gathered ``behaviour_summary``), written to ``out_path``; returns it."""
    from featint.lm import model_key

    model, extra = load_model(weights_path)
    if model.kind not in SAE_ONLY:
        raise FeatintError(f"{weights_path} is a {model.kind} model: SAEBench's core eval is for SAEs alone "
                           f"({', '.join(SAE_ONLY)}).")
    seed = int(extra["seed"])
    activations = ActivationsFolder(activations_dir)
    normaliser = Normaliser.load(activations.normaliser)
    store = ActivationStore(activations.split("test"))
    categories, features, n_tokens = reconstruction_metrics(model, normaliser, store)
    folded = folded_weights(weights_path, normaliser)
    features.update(weight_metrics(folded))
    summary = pd.read_parquet(behaviour_summary)
    behaviour = behaviour_metrics(summary, model.kind, seed)
    spliced = summary[(summary["model"] == model.kind) & (summary["seed"] == seed)]["n_tokens"]
    model_name = settings.model.name or model_key(settings.model)
    sae_cfg = {**folded.fields, "dtype": "float32", "device": "cpu", "normalize_activations": "none",
               "reshape_activations": "none",
               "metadata": {"sae_lens_version": SAELENS_VERSION, "model_name": model_name,
                            "hook_name": normaliser.hook_name, "context_size": settings.extraction.context_length}}
    metrics = {**behaviour, **categories,
               "token_stats": {"total_tokens_eval_reconstruction": int(spliced.max()) if len(spliced) else 0,
                               "total_tokens_eval_sparsity_variance": n_tokens},
               "misc_metrics": misc_metrics(features)}
    order = ("model_behavior_preservation", "model_performance_preservation", "reconstruction_quality", "shrinkage",
             "sparsity", "token_stats", "misc_metrics")
    details = [{"index": i, **{name: round(float(features[name][i]), FEATURE_PRECISION) for name in FEATURE_METRICS}}
               for i in range(model.sae.n_features)]
    output = {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": {
            "model_name": model_name, "llm_dtype": settings.model.dtype, "batch_size_prompts": 1,
            "n_eval_reconstruction_batches": 1, "n_eval_sparsity_variance_batches": 1,
            "dataset": f"featint corpus {settings.corpus.source} (test split)",
            "context_size": settings.extraction.context_length, "compute_kl": True, "compute_ce_loss": True,
            "compute_l2_norms": True, "compute_sparsity_metrics": True, "compute_variance_metrics": True,
            "compute_featurewise_density_statistics": True, "compute_featurewise_weight_based_metrics": True,
            "exclude_special_tokens_from_reconstruction": settings.extraction.exclude_position_zero,
            "verbose": False},
        "eval_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"featint:{run}:{model.kind}:{seed}:{sha256_file(weights_path)}"
                                  )),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {name: metrics[name] for name in order},
        "eval_result_details": details,
        "sae_bench_commit_hash": f"not SAEBench: featint {__version__} with SAEBench {SAEBENCH_VERSION}'s core "
                                 "definitions",
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": SAELENS_VERSION,
        "sae_cfg_dict": sae_cfg,
        "eval_result_unstructured": {
            "producer": f"featint {__version__}", "run": run, "model": model.kind, "seed": seed,
            "weights": str(weights_path), "imported_from": extra.get("imported_from"),
            "reconstruction_tokens": "the run's test split, selected tokens (position 0 and massive-norm outliers "
                                     "left out), raw activation space, one batch",
            "kl_ce": "the behaviour stage's test windows and spliced positions; ablation = zero-ablation of the "
                     "residual at those positions; document-window bootstrap point estimates",
            "prompts": "a prompt is one of the split's context windows"},
    }
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    return output
