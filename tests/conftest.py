"""Shared fixtures and helpers. Tests marked ``slow`` use the real embedded model (prepared once per session) and
the tiny config's DAG (run once per session by ``tiny_run``, read by the workflow and cluster tests)."""

from __future__ import annotations

import os
import re
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


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Snakemake in ``workdir`` on 2 cores with this interpreter's environment (targets before --configfile),
    plus ``env``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1800, check=False)


#: How the tiny run's jobs take threads: one each, two side by side (as the SLURM test's jobs do, so its results
#: compare bit for bit; and on two cores, faster than one two-thread job at a time).
TINY_THREADS = ("--max-threads", "1")

#: The environment that puts every process of a DAG on the simulated GPU (``tests/simulated_cuda.py``): each job
#: starts inside it, so ``model.device: auto`` resolves to ``cuda`` as on a GPU machine.
SIMULATED_GPU = {"FEATINT_SIMULATED_CUDA": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).resolve().parent / "simulated_cuda_site"), *filter(None, [os.environ.get("PYTHONPATH")])])}


@dataclass(frozen=True)
class TinyRun:
    """The tiny config's DAG, planned and run once per session."""

    workdir: Path  #: the temporary copy of the workflow it ran in
    results: Path  #: workdir / results / tiny
    planned: str  #: the dry run's output (stdout + stderr)
    kinds: frozenset[str]  #: every kind the config trains
    metrics: pd.DataFrame  #: metrics/reconstruction.parquet
    test_documents: int  #: documents in the test split


def failed_jobs(workdir: Path, stderr: str) -> str:
    """Each failed job of a Snakemake run in ``workdir``: its log and the log's last lines (where it stopped)."""
    logs = sorted(set(re.findall(r"Error in rule \w+:\n(?:.*\n)*?\s+log: (\S+\.log)", stderr)))
    parts = []
    for log in logs:
        lines = (workdir / log).read_text(errors="replace").splitlines() if (workdir / log).is_file() else []
        where = [line.strip() for line in lines if line.strip().startswith('File "') and "featint" in line]
        parts.append(f"{log}: {where[-1] if where else ''} :: {lines[-1] if lines else '(no log)'}")
    return "\n".join(parts) or stderr[-4000:]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The tiny DAG, every job on the simulated GPU (:data:`SIMULATED_GPU`; two at once, as on a two-GPU node):
    a stage that leaves a tensor on the CPU, or hands a device tensor to NumPy, stops its job here. The SLURM test
    reruns it on the CPU and compares every model's results with these."""
    workdir = workflow_copy(tmp_path_factory.mktemp("tiny"))
    dry = snakemake(workdir, "--configfile", "config/tiny.yaml", "-n", env=SIMULATED_GPU)
    assert dry.returncode == 0, dry.stderr
    run = snakemake(workdir, *TINY_THREADS, "--keep-going", "--resources", "gpu=2", "--configfile",
                    "config/tiny.yaml", env=SIMULATED_GPU)
    assert run.returncode == 0, "jobs failed on the simulated GPU:\n" + failed_jobs(workdir, run.stderr)
    results = workdir / "results" / "tiny"
    return TinyRun(
        workdir=workdir, results=results, planned=dry.stdout + dry.stderr,
        kinds=frozenset(kind for kind, _ in load_settings(workdir / "config" / "tiny.yaml").model_instances()),
        metrics=pd.read_parquet(results / "metrics" / "reconstruction.parquet"),
        test_documents=ActivationStore(results / "activations" / "test").tokens()["doc_id"].nunique())
