"""Ablation sweeps: one model per row of ``config/ablations.tsv`` (a Snakemake ``Paramspace``), trained on the
run's activations with the row's overrides by the one training loop, evaluated on the test split like every
other model, and gathered into one tidy table and figure.

Columns (all required): ``kind`` (a model kind), ``seed``, ``k`` (sae.k), ``width`` (sae.n_features),
``embed`` (nfm.embed_dim), ``decoder`` (sae.decoder_norm: free / unit), ``auxk`` (True / False),
``truncated_k`` (nfm.truncated_k, the SAE's k in ``sequential_truncated``). Kinds built on a standard SAE
(sequential, sequential_truncated, standard_refit) first train that standard SAE with the row's settings, in the
instance's own folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from featint import stats
from featint.config import Settings
from featint.errors import ConfigError
from featint.kinds import BASELINE, FROM_STANDARD, MODEL_KINDS, lr_selection_kind
from featint.layout import KindsFolder
from featint.tables import ABLATION_SUMMARY, RECONSTRUCTION, write_table

#: Column -> (type, config path) of the ablation table.
COLUMNS: dict[str, tuple[type, tuple[str, ...] | None]] = {
    "kind": (str, None), "seed": (int, None), "k": (int, ("sae", "k")), "width": (int, ("sae", "n_features")),
    "embed": (int, ("nfm", "embed_dim")), "decoder": (str, ("sae", "decoder_norm")),
    "auxk": (bool, ("sae", "auxk", "enabled")), "truncated_k": (int, ("nfm", "truncated_k")),
}


def read_table(path: str | Path) -> pd.DataFrame:
    """The ablation table, checked: known columns, known kinds, no duplicate rows."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation table {path} does not exist; set ablations.table (see config/ablations.tsv).")
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str)
    if list(table.columns) != list(COLUMNS):
        raise ConfigError(f"{path}: columns must be {list(COLUMNS)} in this order (got {list(table.columns)}).")
    bad = sorted(set(table["kind"]) - set(MODEL_KINDS))
    if bad:
        raise ConfigError(f"{path}: unknown kind(s) {bad}; expected one of {list(MODEL_KINDS)}.")
    if table.duplicated().any():
        raise ConfigError(f"{path}: duplicated row(s) {table[table.duplicated()].index.tolist()}.")
    return table


def parse_instance(instance: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column, (kind, _) in COLUMNS.items():
        value = instance[column]
        out[column] = (str(value).strip().lower() == "true") if kind is bool else kind(value)
    return out


def settings_for(settings: Settings, instance: dict[str, Any]) -> Settings:
    """The run's settings with the instance's overrides, validated again (e.g. k <= width)."""
    changes = {where: instance[column] for column, (_, where) in COLUMNS.items() if where is not None}
    return settings.with_overrides(changes, source=f"ablation {instance}")


def run_ablation(settings: Settings, instance_json: str, activations_dir: str | Path,
                 lr_tables: list[str | Path], models_dir: str | Path, out_table: str | Path, run: str) -> pd.DataFrame:
    """Stage entry point: train one ablation instance into ``models_dir`` (one model folder per kind, the
    standard SAE first where the kind is built on it) and write its reconstruction table to ``out_table``.
    ``lr_tables`` are LR-selection tables (each names its kind); an instance uses its kind's choice, made
    with the run's default sizes."""
    from featint.evaluation import reconstruction_table
    from featint.runtime import resolve_device
    from featint.training import chosen_lr, lr_tables_by_kind, train_kinds

    tables = lr_tables_by_kind(lr_tables)
    instance = parse_instance(json.loads(instance_json))
    local = settings_for(settings, instance)
    models = KindsFolder(str(models_dir))
    kind = instance["kind"]
    names = [BASELINE, kind] if kind in FROM_STANDARD else [kind]
    for _ in train_kinds(local, names, instance["seed"], activations_dir, str(models),
                         lambda name: chosen_lr(local, name, tables.get(lr_selection_kind(name))),
                         resolve_device(local.model.device), cache_codes=local.training.cache_codes):
        pass
    frame, _ = reconstruction_table(models.model(kind).weights, activations_dir, run=run)
    for column, value in reversed(list(instance.items())):
        frame.insert(0, f"ablation_{column}", value)
    write_table(frame, out_table, RECONSTRUCTION, metadata={"instance": instance},
                extra=[f"ablation_{column}" for column in instance])
    return frame


def gather(tables: list[str | Path], out_summary: str | Path, figure_path: str | Path) -> pd.DataFrame:
    """Stage entry point: one row per instance with its final test FVU (selected tokens), the improvement over
    the sweep's standard SAE with the same k, width, decoder and seed, and the figure."""
    from featint import plots
    from featint.evaluation import final_reconstruction, improvement_rows

    metrics = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    keys = [f"ablation_{c}" for c in COLUMNS]
    selected = metrics[metrics["token_set"] == "selected"]
    fvu = final_reconstruction(selected, tuple(keys) + ("metric",))
    fvu = fvu[fvu["metric"] == "fvu"].drop(columns="metric").rename(columns={"value": "fvu"})
    own = improvement_rows(selected, "own_sae")[keys + ["value"]]
    summary = fvu.merge(own.rename(columns={"value": "improvement_own_sae"}), on=keys, how="left")
    baseline = summary[summary["ablation_kind"] == BASELINE].rename(columns={"fvu": "standard_fvu"})
    match = ["ablation_seed", "ablation_k", "ablation_width", "ablation_decoder"]
    summary = summary.merge(baseline[match + ["standard_fvu"]].drop_duplicates(match), on=match, how="left")
    summary.insert(0, "run", metrics["run"].iloc[0])
    summary["improvement_vs_standard_fvu"] = stats.improvement(summary["fvu"], summary["standard_fvu"])
    write_table(summary, out_summary, ABLATION_SUMMARY, extra=keys)
    plots.ablation_summary(summary, figure_path)
    return summary
