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

from featint.interventions.base import TABLES, InterventionError, InterventionOutputs
from featint.interventions.clamping import (
    Clamp,
    clamp_read_out,
    clamp_specs,
    clamp_statistics,
    clamped_reconstruction,
    greedy_generations,
    prompt_logits,
)
from featint.interventions.readout import (
    Pipeline,
    SentenceFeatures,
    TokenBatch,
    clamp_candidates,
    pool_per_sequence,
    primary_tests,
    secondary_tests,
    sentence_features,
    tokenize_batch,
)
from featint.interventions.secondary import interaction_embeddings, run_secondary
from featint.interventions.stage import load_pipeline, run_interventions
from featint.interventions.summary import (
    GatheredInterventionOutputs,
    gather,
    intervention_summary,
)

__all__ = [
    "TABLES", "Clamp", "GatheredInterventionOutputs", "InterventionError", "InterventionOutputs", "Pipeline",
    "SentenceFeatures", "TokenBatch", "clamp_candidates", "clamp_read_out", "clamp_specs", "clamp_statistics",
    "clamped_reconstruction", "gather", "greedy_generations", "interaction_embeddings", "intervention_summary",
    "load_pipeline", "pool_per_sequence", "primary_tests", "prompt_logits", "run_interventions", "run_secondary",
    "secondary_tests", "sentence_features", "tokenize_batch",
]
