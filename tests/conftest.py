"""Shared fixtures and helpers. Tests marked ``slow`` use the real embedded model (prepared once per session) and
the tiny config's DAG (run once per session by ``tiny_run``, read by the workflow and cluster tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from featint.activations import ActivationStore
from featint.config import Settings, load_settings
from featint.lm import EMBEDDED_KEY, PREPARED_MARKER, load_bridge, prepare_model

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


# ---------------------------------------------------------------------------------------------------------
# the workflow

REPO = Path(__file__).resolve().parents[1]


def workflow_copy(dest: Path) -> Path:
    """The workflow (Snakefile, rules, configs, profiles, envs) copied into ``dest``, to run there."""
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy(source, dest / name)
    return dest


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Snakemake in ``workdir`` on 2 cores with this interpreter's environment (targets before --configfile)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1800, check=False)


#: How the tiny run's jobs take threads: one each, two side by side (as the SLURM test's jobs do, so its results
#: compare bit for bit; and on two cores, faster than one two-thread job at a time).
TINY_THREADS = ("--max-threads", "1")


@dataclass(frozen=True)
class TinyRun:
    """The tiny config's DAG, planned and run once per session."""

    workdir: Path  #: the temporary copy of the workflow it ran in
    results: Path  #: workdir / results / tiny
    planned: str  #: the dry run's output (stdout + stderr)
    kinds: frozenset[str]  #: every kind the config trains
    metrics: pd.DataFrame  #: metrics/reconstruction.parquet
    test_documents: int  #: documents in the test split


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    workdir = workflow_copy(tmp_path_factory.mktemp("tiny"))
    dry = snakemake(workdir, "--configfile", "config/tiny.yaml", "-n")
    assert dry.returncode == 0, dry.stderr
    run = snakemake(workdir, *TINY_THREADS, "--configfile", "config/tiny.yaml")
    assert run.returncode == 0, run.stderr[-4000:]
    results = workdir / "results" / "tiny"
    return TinyRun(
        workdir=workdir, results=results, planned=dry.stdout + dry.stderr,
        kinds=frozenset(kind for kind, _ in load_settings(workdir / "config" / "tiny.yaml").model_instances()),
        metrics=pd.read_parquet(results / "metrics" / "reconstruction.parquet"),
        test_documents=ActivationStore(results / "activations" / "test").tokens()["doc_id"].nunique())
