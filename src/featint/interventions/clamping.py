"""Clamping a secondary feature inside the splice, read out through word-set logits; greedy generations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from featint import stats
from featint.config import Settings
from featint.interventions.base import InterventionError
from featint.interventions.readout import Pipeline, SentenceFeatures, TokenBatch, clamp_candidates
from featint.models import SparseCode
from featint.splice import ModelContinuation, spliced_residual
from featint.tables import DELTA_VS_CLEAN, DELTA_VS_PIPELINE, SELECTED_SECONDARY, WORD_INTERACTION

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
            row = pipeline.secondary.sae.W_dec[clamp.feature]
            row = row / pipeline.secondary_normaliser.scale.to(row)
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
    batch = batch.to(continuation.device)
    residual = continuation.residual(batch.tokens)
    if pipeline is not None:
        positions = batch.real.clone()
        positions[:, 0] = False
        residual = spliced_residual(residual, clamped_reconstruction(pipeline, clamp), pipeline.normaliser,
                                    positions)
    logits = continuation.logits(residual)
    last = logits[torch.arange(logits.shape[0], device=logits.device), batch.last]
    if not torch.isfinite(last).all():
        raise InterventionError(f"non-finite logits under clamp {clamp}; check the model and secondary SAE.")
    return last[:, token_ids.to(last.device)]


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
    chosen = [(SELECTED_SECONDARY, "secondary", int(f)) for f in firing["feature"][: config.clamp_features]]
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
                                  mode=spec.mode, value=spec.value, logit=_host(logits),
                                  delta_vs_pipeline=_host(logits - unclamped), delta_vs_clean=_host(logits - clean)))
    frames.append(base.assign(role="unclamped_pipeline", space="none", feature=np.int32(-1), mode="none",
                              value=np.nan, logit=_host(unclamped), delta_vs_pipeline=0.0,
                              delta_vs_clean=_host(unclamped - clean)))
    return pd.concat(frames, ignore_index=True)


def _host(logits: torch.Tensor) -> np.ndarray:
    """[P, W] logits (on any device) as the flat float64 column of the read-out table."""
    return logits.reshape(-1).double().cpu().numpy()


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
        for reference in (DELTA_VS_PIPELINE, DELTA_VS_CLEAN):
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
            rows.append({**key, "test": "paper_difference_score_F", "effect": WORD_INTERACTION,
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
        tokens = torch.tensor([start] * len(conditions), dtype=torch.long, device=continuation.device)
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
