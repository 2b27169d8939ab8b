"""The SLURM profile on a real (single-node, localhost) SLURM: every job goes through sbatch, and each model's
results equal the local tiny run's (the session's ``tiny_run``, jobs on one thread each as here). Marked
``cluster``; `.ci/run` runs it (it needs root for apt-get the first time, then a few minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_THREADS, TinyRun, workflow_copy
from slurm_cluster import ClusterUnavailable, local_slurm

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Every rule of the DAG but the convergence check (tested locally by test_workflow), with two of tiny.yaml's
# models, so the cluster run stays short.
CLUSTER_CONFIG = """
models: [standard, joint]
single_seed_models: []
convergence: {models: []}
interventions: {models: [joint]}
"""
# Each model's own results (the gathered tables differ: the local run has more models): the same kind, seed,
# LR grid and activations give the same model, reconstruction, splice, geometry and interventions.
COMPARED = [f"models/{kind}/seed~0/{table}.parquet" for kind in ("standard", "joint")
            for table in ("reconstruction", "reconstruction_documents", "train_log")] + [
    "lr_selection/joint.parquet", "behaviour/joint/seed~0/tokens.parquet", "behaviour/reference/tokens.parquet",
    "geometry/joint/seed~0/summary.parquet", "interventions/joint/seed~0/clamp_statistics.parquet",
    "interventions/joint/seed~0/secondary_tests.parquet"]


#: Jobs Snakemake keeps submitted at once: more than the node's two cores, so SLURM starts a queued job as soon as
#: one ends. The plugin checks the jobs' states at growing intervals (2 s after a check that saw a job end, then
#: 10 s more after each that saw none), so with two jobs in flight a finished job's core idled until the next
#: check (at --jobs 2 the run took ~11 min here, at 8 ~7 min).
QUEUED_JOBS = 8


def _snakemake(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/tiny.yaml",
                           "config/cluster_test.yaml", *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=1500, check=False)


def _copy(root: Path, lm_dir: Path) -> Path:
    """The workflow, with the already prepared embedded model linked in (prepare_lm is tested elsewhere)."""
    root.mkdir(parents=True)
    workdir = workflow_copy(root)
    (workdir / "config" / "cluster_test.yaml").write_text(CLUSTER_CONFIG)
    (workdir / "resources" / "lm").mkdir(parents=True)
    (workdir / "resources" / "lm" / lm_dir.name).symlink_to(lm_dir, target_is_directory=True)
    return workdir


def test_tiny_dag_through_the_slurm_profile_equals_a_local_run(tmp_path: Path, embedded_lm_dir: Path,
                                                               tiny_run: TinyRun) -> None:
    cluster_dir = _copy(tmp_path / "cluster", embedded_lm_dir)
    try:
        with local_slurm(tmp_path / "slurm") as cluster:
            dry = _snakemake(cluster_dir, cluster.env, "-n", "--quiet", "rules")
            submitted = _snakemake(
                cluster_dir, cluster.env, "--profile", "profiles/slurm", "--jobs", str(QUEUED_JOBS), *TINY_THREADS,
                "--default-resources", f"slurm_partition={cluster.partition}", "mem_mb=2000", "runtime=30",
                "--set-resources",
                *[f"{rule}:{key}" for rule in GPU_RULES for key in ("gpu=0", "mem_mb=3000", "runtime=30")],
                "--slurm-init-seconds-before-status-checks", "2")
            jobs = cluster.accounting()
    except ClusterUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no local SLURM: {exc}")
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, re.MULTILINE))  # the job-stats table (printed twice)
    expected = sum(int(n) for rule, n in counts.items() if rule not in ("all", "default", "total"))
    assert expected > 20
    assert len(jobs) == expected, jobs  # every job of the DAG went through sbatch (the target rule runs locally)
    assert all(line.endswith("|COMPLETED") for line in jobs), jobs
    for relative in COMPARED:
        ours = pd.read_parquet(cluster_dir / "results" / "tiny" / relative)
        reference = pd.read_parquet(tiny_run.results / relative)
        pd.testing.assert_frame_equal(ours, reference, check_exact=False, rtol=1e-9, atol=1e-12)


GPU_RULES = ("extract", "select_lr", "cache_codes", "train", "evaluate_reconstruction", "geometry",
             "behaviour_reference", "behaviour", "secondary_sae", "interventions", "ablation", "synthetic_models")
