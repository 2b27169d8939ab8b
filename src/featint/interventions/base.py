"""What every part of the intervention stage shares: the tables a job writes and the stage's error."""

from __future__ import annotations

from featint.errors import FeatintError

#: Tables each intervention job writes (``<name>.parquet``) and the gather concatenates over models and seeds.
TABLES: tuple[str, ...] = ("lengths", "word_tokens", "primary_tests", "secondary_tests", "sentence_activations",
                           "clamp_logits", "clamp_statistics", "generations")


class InterventionError(FeatintError):
    """A model without an interaction pathway, a broken no-op clamp, or unusable stimuli."""

