"""The layer sweep: does the answer depend on depth? The paper looked at one layer.

For every layer of ``layers.layers`` the workflow extracts activations at ``hook.layer = layer`` (the run's own
layer reuses the run's activations) with the run's corpus, splits and extraction settings; :func:`run_layer`
trains ``layers.kinds`` there (the one training loop, the run's budget, each kind at the LR chosen on the
run's own layer) and evaluates them on the test split; :func:`gather` puts each term against its control
(:data:`featint.kinds.COMPARISONS`; paired document bootstrap, as in the main run) and every kind's test FVU
side by side per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from featint.config import Settings
from featint.layout import KindsFolder
from featint.tables import (
    COMPARISON_TABLE,
    LAYER_FVU,
    PARAMETERS,
    RECONSTRUCTION,
    RECONSTRUCTION_DOCUMENTS,
    write_table,
)


def layer_settings(settings: Settings, layer: int) -> Settings:
    """The run's settings with ``hook.layer`` set to ``layer`` (validated again)."""
    return settings.with_overrides({("hook", "layer"): layer}, source=f"layer sweep, layer {layer}")


class LayerOutputs(NamedTuple):
    """What one layer-and-seed job of the sweep writes (each table with a ``layer`` column)."""

    reconstruction: str | Path  #: every kind's tidy reconstruction metrics on the test split (RECONSTRUCTION)
    documents: str | Path  #: their per-document sums, for the paired document bootstrap (RECONSTRUCTION_DOCUMENTS)
    parameters: str | Path  #: every kind's parameter counts (PARAMETERS)


class GatheredLayerOutputs(NamedTuple):
    """What the sweep's gather writes."""

    comparisons: str | Path  #: every comparison per layer with its paired document-bootstrap interval
    fvu: str | Path  #: every kind's final test FVU per layer and seed (LAYER_FVU)
    figure: str | Path  #: FVU and the comparisons against depth (PNG)


def run_layer(settings: Settings, layer: int, seed: int, activations_dir: str | Path, lr_tables: list[str | Path],
              models_dir: str | Path, out: LayerOutputs, run: str, device: str = "cpu") -> pd.DataFrame:
    """Stage entry point: train every kind of ``layers.kinds`` on one layer's activations for one seed into
    ``models_dir`` (one model folder per kind, ``standard`` first; the kinds built on it from its weights),
    evaluate each on the test split, and write the files of ``out``. ``lr_tables`` are the run's LR-selection
    tables (each names its kind)."""
    from featint.evaluation import reconstruction_table
    from featint.kinds import lr_selection_kind
    from featint.training import chosen_lr, lr_tables_by_kind, train_kinds

    local = layer_settings(settings, layer)
    tables = lr_tables_by_kind(lr_tables)
    models = KindsFolder(str(models_dir))
    frames, documents, parameters = [], [], []
    for kind, _ in train_kinds(local, local.layers.kinds, seed, activations_dir, models_dir,
                               lambda name: chosen_lr(local, name, tables.get(lr_selection_kind(name))), device):
        model = models.model(kind)
        frame, per_document = reconstruction_table(model.weights, activations_dir, run=run)
        frames.append(frame)
        documents.append(per_document)
        parameters.append(pd.read_parquet(model.parameters))
    outputs = {out.reconstruction: (frames, RECONSTRUCTION), out.documents: (documents, RECONSTRUCTION_DOCUMENTS),
               out.parameters: (parameters, PARAMETERS)}
    for path, (parts, declared) in outputs.items():
        table = pd.concat(parts, ignore_index=True)
        table.insert(0, "layer", layer)
        write_table(table, path, declared, extra=("layer",))
    return pd.concat(frames, ignore_index=True).assign(layer=layer)


def gather(reconstruction: list[str | Path], documents: list[str | Path], parameters: list[str | Path], n_boot: int,
           level: float, seed: int, out: GatheredLayerOutputs) -> pd.DataFrame:
    """Stage entry point: the files of ``out`` (every comparison per layer: the gain with its paired
    document-bootstrap interval, per seed and pooled; every kind's final test FVU per layer and seed; the
    figure), from every layer-and-seed job's ``reconstruction``, ``documents`` and ``parameters`` tables;
    returns the pooled comparisons."""
    from featint import plots
    from featint.evaluation import comparison_intervals, final_reconstruction

    metrics, per_document, counts = ([pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
                                      for paths in (reconstruction, documents, parameters)])
    comparisons = []
    for layer, layer_documents in per_document.groupby("layer"):
        layer_parameters = counts[counts["layer"] == layer]
        comparisons.append(comparison_intervals(layer_documents.drop(columns="layer"), layer_parameters, n_boot,
                                                level, seed).assign(layer=int(layer)))
    table = pd.concat(comparisons, ignore_index=True)
    table = table[["layer"] + [c for c in table.columns if c != "layer"]]
    fvu = final_reconstruction(metrics[metrics["split"] == "test"], ("layer", "run", "model", "seed", "split",
                                                                     "token_set", "metric"))
    fvu = fvu[fvu["metric"] == "fvu"].drop(columns="metric").rename(columns={"value": "fvu"})
    write_table(table, out.comparisons, COMPARISON_TABLE, extra=("layer",))
    write_table(fvu, out.fvu, LAYER_FVU)
    pooled = table[table["seed"].isna() & (table["token_set"] == "selected")]
    plots.layer_sweep(fvu[fvu["token_set"] == "selected"], pooled, out.figure)
    return pooled
