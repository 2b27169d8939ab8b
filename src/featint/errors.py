"""Errors that stop a stage with one clear message (what is wrong, which file or key, how to fix it)."""


class FeatintError(Exception):
    """Base class: the CLI prints the message alone (no traceback) and exits with status 2."""


class ConfigError(FeatintError):
    """Unknown key, wrong type or inconsistent settings."""


class ModelSourceError(FeatintError):
    """The language model cannot be found or does not fit the configuration."""


class CorpusError(FeatintError):
    """The corpus source is missing, empty or unreadable."""


class SplitError(FeatintError):
    """A split holds no documents or no tokens."""


class ShardError(FeatintError):
    """An activation shard is missing, truncated, or fails its checksum."""
