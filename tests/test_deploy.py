"""Deployment as the Snakemake workflow catalog documents it: `snakedeploy deploy-workflow` writes a project with
the workflow as a module and copies of `config/` and `profiles/`; the deployed project plans the same DAG and
runs a rule."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake

# What a catalog user gets from the repository: the workflow, its configs and profiles, the catalog's usage file
# and the licence (snakedeploy copies the whole source tree, so the test's source holds only these).
SOURCE_FILES = ("Snakefile", "workflow", "config", "profiles", "envs", ".snakemake-workflow-catalog.yml", "LICENSE")


def _source(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in SOURCE_FILES:
        path = REPO / name
        (shutil.copytree if path.is_dir() else shutil.copy)(path, dest / name)
    return dest


def _snakedeploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "snakedeploy"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_catalog_usage_file_names_the_configs_it_describes() -> None:
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) >= {"mandatory-flags", "software-stack-deployment", "report"}
    for config in re.findall(r"config/\w+\.yaml", usage["mandatory-flags"]["desc"]):
        assert (REPO / config).is_file(), config
    assert (REPO / "workflow" / "Snakefile").is_file() and (REPO / "LICENSE").is_file()


@pytest.mark.slow
def test_snakedeploy_from_a_local_path_gives_a_project_that_runs(tmp_path: Path) -> None:
    source = _source(tmp_path / "featint")
    project = tmp_path / "project"
    deployed = _snakedeploy("deploy-workflow", str(source), str(project), "--branch", "main")
    assert deployed.returncode == 0, deployed.stderr
    assert (project / "config" / "config.yaml").read_text() == (REPO / "config" / "config.yaml").read_text()
    assert (project / "profiles" / "slurm" / "config.yaml").is_file() and (project / "LICENSE").is_file()
    module = (project / "workflow" / "Snakefile").read_text()
    assert re.search(r"^module featint:", module, re.MULTILINE) and "use rule * from featint" in module
    # snakedeploy 0.17 declares a local source's Snakefile by its path inside the source ("workflow/Snakefile"),
    # which Snakemake resolves beside the deployed Snakefile; a local deployment points it at the source (a GitHub
    # deployment writes github("owner/featint", path="workflow/Snakefile", tag=...) instead, see the README)
    assert '"workflow/Snakefile"' in module
    (project / "workflow" / "Snakefile").write_text(
        module.replace('"workflow/Snakefile"', f'"{source / "workflow" / "Snakefile"}"'))

    deployed_dry = snakemake(project, "--configfile", "config/tiny.yaml", "-n", "--quiet", "rules")
    source_dry = snakemake(source, "--configfile", "config/tiny.yaml", "-n", "--quiet", "rules")
    assert deployed_dry.returncode == 0, deployed_dry.stderr[-3000:]
    targets = ("all", "default", "total")  # the target rules differ: the top-level Snakefile adds `default`
    counts = re.compile(r"^(\w+)\s+(\d+)$", re.MULTILINE)
    ours = {rule: n for rule, n in counts.findall(deployed_dry.stdout) if rule not in targets}
    source_counts = {rule: n for rule, n in counts.findall(source_dry.stdout) if rule not in targets}
    assert int(ours["train"]) > 0
    assert ours == source_counts  # the deployed project plans the repository's DAG

    run = snakemake(project, "results/tiny/corpus/documents.parquet", "--configfile", "config/tiny.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    documents = pd.read_parquet(project / "results" / "tiny" / "corpus" / "documents.parquet")
    assert set(documents["split"]) == {"train", "validation", "test"}
    assert (project / "logs" / "tiny" / "corpus.log").is_file()
    assert not (source / "results").exists() and not (source / "logs").exists()  # it wrote into the project only
