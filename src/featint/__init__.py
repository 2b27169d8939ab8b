"""featint: reproduce, check and extend "Feature Integration Spaces" (Claflin, arXiv 2507.00269)."""

__version__ = "0.1.0"
