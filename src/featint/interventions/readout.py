"""Stimulus read-out through the LM and the SAE, and the selection and held-out tests on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from featint import stats
from featint.interventions.base import InterventionError
from featint.models import FeatureModel, SparseCode
from featint.normaliser import Normaliser
from featint.splice import ModelContinuation

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
        use[torch.arange(real.shape[0], device=real.device), first] = False
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

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.tokens.to(device), self.real.to(device))


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

    def to(self, device: torch.device | str) -> Pipeline:
        """Both models on ``device`` (the normalisers move with the tensors they are applied to)."""
        return Pipeline(self.model.to(device), self.normaliser, self.secondary.to(device), self.secondary_normaliser)

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
        batch = tokenize_batch(tokenizer, texts[start : start + batch_size], bos_id).to(continuation.device)
        residual = continuation.residual(batch.tokens)
        keep = residual.norm(dim=-1) <= outlier_threshold
        outliers += int((batch.real & ~keep)[:, 1:].sum())
        code, secondary_code = pipeline.codes(residual.reshape(-1, residual.shape[-1]))
        B, T = batch.tokens.shape
        dense = code.dense(F).reshape(B, T, F)
        dense_secondary = secondary_code.dense(F2).reshape(B, T, F2)
        pooled, counts = pool_per_sequence(dense, batch.real, keep)
        pooled_secondary, _ = pool_per_sequence(dense_secondary, batch.real, keep)
        primary.append(pooled.cpu().numpy())
        secondary.append(pooled_secondary.cpu().numpy())
        used.append(counts.cpu().numpy())
        mask = batch.real.clone()
        mask[:, 0] = False
        token_values.append(dense_secondary[mask & keep].cpu().numpy())
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
