"""The 2x2 factorial experiment: a secondary SAE on the NFM's interaction embedding, feature selection on
formality x emotion stimuli, two-way ANOVAs, and clamping interventions read out through next-token logits.

Secondary SAE (:func:`run_secondary`): the interaction embedding ``W1 p(f) + b1`` (post-first-Linear,
pre-ReLU) is computed by the trained model itself (``Reconstruction.embedding``: same SAE k, same normaliser,
dropout off) on train-split tokens, z-scored by its own saved normaliser, and a TopK SAE is trained on it
with the one training loop.

Stimulus read-out (:func:`sentence_features`): each sentence runs through the LM to the hook (right-padded
batches: causal attention, so real tokens never see padding); per sentence, SAE / secondary codes are mean-
pooled over real tokens excluding BOS and massive-norm outliers (:func:`pool_per_sequence`).

Selection on the ``select`` stimuli, tests on the held-out ``test`` stimuli: Welch t per primary feature for
each factor (BH-FDR, top one kept, as the paper), one-way ANOVA across the four cells per secondary feature
(the paper's ranking), then a two-way ANOVA ``activation ~ C(formality) * C(emotion)`` (Type II) on the test
sentences for the top-ranked features.

Clamping (:func:`clamped_reconstruction`) runs inside the one splice: SAE -> NFM linear + interaction, where
the chosen secondary feature's code is multiplied (or set) before the interaction MLP's second half; the
change is applied as ``embedding + (new - old) * W_dec2[j] / scale``, so a multiplier of 1 reproduces the
unclamped logits exactly. Responses are next-token logits of the word sets at each prompt's last position,
relative to the unclamped pipeline (the paper) and to the clean model.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from featint import stats
from featint.activations import ActivationStore, write_store_from_tensor
from featint.config import Settings
from featint.errors import FeatintError
from featint.io import write_parquet
from featint.lm import HookPoint, load_bridge
from featint.models import SECONDARY_KIND, FeatureModel, SparseCode, TopKSAE, load_model
from featint.normaliser import Normaliser
from featint.splice import ModelContinuation, spliced_residual
from featint.stimuli import Stimuli, check_length_match, length_report, load_stimuli, word_tokens

log = logging.getLogger(__name__)


#: Tables each intervention job writes (``<name>.parquet``) and the gather concatenates over models and seeds.
TABLES: tuple[str, ...] = ("lengths", "word_tokens", "primary_tests", "secondary_tests", "sentence_activations",
                           "clamp_logits", "clamp_statistics", "generations")


class InterventionError(FeatintError):
    """A model without an interaction pathway, a broken no-op clamp, or unusable stimuli."""


# ---------------------------------------------------------------------------------------------------------
# Secondary SAE on the interaction embedding


def _require_interaction(model: FeatureModel, weights_path: str | Path) -> None:
    if model.nfm is None or not model.nfm.use_interaction:
        raise InterventionError(f"{weights_path} ({model.kind}) has no NFM interaction pathway; the intervention "
                                "stage needs a model with one (interventions.models: e.g. sequential, joint).")


@torch.no_grad()
def interaction_embeddings(model: FeatureModel, normaliser: Normaliser, store: ActivationStore,
                           max_tokens: int | None, chunk: int = 4096) -> torch.Tensor:
    """The NFM's interaction embedding (post-first-Linear, pre-ReLU) of the store's selected tokens, computed
    by the model's own forward (its SAE k, the run's normaliser, dropout off). [N, K]"""
    from featint.training import load_selected

    model.eval()
    x = load_selected(store, normaliser, max_tokens)
    parts = [model(x[start : start + chunk]).embedding for start in range(0, x.shape[0], chunk)]
    return torch.cat(parts)  # type: ignore[arg-type]


def run_secondary(settings: Settings, weights_path: str | Path, activations_dir: str | Path, out_dir: str | Path,
                  device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: embeddings of train / validation tokens, their normaliser, and the secondary TopK SAE
    trained by the one training loop; returns the training log."""
    from featint.training import ShuffledBatches, TrainingData, save_training_outputs, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, extra = load_model(weights_path)
    _require_interaction(model, weights_path)
    seed = int(extra["seed"])
    secondary = settings.interventions.secondary
    data = TrainingData.open(activations_dir)
    hook_name = f"{data.normaliser.hook_name}|{model.kind}/seed~{seed}|nfm.embedding"
    train_embeddings = interaction_embeddings(model, data.normaliser, data.train, secondary.embedding_tokens)
    validation_embeddings = interaction_embeddings(model, data.normaliser, data.validation,
                                                   settings.training.validation_tokens)
    embedding_store = out_dir / "embeddings"
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
    result = train(feature_model, batches, validation, training, auxk, secondary.lr, out_dir / "checkpoint.pt",
                   name=f"secondary {model.kind}/seed~{seed}")
    embedding_normaliser.save(out_dir / "normaliser.safetensors")
    save_training_outputs(feature_model, result, out_dir, model.kind, seed,
                          {"hook_name": hook_name, "seed": seed, "lr": secondary.lr, "source_weights": str(weights_path)},
                          {"lr": secondary.lr, "n_features": n_features, "k": k, "embed_dim": embed_dim},
                          title=f"secondary SAE on the interaction embedding of {model.kind}, seed {seed}")
    shutil.rmtree(embedding_store, ignore_errors=True)  # recomputable from the model; training only
    return result.log


# ---------------------------------------------------------------------------------------------------------
# Sentences -> pooled features


def pool_per_sequence(values: torch.Tensor, real: torch.Tensor, keep: torch.Tensor | None = None,
                      exclude_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` [B, T, m] over each sequence's real tokens (``real`` [B, T], left or right padding),
    without the first real token (BOS) unless asked, and without tokens where ``keep`` is False.
    Returns (pooled [B, m], tokens used [B])."""
    use = real.clone()
    if exclude_first:
        first = real.float().argmax(dim=1)
        use[torch.arange(real.shape[0]), first] = False
    if keep is not None:
        use &= keep
    counts = use.sum(dim=1)
    pooled = (values * use[..., None]).sum(dim=1) / counts.clamp_min(1)[:, None]
    return pooled, counts


@dataclass
class TokenBatch:
    tokens: torch.Tensor  # [B, T], BOS first, right-padded
    real: torch.Tensor  # [B, T] bool

    @property
    def last(self) -> torch.Tensor:
        return self.real.sum(dim=1) - 1


def tokenize_batch(tokenizer: Any, texts: list[str], bos_id: int) -> TokenBatch:
    """BOS + tokens of each text, right-padded (pad id = BOS; never attended by real tokens)."""
    ids = [[bos_id] + list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    length = max(len(x) for x in ids)
    tokens = torch.full((len(ids), length), bos_id, dtype=torch.long)
    real = torch.zeros(len(ids), length, dtype=torch.bool)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row)
        real[i, : len(row)] = True
    return TokenBatch(tokens, real)


@dataclass
class Pipeline:
    """A trained model with its secondary SAE, and the normalisers they work in."""

    model: FeatureModel
    normaliser: Normaliser
    secondary: FeatureModel
    secondary_normaliser: Normaliser

    def secondary_code(self, embedding: torch.Tensor) -> SparseCode:
        """The secondary SAE's code of interaction embeddings [N, K] (in its own normalised space)."""
        code, _ = self.secondary.sae.encode(self.secondary_normaliser.apply(embedding))
        return code

    @torch.no_grad()
    def codes(self, residual: torch.Tensor) -> tuple[SparseCode, SparseCode]:
        """Primary and secondary sparse codes of raw residual vectors [N, d]."""
        rec = self.model(self.normaliser.apply(residual))
        return rec.code, self.secondary_code(rec.embedding)


@dataclass
class SentenceFeatures:
    primary: np.ndarray  # [S, F] pooled
    secondary: np.ndarray  # [S, F2] pooled
    tokens_used: np.ndarray  # [S]
    outliers_excluded: int
    secondary_token_values: np.ndarray  # nonzero secondary activations per feature are taken from here [N, F2]


@torch.no_grad()
def sentence_features(continuation: ModelContinuation, tokenizer: Any, bos_id: int, pipeline: Pipeline,
                      texts: list[str], outlier_threshold: float, batch_size: int = 32) -> SentenceFeatures:
    """Pooled primary and secondary codes per sentence (BOS, padding and massive-norm outliers excluded)."""
    primary, secondary, used, token_values = [], [], [], []
    outliers = 0
    F, F2 = pipeline.model.sae.n_features, pipeline.secondary.sae.n_features
    for start in range(0, len(texts), batch_size):
        batch = tokenize_batch(tokenizer, texts[start : start + batch_size], bos_id)
        residual = continuation.residual(batch.tokens)
        keep = residual.norm(dim=-1) <= outlier_threshold
        outliers += int((batch.real & ~keep)[:, 1:].sum())
        code, secondary_code = pipeline.codes(residual.reshape(-1, residual.shape[-1]))
        B, T = batch.tokens.shape
        dense = code.dense(F).reshape(B, T, F)
        dense_secondary = secondary_code.dense(F2).reshape(B, T, F2)
        pooled, counts = pool_per_sequence(dense, batch.real, keep)
        pooled_secondary, _ = pool_per_sequence(dense_secondary, batch.real, keep)
        primary.append(pooled.numpy())
        secondary.append(pooled_secondary.numpy())
        used.append(counts.numpy())
        mask = batch.real.clone()
        mask[:, 0] = False
        token_values.append(dense_secondary[mask & keep].numpy())
    tokens_used = np.concatenate(used)
    if (tokens_used == 0).any():
        raise InterventionError(f"{int((tokens_used == 0).sum())} stimulus sentence(s) have no token left after "
                                "excluding BOS and massive-norm outliers; lengthen them.")
    return SentenceFeatures(np.concatenate(primary), np.concatenate(secondary), tokens_used, outliers,
                            np.concatenate(token_values))


# ---------------------------------------------------------------------------------------------------------
# Selection and tests


def primary_tests(pooled: np.ndarray, sentences: pd.DataFrame) -> pd.DataFrame:
    """Welch t per primary feature, formality (formal vs informal) and emotion (emotional vs neutral), on the
    select split; BH q-values across features; ``rank`` 1 = the feature the paper's procedure keeps."""
    select = (sentences["split"] == "select").to_numpy()
    rows = []
    for factor, level in (("formality", "formal"), ("emotion", "emotional")):
        group = (sentences.loc[select, factor] == level).to_numpy()
        t, p = stats.welch_t_tests_by_column(pooled[select], group)
        q = stats.benjamini_hochberg(p)
        order = np.lexsort((-np.abs(t), p))
        rank = np.empty(len(p), dtype=np.int32)
        rank[order] = np.arange(1, len(p) + 1)
        rows.append(pd.DataFrame({"factor": factor, "feature": np.arange(len(p), dtype=np.int32), "t": t, "p": p,
                                  "q": q, "rank": rank}))
    return pd.concat(rows, ignore_index=True)


def clamp_candidates(ranking: pd.DataFrame, min_fires_fraction: float) -> pd.DataFrame:
    """Secondary features that may be clamped, best first: the select-split ranking (one-way ANOVA rows)
    restricted to features firing on at least ``min_fires_fraction`` of the select sentences."""
    ranking = ranking[ranking["test"] == "one_way_anova_cells"].sort_values("rank")
    return ranking[ranking["fires_fraction"] >= min_fires_fraction]


def secondary_tests(pooled: np.ndarray, sentences: pd.DataFrame, top: int, alpha: float,
                    min_fires_fraction: float = 0.0) -> pd.DataFrame:
    """One-way ANOVA across the four cells per secondary feature on the select split (the paper's ranking),
    then for the ``top`` ranked features, and the best-ranked one firing on at least ``min_fires_fraction`` of
    the select sentences (the one that is clamped), a two-way ANOVA on the test split with BH q-values across
    them. Every selection statistic (rank, ``fires_fraction``) comes from the select split only."""
    select = (sentences["split"] == "select").to_numpy()
    test = ~select
    f, p = stats.one_way_anova_by_column(pooled[select], sentences.loc[select, "cell"].to_numpy())
    order = np.lexsort((-f, p))
    rank = np.empty(len(f), dtype=np.int32)
    rank[order] = np.arange(1, len(f) + 1)
    fires = (pooled[select] > 0).mean(axis=0)
    ranking = pd.DataFrame({"feature": np.arange(len(f), dtype=np.int32), "split": "select",
                            "test": "one_way_anova_cells", "effect": "cell", "F": f, "p": p, "rank": rank,
                            "fires_fraction": fires})
    clamped = clamp_candidates(ranking, min_fires_fraction)["feature"].to_numpy()[:1]
    to_test = list(order[:top]) + [int(c) for c in clamped if c not in set(order[:top])]
    tested = []
    test_frame = sentences[test].reset_index(drop=True)
    for feature in to_test:
        frame = test_frame.assign(activation=pooled[test, feature])
        if np.ptp(frame["activation"]) == 0:
            continue
        table = stats.two_way_anova(frame, "activation", "formality", "emotion")
        table = table[table["effect"] != "Residual"]
        means = frame.groupby(["formality", "emotion"])["activation"].mean()
        contrast = (means["formal", "emotional"] - means["formal", "neutral"]) - (
            means["informal", "emotional"] - means["informal", "neutral"])
        tested.append(table.assign(feature=np.int32(feature), split="test", test="two_way_anova_type2",
                                   rank=rank[feature], interaction_contrast=contrast,
                                   fires_fraction=fires[feature]))
    if tested:
        two_way = pd.concat(tested, ignore_index=True)
        two_way["q"] = np.nan
        for idx in two_way.groupby("effect").groups.values():
            two_way.loc[idx, "q"] = stats.benjamini_hochberg(two_way.loc[idx, "p"].to_numpy())
        two_way["significant_fdr"] = two_way["q"] < alpha
        return pd.concat([ranking, two_way], ignore_index=True)
    return ranking


# ---------------------------------------------------------------------------------------------------------
# Clamping inside the splice


@dataclass(frozen=True)
class Clamp:
    role: str  # selected_secondary | least_sensitive_secondary | random_secondary | linear_primary_<factor>
    space: str  # secondary | linear
    feature: int
    mode: str  # multiply | set
    value: float

    @property
    def is_noop(self) -> bool:
        return self.mode == "multiply" and self.value == 1.0


def _feature_value(code: SparseCode, feature: int) -> torch.Tensor:
    return (code.values * (code.indices == feature)).sum(dim=1)


def clamped_reconstruction(pipeline: Pipeline, clamp: Clamp | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised input -> normalised reconstruction SAE + linear + interaction, with ``clamp`` applied
    (``None`` = the unclamped pipeline = the model's full reconstruction)."""
    model, nfm = pipeline.model, pipeline.model.nfm
    assert nfm is not None

    def reconstruct(z: torch.Tensor) -> torch.Tensor:
        rec = model(z)
        if clamp is None:
            return rec.total
        linear, embedding = rec.linear, rec.embedding
        assert embedding is not None
        if clamp.space == "secondary":
            old = _feature_value(pipeline.secondary_code(embedding), clamp.feature)
            new = old * clamp.value if clamp.mode == "multiply" else torch.full_like(old, clamp.value)
            row = pipeline.secondary.sae.W_dec[clamp.feature] / pipeline.secondary_normaliser.scale
            embedding = embedding + (new - old)[:, None] * row
        elif clamp.space == "linear":
            assert linear is not None
            old = _feature_value(rec.code, clamp.feature)
            new = old * clamp.value if clamp.mode == "multiply" else torch.full_like(old, clamp.value)
            linear = linear + (new - old)[:, None] * nfm.W_lin[clamp.feature]
        out = rec.sae
        if linear is not None:
            out = out + linear
        return out + nfm.interaction_from_embedding(embedding)

    return reconstruct


@torch.no_grad()
def prompt_logits(continuation: ModelContinuation, batch: TokenBatch, pipeline: Pipeline | None,
                  clamp: Clamp | None, token_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits [P, W] of ``token_ids`` at each prompt's last real position: clean model when
    ``pipeline`` is None, else the splice of the (clamped) pipeline at every real position but BOS."""
    residual = continuation.residual(batch.tokens)
    if pipeline is not None:
        positions = batch.real.clone()
        positions[:, 0] = False
        residual = spliced_residual(residual, clamped_reconstruction(pipeline, clamp), pipeline.normaliser,
                                    positions)
    logits = continuation.logits(residual)
    last = logits[torch.arange(logits.shape[0]), batch.last]
    if not torch.isfinite(last).all():
        raise InterventionError(f"non-finite logits under clamp {clamp}; check the model and secondary SAE.")
    return last[:, token_ids]


def clamp_specs(settings: Settings, primary: pd.DataFrame, secondary: pd.DataFrame,
                features: SentenceFeatures, seed: int) -> list[Clamp]:
    """Clamped features: the top secondary feature(s) by the select-split ranking, the least sensitive and a
    random secondary feature among those that fire on the stimuli, and the NFM linear-term column of the top
    primary feature of each factor (no interaction expected)."""
    config = settings.interventions
    firing = clamp_candidates(secondary, config.min_fires_fraction)
    if firing.empty:
        raise InterventionError("no secondary feature fires on the stimuli; the secondary SAE is dead or the "
                                "stimuli are empty.")
    chosen = [("selected_secondary", "secondary", int(f)) for f in firing["feature"][: config.clamp_features]]
    least = int(firing["feature"].iloc[-1])
    chosen.append(("least_sensitive_secondary", "secondary", least))
    taken = {f for _, _, f in chosen}
    pool = [int(f) for f in firing["feature"] if int(f) not in taken]
    if pool:
        rng = np.random.default_rng(seed)
        chosen.append(("random_secondary", "secondary", int(rng.choice(pool))))
    for factor in ("formality", "emotion"):
        top = primary[(primary["factor"] == factor) & (primary["rank"] == 1)]
        chosen.append((f"linear_primary_{factor}", "linear", int(top["feature"].iloc[0])))
    specs = []
    for role, space, feature in chosen:
        specs += [Clamp(role, space, feature, "multiply", float(m)) for m in config.multipliers]
        if space == "secondary":
            active = features.secondary_token_values[:, feature]
            active = active[active > 0]
            for quantile in config.set_quantiles:
                if active.size:
                    specs.append(Clamp(role, space, feature, "set", float(np.quantile(active, quantile))))
    return specs


def clamp_read_out(continuation: ModelContinuation, prompts: TokenBatch, pipeline: Pipeline, specs: list[Clamp],
                   words: pd.DataFrame, prompt_texts: list[str]) -> pd.DataFrame:
    """Logits of every word at every prompt for the clean model, the unclamped pipeline and each clamp, with
    the responses relative to the pipeline (the paper) and to the clean model. Multiplier 1 must reproduce
    the unclamped pipeline exactly."""
    token_ids = torch.tensor(words["token_id"].to_numpy(), dtype=torch.long)
    clean = prompt_logits(continuation, prompts, None, None, token_ids)
    unclamped = prompt_logits(continuation, prompts, pipeline, None, token_ids)
    frames = []
    P, W = clean.shape
    base = pd.DataFrame({"prompt_id": np.repeat(np.arange(P, dtype=np.int32), W),
                         "prompt": np.repeat(np.array(prompt_texts, dtype=object), W),
                         "word": np.tile(words["word"].to_numpy(), P),
                         "word_formality": np.tile(words["formality"].to_numpy(), P),
                         "word_emotion": np.tile(words["emotion"].to_numpy(), P),
                         "word_index": np.tile(words.groupby(["formality", "emotion"]).cumcount().to_numpy(), P)})
    for spec in tqdm(specs, desc="clamps", unit="clamp", mininterval=5):
        logits = prompt_logits(continuation, prompts, pipeline, spec, token_ids)
        if spec.is_noop and not torch.equal(logits, unclamped):
            raise InterventionError(f"multiplier 1 on {spec.space} feature {spec.feature} changed the logits "
                                    f"(max {float((logits - unclamped).abs().max()):.3g}); the clamp is not a no-op.")
        frames.append(base.assign(role=spec.role, space=spec.space, feature=np.int32(spec.feature),
                                  mode=spec.mode, value=spec.value, logit=logits.reshape(-1).double().numpy(),
                                  delta_vs_pipeline=(logits - unclamped).reshape(-1).double().numpy(),
                                  delta_vs_clean=(logits - clean).reshape(-1).double().numpy()))
    frames.append(base.assign(role="unclamped_pipeline", space="none", feature=np.int32(-1), mode="none",
                              value=np.nan, logit=unclamped.reshape(-1).double().numpy(),
                              delta_vs_pipeline=0.0, delta_vs_clean=(unclamped - clean).reshape(-1).double().numpy()))
    return pd.concat(frames, ignore_index=True)


def clamp_statistics(read_out: pd.DataFrame) -> pd.DataFrame:
    """Per clamp and reference: two-way ANOVA ``delta ~ C(word_formality) * C(word_emotion) + C(prompt)``
    over prompt x word observations (Type II; main effects, interaction F, p, partial eta^2); the same design
    on per-word means over prompts (words as the sampled units: the by-item test, robust to word-specific
    responses that repeat across prompts); a linear mixed model with crossed random intercepts for prompt and
    word (``stats.crossed_random_intercepts``; equal to the by-item test when the design is balanced, still valid
    when it is not); the interaction contrast in logits; and the paper's test
    (difference scores paired by list order, one-way F, df (1, 2n - 2)), labelled as such."""
    rows = []
    clamps = read_out[read_out["role"] != "unclamped_pipeline"]
    for keys, group in clamps.groupby(["role", "space", "feature", "mode", "value"]):
        for reference in ("delta_vs_pipeline", "delta_vs_clean"):
            frame = group.rename(columns={reference: "delta"})
            key = dict(zip(["role", "space", "feature", "mode", "value"], keys), reference=reference)
            if np.ptp(frame["delta"]) == 0:
                # nothing to test: the no-op multiplier (must be exactly 0 vs the pipeline), or a feature that
                # is never active at the prompts (multiplying zero changes nothing)
                noop = key["mode"] == "multiply" and key["value"] == 1.0
                rows.append({**key, "test": "noop" if noop else "no_change", "effect": "all",
                             "max_abs_delta": float(frame["delta"].abs().max())})
                continue
            table = stats.two_way_anova(frame, "delta", "word_formality", "word_emotion", block="prompt_id")
            means = frame.groupby(["word_formality", "word_emotion"])["delta"].mean()
            contrast = (means["formal", "emotional"] - means["formal", "neutral"]) - (
                means["casual", "emotional"] - means["casual", "neutral"])
            for record in table[table["effect"] != "Residual"].to_dict("records"):
                rows.append({**key, "test": "two_way_anova_type2_prompt_block", **record,
                             "interaction_contrast": contrast, "max_abs_delta": float(frame["delta"].abs().max())})
            # by-item analysis: words are the sampled units of each set, prompts are repeated measures
            word_means = frame.groupby(["word", "word_formality", "word_emotion"])["delta"].mean().reset_index()
            by_word = stats.two_way_anova(word_means, "delta", "word_formality", "word_emotion")
            for record in by_word[by_word["effect"] != "Residual"].to_dict("records"):
                rows.append({**key, "test": "two_way_anova_type2_word_means", **record,
                             "interaction_contrast": contrast})
            # the same question as a crossed random-intercept model (prompts and words both sampled units)
            mixed = stats.crossed_random_intercepts(frame, "delta", "word_formality", "word_emotion",
                                                    prompt="prompt_id", word="word")
            for record in mixed.to_dict("records"):
                rows.append({**key, "test": "mixedlm_crossed_prompt_word", **record,
                             "interaction_contrast": contrast})
            paired = frame.pivot_table(index=["prompt_id", "word_index"], columns=["word_formality", "word_emotion"],
                                       values="delta").dropna()
            d_formal = (paired["formal", "emotional"] - paired["formal", "neutral"]).to_numpy()
            d_casual = (paired["casual", "emotional"] - paired["casual", "neutral"]).to_numpy()
            f, p = stats.paper_interaction_test(d_formal, d_casual)
            rows.append({**key, "test": "paper_difference_score_F", "effect": "word_formality:word_emotion",
                         "F": f, "p": p, "df": float(len(d_formal) + len(d_casual) - 2),
                         "interaction_contrast": contrast})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Generations


@torch.no_grad()
def greedy_generations(continuation: ModelContinuation, tokenizer: Any, bos_id: int, pipeline: Pipeline,
                       conditions: list[tuple[str, Clamp | None, bool]], prompts: list[str],
                       n_tokens: int) -> pd.DataFrame:
    """Greedy continuations of each prompt under each condition (label, clamp, spliced?); all conditions of a
    prompt advance together as one batch of equal-length sequences."""
    rows = []
    for prompt_id, prompt in enumerate(prompts):
        start = [bos_id] + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        tokens = torch.tensor([start] * len(conditions), dtype=torch.long)
        for _ in range(n_tokens):
            residual = continuation.residual(tokens)
            positions = torch.ones_like(tokens, dtype=torch.bool)
            positions[:, 0] = False
            rows_residual = []
            for i, (_, clamp, spliced) in enumerate(conditions):
                r = residual[i : i + 1]
                if spliced:
                    r = spliced_residual(r, clamped_reconstruction(pipeline, clamp), pipeline.normaliser,
                                         positions[i : i + 1])
                rows_residual.append(r)
            logits = continuation.logits(torch.cat(rows_residual))[:, -1]
            tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)
        for i, (label, clamp, _) in enumerate(conditions):
            rows.append({"prompt_id": prompt_id, "prompt": prompt, "condition": label,
                         "value": np.nan if clamp is None else clamp.value,
                         "continuation": tokenizer.decode(tokens[i, len(start):].tolist())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Stage entry point


def load_pipeline(weights_path: str | Path, secondary_dir: str | Path, activations_dir: str | Path,
                  ) -> tuple[Pipeline, dict[str, Any], ActivationStore]:
    from featint.evaluation import check_model_matches_store

    model, extra = load_model(weights_path)
    _require_interaction(model, weights_path)
    store = ActivationStore(Path(activations_dir) / "test")
    check_model_matches_store(model, extra, store, weights_path)
    secondary, _ = load_model(Path(secondary_dir) / "weights.safetensors")
    secondary_normaliser = Normaliser.load(Path(secondary_dir) / "normaliser.safetensors")
    if secondary.sae.d_model != model.nfm.V.shape[1]:  # type: ignore[union-attr]
        raise InterventionError(f"{secondary_dir} holds a secondary SAE of width {secondary.sae.d_model}, but "
                                f"{weights_path} has an interaction embedding of {model.nfm.V.shape[1]}; "  # type: ignore[union-attr]
                                "retrain the secondary SAE for this model.")
    normaliser = Normaliser.load(Path(activations_dir) / "normaliser.safetensors")
    return Pipeline(model, normaliser, secondary, secondary_normaliser), extra, store


def run_interventions(settings: Settings, lm_dir: str | Path, weights_path: str | Path, secondary_dir: str | Path,
                      activations_dir: str | Path, out_dir: str | Path, run: str,
                      device: torch.device | str = "cpu") -> dict[str, pd.DataFrame]:
    """Stage entry point: stimuli checks, sentence features, selection and ANOVAs, clamping read-out and its
    statistics, greedy generations; every table to ``out_dir``."""
    config = settings.interventions
    out_dir = Path(out_dir)
    stimuli: Stimuli = load_stimuli(config.stimuli, config.min_sentences_per_cell, config.min_prompts,
                                    config.min_words_per_set)
    pipeline, extra, store = load_pipeline(weights_path, secondary_dir, activations_dir)
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
    selected = [s for s in specs if s.role == "selected_secondary" and s.mode == "multiply"][:len(config.multipliers)]
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
        write_parquet(table, out_dir / f"{name}.parquet", metadata={"interventions": settings.raw["interventions"]})
    return tables


# ---------------------------------------------------------------------------------------------------------
# Gathering



def gather(model_dirs: list[str | Path], out_dir: str | Path, figures_dir: str | Path, alpha: float) -> pd.DataFrame:
    """Stage entry point: one table per kind over models and seeds; BH-FDR of the clamping interaction tests
    across all features x clamp values of a model and seed (per reference); the summary and figures."""
    from featint import plots

    out_dir = Path(out_dir)
    tables = {name: pd.concat([pd.read_parquet(Path(d) / f"{name}.parquet") for d in model_dirs], ignore_index=True)
              for name in TABLES}
    clamp = tables["clamp_statistics"]
    clamp["q"] = np.nan
    interaction = (clamp["effect"] == "word_formality:word_emotion") & clamp["p"].notna()
    for idx in clamp[interaction].groupby(["model", "seed", "reference", "test"]).groups.values():
        clamp.loc[idx, "q"] = stats.benjamini_hochberg(clamp.loc[idx, "p"].to_numpy())
    clamp["significant_fdr"] = clamp["q"] < alpha
    for name, table in tables.items():
        write_parquet(table, out_dir / f"{name}.parquet")
    summary = intervention_summary(tables, alpha)
    write_parquet(summary, out_dir / "summary.parquet")
    figures_dir = Path(figures_dir)
    plots.clamp_interaction_lines(tables["clamp_logits"], figures_dir / "clamp_interaction_lines.png")
    plots.clamp_heatmaps(tables["clamp_logits"], figures_dir / "clamp_heatmaps.png")
    plots.secondary_activation_by_cell(tables["sentence_activations"], tables["secondary_tests"],
                                       figures_dir / "secondary_activation_by_cell.png")
    return summary


def intervention_summary(tables: dict[str, pd.DataFrame], alpha: float) -> pd.DataFrame:
    """Per model and seed: how many primary features pass FDR per factor, the selected secondary feature's
    select-split F and test-split F / p / q per effect, and the smallest clamping interaction p (vs pipeline
    and vs clean) of each clamp role and test. Tidy: ``quantity`` names what is measured; ``effect``, ``role``,
    ``reference`` and ``test`` say of what (empty where they do not apply)."""
    rows = []
    for (model, seed), primary in tables["primary_tests"].groupby(["model", "seed"]):
        base = {"model": model, "seed": seed}
        for factor, group in primary.groupby("factor"):
            rows.append({**base, "quantity": f"primary_{factor}_features_passing_fdr", "value": float((group["q"] < alpha).sum())})
            top = group[group["rank"] == 1].iloc[0]
            rows.append({**base, "quantity": f"primary_{factor}_top_t", "value": float(top["t"]),
                         "feature": int(top["feature"])})
        secondary = tables["secondary_tests"]
        secondary = secondary[(secondary["model"] == model) & (secondary["seed"] == seed)]
        ranking = secondary[secondary["test"] == "one_way_anova_cells"].sort_values("rank")
        top = ranking.iloc[0]
        rows.append({**base, "quantity": "secondary_top_select_F", "value": float(top["F"]), "feature": int(top["feature"]),
                     "p": float(top["p"])})
        two_way = secondary[(secondary["test"] == "two_way_anova_type2") & (secondary["feature"] == top["feature"])]
        for record in two_way.to_dict("records"):
            rows.append({**base, "quantity": "secondary_top_test_F", "effect": record["effect"],
                         "value": float(record["F"]), "feature": int(top["feature"]), "p": float(record["p"]),
                         "q": float(record["q"])})
        # the feature that is clamped (best-ranked among those firing often enough; may differ from rank 1)
        clamped = tables["clamp_statistics"]
        clamped = clamped[(clamped["model"] == model) & (clamped["seed"] == seed)
                          & (clamped["role"] == "selected_secondary")]
        if len(clamped):
            feature = int(clamped["feature"].iloc[0])
            own = ranking[ranking["feature"] == feature].iloc[0]
            rows.append({**base, "quantity": "secondary_clamped_select_F", "value": float(own["F"]),
                         "feature": feature, "p": float(own["p"]), "rank": int(own["rank"]),
                         "fires_fraction": float(own["fires_fraction"])})
            tested = secondary[(secondary["test"] == "two_way_anova_type2") & (secondary["feature"] == feature)]
            for record in tested.to_dict("records"):
                rows.append({**base, "quantity": "secondary_clamped_test_F", "effect": record["effect"],
                             "value": float(record["F"]), "feature": feature, "p": float(record["p"]),
                             "q": float(record["q"])})
        rows.append({**base, "quantity": "secondary_tested_interaction_passing_fdr",
                     "value": float(((secondary["effect"] == "formality:emotion") & (secondary["q"] < alpha)).sum())})
        clamp = tables["clamp_statistics"]
        clamp = clamp[(clamp["model"] == model) & (clamp["seed"] == seed) & (clamp["effect"] == "word_formality:word_emotion")]
        for (role, reference, test), group in clamp.groupby(["role", "reference", "test"]):
            best = group.sort_values("p").iloc[0]
            rows.append({**base, "quantity": "clamp_min_p", "role": role, "reference": reference, "test": test,
                         "effect": "word_formality:word_emotion", "value": float(best["F"]),
                         "feature": int(best["feature"]), "p": float(best["p"]), "q": float(best["q"]),
                         "clamp_value": float(best["value"])})
    return pd.DataFrame(rows)
