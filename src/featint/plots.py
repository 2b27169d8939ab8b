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


def training_curves(train_log: pd.DataFrame, path: str | Path, title: str) -> None:
    """FVU (train batches and validation), L0 and dead fraction against tokens seen."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    sns.lineplot(data=train_log, x="tokens", y="fvu", hue="split", ax=axes[0])
    axes[0].set(yscale="log", ylabel="FVU (normalised space)")
    train_rows = train_log[train_log["split"] == "train"]
    sns.lineplot(data=train_rows, x="tokens", y="l0", ax=axes[1])
    axes[1].set(ylabel="L0 (active features / token)")
    sns.lineplot(data=train_rows, x="tokens", y="dead_fraction", ax=axes[2])
    axes[2].set(ylabel="dead fraction (rolling window)", ylim=(-0.02, 1.02))
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def reconstruction_comparison(metrics: pd.DataFrame, path: str | Path) -> None:
    """Test FVU of every model's final reconstruction (bars: mean over seeds; dots: seeds), per token set,
    and the improvement over the standard SAE of the same seed."""
    sns.set_theme(style="whitegrid", context="notebook")
    fvu = metrics[(metrics["metric"] == "fvu") & metrics["component"].isin(["full", "sae"])]
    fvu = fvu.sort_values("component").groupby(["model", "seed", "token_set"]).first().reset_index()
    improvement = metrics[metrics["metric"] == "improvement_vs_standard_mse"]
    order = [m for m in ["standard", "standard_refit", "param_matched", "sequential", "sequential_truncated",
                         "joint", "joint_no_interaction", "joint_no_linear"] if m in set(fvu["model"])]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    sns.barplot(data=fvu, x="model", y="value", hue="token_set", order=order, errorbar=None, ax=axes[0], alpha=0.6)
    sns.stripplot(data=fvu, x="model", y="value", hue="token_set", order=order, dodge=True, ax=axes[0],
                  legend=False, color="black", size=4)
    axes[0].set(ylabel="test FVU (normalised space)", xlabel="")
    sns.barplot(data=improvement, x="model", y="value", hue="token_set", order=order, errorbar=None, ax=axes[1],
                alpha=0.6)
    sns.stripplot(data=improvement, x="model", y="value", hue="token_set", order=order, dodge=True, ax=axes[1],
                  legend=False, color="black", size=4)
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].set(ylabel="1 - MSE / MSE(standard SAE, same seed)", xlabel="")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle("Reconstruction on held-out test documents")
    fig.tight_layout()
    _save(fig, path)
