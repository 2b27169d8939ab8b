"""featint.layout is the one place that names a run's files: known paths, and no file name spelled elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

from featint.layout import (
    BEHAVIOUR_FIGURES,
    GEOMETRY_FIGURES,
    ActivationsFolder,
    BehaviourFigures,
    ModelFolder,
    RunLayout,
)

REPO = Path(__file__).resolve().parents[1]

#: a quoted string that is a bare file name or path of a run artefact's type
ARTEFACT_LITERAL = re.compile(r"""["'][\w./{}~+-]*\.(parquet|png|safetensors|pt|json|md)["']""")
#: repository inputs, not run artefacts (the config docs the CLI regenerates)
ALLOWED = {'"config/README.md"'}


def test_no_artefact_file_name_is_spelled_outside_the_layout_module() -> None:
    sources = [*(REPO / "src" / "featint").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"),
               REPO / "workflow" / "Snakefile", REPO / "Snakefile"]
    hits = []
    for path in sources:
        if path.name == "layout.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in ARTEFACT_LITERAL.finditer(line):
                if match.group(0) not in ALLOWED:
                    hits.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)}")
    assert not hits, "file names belong in featint/layout.py:\n" + "\n".join(hits)


def test_run_paths_are_known_and_keep_snakemake_wildcards() -> None:
    run = RunLayout("results/tiny")
    assert run.model("joint", 0).weights == "results/tiny/models/joint/seed~0/weights.safetensors"
    assert run.model("joint", 1, "budget_x2").train_log == "results/tiny/budget_x2/joint/seed~1/train_log.parquet"
    wildcards = run.model("{kind}", "{seed}", "{group}")
    assert wildcards.loss_figure == "results/tiny/{group}/{kind}/seed~{seed}/figures/loss.png"
    assert run.model("standard", 0).saelens.config == "results/tiny/models/standard/seed~0/saelens/cfg.json"
    assert str(run.codes(0)) == "results/tiny/codes/standard/seed~0"
    assert run.lr_selection().kind("joint") == "results/tiny/lr_selection/joint.parquet"
    assert run.lr_selection("budget_x4").kind("joint") == "results/tiny/budget_x4/lr_selection/joint.parquet"
    assert run.metrics.summary == "results/tiny/metrics/reconstruction_summary.parquet"
    assert run.interventions.clamp_statistics == "results/tiny/interventions/clamp_statistics.parquet"
    assert run.interventions_of("sequential", 0).secondary.normaliser == (
        "results/tiny/interventions/sequential/seed~0/secondary/normaliser.safetensors")
    assert run.layers.layer(3, 0).documents == "results/tiny/layers/layer~3/seed~0/documents.parquet"
    assert run.synthetic_models("base", "0.5", 1).model("joint").weights == (
        "results/tiny/synthetic/models/base~c0.5/seed~1/joint/weights.safetensors")
    assert run.report.kinds_figure == "results/tiny/report/figures/kinds_by_parameters.png"
    assert run.budget_report.claims_markdown == "results/tiny/budget/report/claims.md"
    assert ActivationsFolder(Path("a/b")).split("test") == "a/b/test"  # a Path root is kept as its string
    assert ModelFolder("m").checkpoint == "m/checkpoint.pt"


def test_a_figure_set_names_every_figure_of_its_stage() -> None:
    figures = BehaviourFigures(*(RunLayout("results/x").behaviour.figure(name) for name in BEHAVIOUR_FIGURES))
    assert figures.pathology_ratios == "results/x/behaviour/figures/pathology_ratios.png"
    assert len(set(figures)) == len(BehaviourFigures._fields) == 3
    assert "pca_elbows" in GEOMETRY_FIGURES
