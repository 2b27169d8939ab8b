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

import pandas as pd

from featint.config import Settings
from featint.layout import LayerFolder, LayersFolder
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


def run_layer(settings: Settings, layer: int, seed: int, activations_dir: str | Path, lr_tables: list[str | Path],
              out_dir: str | Path, run: str, device: str = "cpu") -> pd.DataFrame:
    """Stage entry point: train every kind of ``layers.kinds`` on one layer's activations for one seed
    (``standard`` first; the kinds built on it from its weights), evaluate each on the test split, and write
    the tidy reconstruction table, the per-document sums and the parameter counts (each with a ``layer``
    column) to ``out_dir``. ``lr_tables`` are the run's LR-selection tables (each names its kind)."""
    from featint.evaluation import reconstruction_table
    from featint.kinds import lr_selection_kind
    from featint.training import chosen_lr, lr_tables_by_kind, train_kinds

    local = layer_settings(settings, layer)
    tables = lr_tables_by_kind(lr_tables)
    out = LayerFolder(out_dir)
    frames, documents, parameters = [], [], []
    for kind, _ in train_kinds(local, local.layers.kinds, seed, activations_dir, out_dir,
                               lambda name: chosen_lr(local, name, tables.get(lr_selection_kind(name))), device):
        model = out.model(kind)
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
           level: float, seed: int, out_dir: str | Path) -> pd.DataFrame:
    """Stage entry point: ``comparisons.parquet`` (every comparison per layer: the gain with its paired
    document-bootstrap interval, per seed and pooled), ``fvu.parquet`` (every kind's final test FVU per layer
    and seed) and ``figures/layers.png`` in ``out_dir``, from every layer-and-seed job's ``reconstruction``,
    ``documents`` and ``parameters`` tables; returns the pooled comparisons."""
    from featint import plots
    from featint.evaluation import comparison_intervals, final_reconstruction

    out = LayersFolder(out_dir)
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
    plots.layer_sweep(fvu[fvu["token_set"] == "selected"], pooled, out.figure("layers"))
    return pooled
