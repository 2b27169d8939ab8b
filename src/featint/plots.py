"""Seaborn figures, one function per figure; every figure is written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from featint.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def norm_by_position(by_position: pd.DataFrame, path: str | Path) -> None:
    """Median and 99th-percentile token norm by window position, raw vs normalised, one line per split."""
    sns.set_theme(style="whitegrid", context="notebook")
    long = by_position.melt(
        id_vars=["split", "space", "position"], value_vars=["median", "p99"], var_name="statistic",
        value_name="norm",
    )
    grid = sns.relplot(
        data=long, x="position", y="norm", hue="split", style="statistic", col="space", kind="line",
        col_order=["raw", "normalised"], facet_kws={"sharey": False}, height=3.6, aspect=1.3,
    )
    grid.set(yscale="log")
    grid.set_axis_labels("position in window (0 = BOS)", "token norm (log scale)")
    grid.figure.suptitle("Residual-stream norm by position, raw and normalised", y=1.03)
    _save(grid.figure, path)
