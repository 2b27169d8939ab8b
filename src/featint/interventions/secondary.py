"""The secondary SAE on a model's NFM interaction embedding."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pandas as pd
import torch

from featint.activations import ActivationStore, write_store_from_tensor
from featint.config import Settings
from featint.interventions.base import InterventionError
from featint.kinds import SECONDARY_KIND
from featint.layout import ModelFolder
from featint.models import FeatureModel, TopKSAE, load_model
from featint.normaliser import Normaliser

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Secondary SAE on the interaction embedding


def require_interaction(model: FeatureModel, weights_path: str | Path) -> None:
    if model.nfm is None or not model.nfm.use_interaction:
        raise InterventionError(f"{weights_path} ({model.kind}) has no NFM interaction pathway; the intervention "
                                "stage needs a model with one (interventions.models: e.g. sequential, joint).")


@torch.no_grad()
def interaction_embeddings(model: FeatureModel, normaliser: Normaliser, store: ActivationStore,
                           max_tokens: int | None, chunk: int = 4096) -> torch.Tensor:
    """The NFM's interaction embedding (post-first-Linear, pre-ReLU) of the store's selected tokens, computed
    by the model's own forward (its SAE k, the run's normaliser, dropout off) on the model's device. [N, K], on
    the CPU (they are written to a shard store)."""
    from featint.training import load_selected

    model.eval()
    device = model.sae.W_enc.device
    x = load_selected(store, normaliser, max_tokens)
    parts = [model(x[start : start + chunk].to(device)).embedding.cpu()  # type: ignore[union-attr]
             for start in range(0, x.shape[0], chunk)]
    return torch.cat(parts)


def run_secondary(settings: Settings, weights_path: str | Path, activations_dir: str | Path, out_dir: str | Path,
                  device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: embeddings of train / validation tokens, their normaliser, and the secondary TopK SAE
    trained by the one training loop; returns the training log."""
    from featint.training import ShuffledBatches, TrainingData, TrainOutputs, save_training_outputs, train

    out = ModelFolder(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model, extra = load_model(weights_path, device)
    require_interaction(model, weights_path)
    seed = int(extra["seed"])
    secondary = settings.interventions.secondary
    data = TrainingData.open(activations_dir)
    hook_name = f"{data.normaliser.hook_name}|{model.kind}/seed~{seed}|nfm.embedding"
    train_embeddings = interaction_embeddings(model, data.normaliser, data.train, secondary.embedding_tokens)
    validation_embeddings = interaction_embeddings(model, data.normaliser, data.validation,
                                                   settings.training.validation_tokens)
    embedding_store = out.file("embeddings")  # a scratch store, removed once the secondary SAE is trained
    write_store_from_tensor(embedding_store, train_embeddings, "train", hook_name)
    embedding_normaliser = Normaliser.fit([train_embeddings], "zscore", hook_name)
    embed_dim = train_embeddings.shape[1]
    n_features = secondary.expansion * embed_dim
    k = max(1, round(secondary.k_fraction * n_features))
    torch.manual_seed(seed)
    sae = TopKSAE(embed_dim, n_features, k, settings.sae.decoder_norm, settings.sae.pre_encoder_bias,
                  settings.sae.tied_init)
    feature_model = FeatureModel(SECONDARY_KIND, sae).to(device)
    training = dataclasses.replace(settings.training, tokens=secondary.tokens, batch_size=secondary.batch_size)
    auxk = dataclasses.replace(settings.sae.auxk, k_aux=min(settings.sae.auxk.k_aux, n_features // 2),
                               dead_after_tokens=min(settings.sae.auxk.dead_after_tokens, secondary.tokens // 4))
    batches = ShuffledBatches(ActivationStore(embedding_store), embedding_normaliser, training.batch_size,
                              training.shuffle_shards, seed, device)
    validation = embedding_normaliser.apply(validation_embeddings).to(batches.device)
    result = train(feature_model, batches, validation, training, auxk, secondary.lr, out.checkpoint,
                   name=f"secondary {model.kind}/seed~{seed}")
    embedding_normaliser.save(out.normaliser)
    save_training_outputs(feature_model, result, TrainOutputs.in_folder(out), model.kind, seed,
                          {"hook_name": hook_name, "seed": seed, "lr": secondary.lr,
                           "source_weights": str(weights_path)},
                          {"lr": secondary.lr, "n_features": n_features, "k": k, "embed_dim": embed_dim},
                          title=f"secondary SAE on the interaction embedding of {model.kind}, seed {seed}")
    shutil.rmtree(embedding_store, ignore_errors=True)  # recomputable from the model; training only
    return result.log
