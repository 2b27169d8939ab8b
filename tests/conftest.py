"""Shared fixtures. Tests marked ``slow`` use the real embedded model (prepared once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from featint.config import Settings
from featint.lm import EMBEDDED_KEY, PREPARED_MARKER, load_bridge, prepare_model

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def embedded_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dequantized embedded model: reuse the workflow's prepared copy when present, else prepare one."""
    prepared = REPO / "resources" / "lm" / EMBEDDED_KEY
    if (prepared / PREPARED_MARKER).is_file():
        return prepared
    out = tmp_path_factory.mktemp("lm") / EMBEDDED_KEY
    prepare_model(Settings.from_dict({}).model, out)
    return out


@pytest.fixture(scope="session")
def bridge(embedded_lm_dir: Path):  # type: ignore[no-untyped-def]
    return load_bridge(embedded_lm_dir)


SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Photosynthesis converts light energy into chemical energy stored in glucose. " * 10,
    "In 1905 Albert Einstein published four papers that changed physics forever. " * 10,
    "Rivers carry sediment from mountains to the sea, shaping valleys and deltas. " * 10,
]


@pytest.fixture()
def documents_path(tmp_path: Path) -> Path:
    """A small documents.parquet: two train documents, one validation, one test."""
    frame = pd.DataFrame(
        {
            "doc_id": pd.array([0, 1, 2, 3], dtype="int32"),
            "title": ["fox", "photosynthesis", "einstein", "rivers"],
            "text": SAMPLE_TEXTS,
            "n_chars": [len(t) for t in SAMPLE_TEXTS],
            "split": ["train", "train", "validation", "test"],
        }
    )
    path = tmp_path / "documents.parquet"
    frame.to_parquet(path)
    return path


def tiny_extraction_settings(**overrides: object) -> Settings:
    extraction = {"context_length": 16, "batch_size": 4, "shard_rows": 50,
                  "max_tokens": {"train": None, "validation": None, "test": None}}
    extraction.update(overrides)
    return Settings.from_dict({"hook": {"layer": 3}, "extraction": extraction})
