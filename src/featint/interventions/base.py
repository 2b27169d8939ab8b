"""What every part of the intervention stage shares: the tables a job writes and the stage's error."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from featint.errors import FeatintError
from featint.tables import INTERVENTION_TABLES

#: Tables each intervention job writes (``<name>.parquet``) and the gather concatenates over models and seeds:
#: those :data:`featint.tables.INTERVENTION_TABLES` declares, in its order.
TABLES: tuple[str, ...] = tuple(INTERVENTION_TABLES)


class InterventionOutputs(NamedTuple):
    """The files one intervention job writes, one per table of :data:`TABLES`."""

    lengths: str | Path  #: stimulus lengths in tokens per cell and split
    word_tokens: str | Path  #: each word of the word sets as the tokenizer splits it
    primary_tests: str | Path  #: Welch t per primary feature and factor on the select sentences
    secondary_tests: str | Path  #: the secondary features' one-way ranking and two-way ANOVAs
    sentence_activations: str | Path  #: pooled activations of the tested features per sentence
    clamp_logits: str | Path  #: word-set logits at each prompt under each clamp
    clamp_statistics: str | Path  #: the clamping tests per clamp, value, reference and effect
    generations: str | Path  #: greedy continuations, clean, unclamped and clamped


class InterventionError(FeatintError):
    """A model without an interaction pathway, a broken no-op clamp, or unusable stimuli."""

