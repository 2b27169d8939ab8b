"""Seaborn figures, one function per figure; every figure is written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from featint import kinds
from featint.io import atomic_path
from featint.tables import DOCUMENT_WINDOW_BOOTSTRAP, SELECTED_SECONDARY


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


def _order(models: pd.Series) -> list[str]:
    """Kinds in the kinds table's order."""
    return kinds.order(models)


def reconstruction_comparison(fvu: pd.DataFrame, improvement: pd.DataFrame, path: str | Path) -> None:
    """Test FVU of every model's final reconstruction (bars: mean over seeds; dots: seeds), per token set,
    and the improvement over the standard SAE of the same seed (tidy rows with model, seed, token_set, value)."""
    sns.set_theme(style="whitegrid", context="notebook")
    order = _order(fvu["model"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    sns.barplot(data=fvu, x="model", y="value", hue="token_set", order=order, errorbar=None, ax=axes[0], alpha=0.6)
    sns.stripplot(data=fvu, x="model", y="value", hue="token_set", order=order, dodge=True, ax=axes[0],
                  legend=False, palette="dark:black", size=4)
    axes[0].set(ylabel="test FVU (normalised space)", xlabel="")
    sns.barplot(data=improvement, x="model", y="value", hue="token_set", order=order, errorbar=None, ax=axes[1],
                alpha=0.6)
    sns.stripplot(data=improvement, x="model", y="value", hue="token_set", order=order, dodge=True, ax=axes[1],
                  legend=False, palette="dark:black", size=4)
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].set(ylabel="1 - MSE / MSE(standard SAE, same seed)", xlabel="")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle("Reconstruction on held-out test documents", y=1.04)
    fig.tight_layout()
    _save(fig, path)


def squared_norm_histograms(features: pd.DataFrame, path: str | Path, paper_threshold: float) -> None:
    """Decoder squared norms per model (all seeds), log scale, with the median init norm and the paper's threshold."""
    sns.set_theme(style="whitegrid", context="notebook")
    order = _order(features["model"])
    grid = sns.displot(data=features, x="squared_norm", col="model", col_order=order, col_wrap=4, log_scale=True,
                       bins=60, height=2.6, aspect=1.3, facet_kws={"sharey": False})
    for ax, model in zip(grid.axes.flat, order):
        init = features.loc[features["model"] == model, "init_squared_norm"].median()
        ax.axvline(init, color="tab:orange", ls="--", label="median init")
        ax.axvline(paper_threshold, color="tab:red", ls=":", label="paper threshold")
    grid.axes.flat[0].legend(fontsize=8)
    grid.figure.suptitle("Decoder squared norms (dashed: init scale; dotted: the paper's 0.2)", y=1.02)
    _save(grid.figure, path)


def squared_norm_scatter(features: pd.DataFrame, y: str, path: str | Path, title: str) -> None:
    """Squared norm (x, log) against ``y`` per model, coloured by the norm cluster."""
    sns.set_theme(style="whitegrid", context="notebook")
    data = features[np.isfinite(features[y])] if y in features else features.iloc[:0]
    order = _order(data["model"])
    grid = sns.relplot(data=data, x="squared_norm", y=y, hue="cluster", col="model", col_order=order, col_wrap=4,
                       s=6, alpha=0.4, linewidth=0, height=2.6, aspect=1.3, facet_kws={"sharey": False})
    grid.set(xscale="log")
    grid.figure.suptitle(title, y=1.02)
    _save(grid.figure, path)


def squared_norm_violins(features: pd.DataFrame, path: str | Path) -> None:
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(12, 3.8))
    sns.violinplot(data=features, x="model", y="squared_norm", hue="cluster", order=_order(features["model"]),
                   log_scale=True, cut=0, ax=ax)
    ax.tick_params(axis="x", rotation=30)
    ax.set(xlabel="", ylabel="decoder squared norm", title="Squared norms by 2-component cluster")
    fig.tight_layout()
    _save(fig, path)


def pca_elbows(curves: pd.DataFrame, path: str | Path) -> None:
    sns.set_theme(style="whitegrid", context="notebook")
    curves = curves.assign(curve=curves["definition"] + " (" + curves["rows"] + " rows)")
    grid = sns.relplot(data=curves, x="component", y="cumulative_fraction", hue="model", style="seed",
                       col="curve", kind="line", height=3.2, aspect=1.3, facet_kws={"sharex": False})
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.axhline(0.9, color="grey", lw=1, ls="--")
    grid.figure.suptitle("PCA of decoder directions: cumulative explained variance", y=1.02)
    _save(grid.figure, path)


CONDITION_ORDER = ["sae", "sae+linear", "sae+interaction", "full"]


def kl_distributions(tokens: pd.DataFrame, path: str | Path) -> None:
    """Per-token KL (log scale) of every reconstruction condition and its epsilon-random control, per model
    (spliced tokens, all seeds and draws)."""
    sns.set_theme(style="whitegrid", context="notebook")
    used = tokens[tokens["spliced"] & (tokens["condition_kind"] != "reference")].copy()
    used["control"] = np.where(used["condition_kind"] == "epsilon_random", "epsilon-random", "reconstruction")
    used["kl"] = used["kl"].clip(lower=1e-6)
    components = [c for c in CONDITION_ORDER if c in set(used["component"])]
    grid = sns.catplot(data=used, x="component", y="kl", hue="control", col="model", col_wrap=4, kind="box",
                       order=components, col_order=_order(used["model"]), showfliers=False, height=3.2,
                       aspect=1.1, sharey=True)
    grid.set(yscale="log")
    grid.set_axis_labels("spliced component", "KL(clean || spliced), nats")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    grid.figure.suptitle("Per-token KL on test text: reconstructions vs norm-matched random errors", y=1.02)
    _save(grid.figure, path)


def behaviour_ratios(summary: pd.DataFrame, path: str | Path) -> None:
    """Pathology ratio KL(condition) / KL(epsilon-random) and KL improvement over the standalone standard SAE,
    with window-bootstrap CIs (mean over seeds)."""
    sns.set_theme(style="whitegrid", context="notebook")
    pooled = summary[summary["seed"].isna() & (summary["method"] == DOCUMENT_WINDOW_BOOTSTRAP)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    for ax, metric, reference, label in (
            (axes[0], "pathology_ratio", "epsilon_own_norm", "KL(condition) / KL(epsilon-random)"),
            (axes[1], "improvement_kl", "standard", "1 - KL / KL(standard SAE)")):
        rows = pooled[(pooled["metric"] == metric) & (pooled["reference"] == reference)
                      & pooled["condition"].isin(CONDITION_ORDER)]
        models = _order(rows["model"])
        hues = [c for c in CONDITION_ORDER if c in set(rows["condition"])]
        width = 0.8 / max(1, len(hues))
        for j, condition in enumerate(hues):
            sub = rows[rows["condition"] == condition].set_index("model").reindex(models)
            x = np.arange(len(models)) + (j - (len(hues) - 1) / 2) * width
            err = np.vstack([sub["estimate"] - sub["ci_low"], sub["ci_high"] - sub["estimate"]])
            ax.bar(x, sub["estimate"], width=width, label=condition, yerr=err, capsize=2)
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right")
        ax.axhline(1.0 if metric == "pathology_ratio" else 0.0, color="black", linewidth=0.8)
        ax.set_ylabel(label)
    axes[0].legend(title="spliced component", fontsize=8)
    fig.suptitle("Behavioural cost of each reconstruction on test text (95% CI over windows)")
    fig.tight_layout()
    _save(fig, path)


def kl_vs_error_norm(tokens: pd.DataFrame, path: str | Path, max_points: int = 20000) -> None:
    """Per-token KL against the raw-space error norm: reconstruction errors vs random errors of that norm."""
    sns.set_theme(style="whitegrid", context="notebook")
    used = tokens[tokens["spliced"] & (tokens["condition_kind"] != "reference")
                  & tokens["component"].isin(["sae", "full"])]
    if len(used) > max_points:
        used = used.sample(max_points, random_state=0)
    used = used.assign(kl=used["kl"].clip(lower=1e-6),
                       error=np.where(used["condition_kind"] == "epsilon_random", "epsilon-random", "reconstruction"))
    grid = sns.relplot(data=used, x="error_norm", y="kl", hue="error", col="component", s=6, alpha=0.3,
                       linewidth=0, height=3.8, aspect=1.2)
    grid.set(xscale="log", yscale="log")
    grid.set_axis_labels("error norm ||x - x_hat|| (raw space)", "KL(clean || spliced), nats")
    grid.figure.suptitle("KL against error norm, all models and seeds", y=1.03)
    _save(grid.figure, path)


WORD_CATEGORY_ORDER = ["formal-emotional", "formal-neutral", "casual-emotional", "casual-neutral"]


def _selected_clamps(logits: pd.DataFrame) -> pd.DataFrame:
    rows = logits[(logits["role"] == SELECTED_SECONDARY) & (logits["mode"] == "multiply")].copy()
    rows["word category"] = rows["word_formality"] + "-" + rows["word_emotion"]
    rows["model / seed"] = rows["model"] + " / seed " + rows["seed"].astype(str)
    return rows


def clamp_interaction_lines(logits: pd.DataFrame, path: str | Path) -> None:
    """Mean delta-logit (vs the unclamped pipeline) against the clamp multiplier of the selected secondary
    feature, one line per word category, 95% CIs over prompts x words; one panel per model and seed."""
    sns.set_theme(style="whitegrid", context="notebook")
    rows = _selected_clamps(logits)
    grid = sns.relplot(data=rows, x="value", y="delta_vs_pipeline", hue="word category", col="model / seed",
                       col_wrap=2, kind="line", errorbar=("ci", 95), marker="o", hue_order=WORD_CATEGORY_ORDER,
                       height=3.4, aspect=1.3, facet_kws={"sharey": False})
    grid.set_axis_labels("clamp multiplier of the selected secondary feature", "delta logit vs unclamped")
    grid.figure.suptitle("Word-set logits under clamping (paper's design, held-out feature selection)", y=1.03)
    _save(grid.figure, path)


def clamp_heatmaps(logits: pd.DataFrame, path: str | Path) -> None:
    """2x2 cell means of delta-logit (word formality x word emotion) per multiplier, mean over seeds."""
    sns.set_theme(style="white", context="notebook")
    rows = _selected_clamps(logits)
    models = _order(rows["model"])
    values = sorted(rows["value"].unique())
    fig, axes = plt.subplots(len(models), len(values), figsize=(2.6 * len(values), 2.4 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        means = rows[rows["model"] == model].groupby(["value", "word_formality", "word_emotion"])["delta_vs_pipeline"]
        limit = max(float(means.mean().abs().max()), 1e-12)  # one symmetric colour scale per model
        for j, value in enumerate(values):
            cell = rows[(rows["model"] == model) & (rows["value"] == value)]
            table = cell.pivot_table(index="word_formality", columns="word_emotion", values="delta_vs_pipeline")
            sns.heatmap(table, annot=True, fmt=".2g", cmap="RdBu_r", vmin=-limit, vmax=limit, cbar=False,
                        ax=axes[i, j])
            axes[i, j].set_title(f"{model}, x{value:g}", fontsize=9)
            axes[i, j].set(xlabel="", ylabel="")
    fig.suptitle("Mean delta logit (vs unclamped) by word set", y=1.01)
    fig.tight_layout()
    _save(fig, path)


def secondary_activation_by_cell(activations: pd.DataFrame, tests: pd.DataFrame, path: str | Path,
                                 top: int = 3) -> None:
    """Pooled activation per stimulus cell (test split) of the top-ranked secondary features."""
    sns.set_theme(style="whitegrid", context="notebook")
    ranking = tests[tests["test"] == "one_way_anova_cells"]
    chosen = ranking[ranking["rank"] <= top][["model", "seed", "feature", "rank"]]
    rows = activations[(activations["space"] == "secondary") & (activations["split"] == "test")].merge(
        chosen, on=["model", "seed", "feature"])
    rows["feature"] = rows["model"] + " s" + rows["seed"].astype(str) + " #" + rows["rank"].astype(str) + \
        " (f" + rows["feature"].astype(str) + ")"
    grid = sns.catplot(data=rows, x="cell", y="activation", col="feature", col_wrap=3, kind="box", height=3.0,
                       aspect=1.2, sharey=False, showfliers=False,
                       order=["formal-emotional", "formal-neutral", "informal-emotional", "informal-neutral"])
    grid.map_dataframe(sns.stripplot, x="cell", y="activation", color="black", size=2, alpha=0.5,
                       order=["formal-emotional", "formal-neutral", "informal-emotional", "informal-neutral"])
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    grid.figure.suptitle("Top secondary features (ranked on select sentences), activation on test sentences", y=1.03)
    _save(grid.figure, path)


def ablation_summary(summary: pd.DataFrame, path: str | Path) -> None:
    """Test FVU of every ablation instance, grouped by kind, labelled by what the row changes."""
    sns.set_theme(style="whitegrid", context="notebook")
    frame = summary.copy()
    varying = [c for c in frame.columns if c.startswith("ablation_") and c not in ("ablation_kind",)
               and frame[c].nunique() > 1]
    frame["setting"] = frame[varying].astype(str).agg(
        lambda r: ", ".join(f"{c.removeprefix('ablation_')}={v}" for c, v in r.items()), axis=1) if varying else "-"
    height = max(3.0, 0.35 * len(frame))
    fig, ax = plt.subplots(figsize=(9, height))
    sns.barplot(data=frame, y="setting", x="fvu", hue="ablation_kind", ax=ax, orient="h", dodge=True)
    ax.set(xlabel="test FVU (selected tokens)", ylabel="")
    ax.set_title("Ablation sweep (config/ablations.tsv)")
    fig.tight_layout()
    _save(fig, path)


def lr_selection(frame: pd.DataFrame, path: str | Path) -> None:
    """Validation FVU against learning rate, one line per kind; the chosen LR ringed, LRs added past the
    starting grid drawn hollow, diverged LRs left out."""
    sns.set_theme(style="whitegrid", context="notebook")
    shown = frame[~frame["diverged"]]
    order = _order(frame["model"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sns.lineplot(data=shown, x="lr", y="validation_fvu", hue="model", hue_order=order, marker="o", ax=ax)
    added = shown[shown["extension"] > 0]
    ax.scatter(added["lr"], added["validation_fvu"], s=90, facecolors="white", edgecolors="grey", zorder=3,
               label="added past the grid")
    chosen = shown[shown["chosen"]]
    ax.scatter(chosen["lr"], chosen["validation_fvu"], s=160, facecolors="none", edgecolors="black", lw=1.5,
               zorder=4, label="chosen")
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation FVU (normalised space)",
           title="Learning rate chosen per kind on the validation split")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def convergence_curves(logs: pd.DataFrame, table: pd.DataFrame, path: str | Path) -> None:
    """Validation FVU against tokens for the default and the longer budget, one panel per model, with the
    test-FVU change of the check in each panel's title."""
    sns.set_theme(style="whitegrid", context="notebook")
    validation = logs[logs["split"] == "validation"].copy()
    validation["budget"] = validation["budget_tokens"].map(lambda t: f"{t:,} tokens")
    models = _order(validation["model"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False)
    changes = table[table["quantity"] == "test_fvu"].set_index("model")["change"]
    for ax, model in zip(axes[0], models):
        sns.lineplot(data=validation[validation["model"] == model], x="tokens", y="fvu", hue="budget", ax=ax)
        change = changes.get(model, np.nan)
        ax.set(title=f"{model}: test FVU change {change:+.1%}", xlabel="tokens seen",
               ylabel="validation FVU (normalised space)")
        ax.legend(fontsize=8, title=None)
    fig.tight_layout()
    _save(fig, path)


def budget_curves(table: pd.DataFrame, path: str | Path) -> None:
    """Test FVU against training tokens (log x) per kind with its bootstrap interval, the fitted power law
    L_inf + A (T / T0)^-alpha drawn through it and L_inf as a dotted line (left); each comparison's improvement
    per budget with its interval (right)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    fvu = table[table["quantity"] == "fvu"].sort_values("factor")
    models = _order(fvu["model"])
    palette = dict(zip(models, sns.color_palette(n_colors=len(models))))
    fit = table[table["quantity"].isin(["l_inf", "a", "alpha"])].pivot_table(
        index="model", columns="quantity", values="estimate")
    for model in models:
        rows = fvu[fvu["model"] == model]
        tokens = rows["tokens"].astype(float).to_numpy()
        base = float(rows["tokens"].iloc[0]) / float(rows["factor"].iloc[0])
        err = np.vstack([rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]])
        label = f"{model} (L_inf {fit.loc[model, 'l_inf']:.3f})" if model in fit.index else model
        left.errorbar(tokens, rows["estimate"], yerr=np.nan_to_num(err), fmt="o", capsize=3, color=palette[model],
                      label=label)
        if model in fit.index:
            grid = np.geomspace(tokens.min(), tokens.max() * 2, 100)
            p = fit.loc[model]
            left.plot(grid, p["l_inf"] + p["a"] * (grid / base) ** -p["alpha"], color=palette[model], lw=1.2)
            left.axhline(p["l_inf"], color=palette[model], ls=":", lw=1)
    low, high = float(fvu["ci_low"].min()), float(fvu["ci_high"].max())
    pad = 0.15 * max(high - low, 1e-3)
    left.set_ylim(low - pad, high + pad)  # an asymptote far below the data is named in the legend, not drawn
    left.set_xscale("log")
    left.set(xlabel="training tokens (log)", ylabel="test FVU (normalised space)",
             title="test FVU by budget; lines: fitted L_inf + A T^-alpha, dotted: L_inf")
    left.legend(fontsize=8)
    improvement = table[table["quantity"] == "improvement_mse"].sort_values("factor")
    pairs = list(dict.fromkeys(zip(improvement["model"], improvement["reference"])))
    offsets = np.linspace(-0.06, 0.06, max(len(pairs), 1))
    for offset, (model, reference) in zip(offsets, pairs):
        rows = improvement[(improvement["model"] == model) & (improvement["reference"] == reference)]
        err = np.vstack([rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]]) * 100
        right.errorbar(rows["tokens"].astype(float) * 10 ** offset, rows["estimate"] * 100, yerr=np.nan_to_num(err),
                       fmt="o-", capsize=3, label=f"{model} vs {reference}")
    right.axhline(0, color="black", lw=0.8)
    right.set_xscale("log")
    right.set(xlabel="training tokens (log)", ylabel="improvement in test MSE (%)",
              title="each comparison by budget (95% interval)")
    right.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def synthetic_power(power: pd.DataFrame, path: str | Path) -> None:
    """Power curves of the planted-interaction control: the relative test-FVU gain of each model over its
    reference (one panel per comparison) against the planted strength, one line per variant, t intervals over
    seeds as error bars; a filled marker where the gain exceeds the variant's null gain (detected), hollow
    where it does not."""
    sns.set_theme(style="whitegrid", context="notebook")
    comparisons = list(dict.fromkeys(zip(power["model"], power["reference"])))
    columns = min(3, len(comparisons))
    n_rows = -(-len(comparisons) // columns)
    fig, grid = plt.subplots(n_rows, columns, figsize=(5.2 * columns, 4.0 * n_rows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(comparisons):]:
        ax.set_visible(False)
    variants = sorted(power["variant"].unique())
    palette = dict(zip(variants, sns.color_palette(n_colors=len(variants))))
    for ax, (model, reference) in zip(axes, comparisons):
        rows = power[(power["model"] == model) & (power["reference"] == reference)].sort_values("strength")
        for variant in variants:
            line = rows[rows["variant"] == variant]
            err = np.vstack([line["gain"] - line["ci_low"], line["ci_high"] - line["gain"]]) * 100
            ax.errorbar(line["strength"], line["gain"] * 100, yerr=np.nan_to_num(err), capsize=3,
                        color=palette[variant], label=variant)
            ax.scatter(line["strength"], line["gain"] * 100, s=36, zorder=3, edgecolors=palette[variant],
                       facecolors=[palette[variant] if hit else "white" for hit in line["detected"]])
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="planted interaction strength c", ylabel="test FVU gain (%)")
        ax.set_title(f"{model}\nvs {reference}", fontsize=10)
    axes[columns - 1].legend(title="variant", fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Planted-interaction positive control: does each term gain when interactions exist?")
    fig.tight_layout()
    _save(fig, path)


def synthetic_identification(ident: pd.DataFrame, path: str | Path) -> None:
    """Pair identification: AUC of planted vs decoy pairs by each model's interaction gain (one panel per model
    with an interaction term), against the planted strength (0.5 = chance), one line per variant, seeds as
    points."""
    sns.set_theme(style="whitegrid", context="notebook")
    models = kinds.order(ident["model"])
    columns = min(3, len(models))
    n_rows = -(-len(models) // columns)
    fig, grid = plt.subplots(n_rows, columns, figsize=(5.2 * columns, 3.8 * n_rows), squeeze=False, sharey=True)
    axes = grid.ravel()
    for ax in axes[len(models):]:
        ax.set_visible(False)
    variants = sorted(ident["variant"].unique())
    for ax, model in zip(axes, models):
        rows = ident[ident["model"] == model]
        sns.lineplot(data=rows, x="strength", y="auc", hue="variant", hue_order=variants, marker="o",
                     errorbar=None, ax=ax, legend=ax is axes[columns - 1])
        sns.scatterplot(data=rows, x="strength", y="auc", hue="variant", hue_order=variants, legend=False,
                        alpha=0.5, ax=ax)
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        ax.set(ylim=(-0.02, 1.02), xlabel="planted interaction strength c", ylabel="AUC, planted vs decoy pairs")
        ax.set_title(model, fontsize=10)
    axes[columns - 1].legend(title="variant", fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Does each interaction term single out the planted pairs?")
    fig.tight_layout()
    _save(fig, path)


def kinds_by_parameters(points: pd.DataFrame, path: str | Path) -> None:
    """Every kind's held-out test FVU (and spliced KL where the behaviour stage ran) against its parameter
    count: mean over seeds with its interval, one colour per kind, marker by role (paper / control /
    ablation / rival)."""
    sns.set_theme(style="whitegrid", context="notebook")
    quantities = [q for q in ("test_fvu", "spliced_kl") if q in set(points["quantity"])]
    labels = {"test_fvu": "test FVU (normalised space)", "spliced_kl": "spliced KL (nats / token)"}
    fig, axes = plt.subplots(1, max(1, len(quantities)), figsize=(6.2 * max(1, len(quantities)) + 2.5, 4.4),
                             squeeze=False)
    order = kinds.order(points["model"])
    palette = dict(zip(order, sns.color_palette("tab20", n_colors=len(order))))
    markers = {"paper": "o", "control": "s", "ablation": "v", "rival": "D", "": "X"}
    # kinds with (nearly) the same parameter count would hide each other: dodge them sideways by a small step
    span = max(float(points["parameters"].max() - points["parameters"].min()) / 1e6, 1.0)
    dodge = {model: (i - (len(order) - 1) / 2) * span * 0.006 for i, model in enumerate(order)}
    for ax, quantity in zip(axes[0], quantities):
        rows = points[points["quantity"] == quantity]
        for model in order:
            row = rows[rows["model"] == model]
            if row.empty:
                continue
            r = row.iloc[0]
            err = np.array([[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]])
            ax.errorbar(r["parameters"] / 1e6 + dodge[model], r["estimate"], yerr=np.nan_to_num(err),
                        fmt=markers[r["role"]],
                        color=palette[model], capsize=3, ms=7, label=f"{model} ({r['role']})")
        ax.set(xlabel="parameters (millions; kinds dodged sideways)", ylabel=labels[quantity])
    handles, names = axes[0][-1].get_legend_handles_labels()
    axes[0][-1].legend(handles, names, fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Every kind: held-out reconstruction against parameter count (bars: 95% document bootstrap)")
    fig.tight_layout()
    _save(fig, path)


def layer_sweep(fvu: pd.DataFrame, comparisons: pd.DataFrame, path: str | Path) -> None:
    """The layer sweep: every kind's test FVU against the hook layer (mean over seeds), and every comparison's
    gain (1 - MSE(model) / MSE(reference), mean over seeds, 95% paired document bootstrap) against the layer."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4))
    order = kinds.order(fvu["model"])
    sns.lineplot(data=fvu, x="layer", y="fvu", hue="model", hue_order=order, marker="o", errorbar=None, ax=axes[0])
    axes[0].set(xlabel="hook layer", ylabel="test FVU (normalised space)")
    axes[0].legend(title="kind", fontsize=7, loc="best")
    pairs = list(dict.fromkeys(zip(comparisons["model"], comparisons["reference"])))
    palette = dict(zip(pairs, sns.color_palette(n_colors=max(1, len(pairs)))))
    for offset, pair in enumerate(pairs):
        rows = comparisons[(comparisons["model"] == pair[0]) & (comparisons["reference"] == pair[1])]
        rows = rows.sort_values("layer")
        shift = (offset - (len(pairs) - 1) / 2) * 0.12  # side by side, so the intervals do not overlap
        err = np.vstack([rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]]) * 100
        axes[1].errorbar(rows["layer"] + shift, rows["estimate"] * 100, yerr=np.nan_to_num(err), marker="o",
                         capsize=3, color=palette[pair], label=f"{pair[0]} vs {pair[1]}")
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set(xlabel="hook layer", ylabel="test MSE gain over the reference (%)")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Layer sweep: does the gain of an integration term depend on depth?")
    fig.tight_layout()
    _save(fig, path)


def integration_power(summary: pd.DataFrame, path: str | Path) -> None:
    """The pair product test on the planted control: share of planted and of decoy pairs flagged against the
    planted strength (one panel per target, one line per variant), on the data."""
    sns.set_theme(style="whitegrid", context="notebook")
    rows = summary[summary["data"] == "data"].melt(
        id_vars=["variant", "strength", "target"], value_vars=["power", "decoy_flagged_share"],
        var_name="pairs", value_name="share flagged")
    rows["pairs"] = rows["pairs"].map({"power": "planted", "decoy_flagged_share": "decoy"})
    grid = sns.relplot(data=rows, x="strength", y="share flagged", hue="variant", style="pairs", col="target",
                       kind="line", marker="o", height=3.6, aspect=1.2, errorbar=None)
    grid.set(ylim=(-0.02, 1.02))
    grid.set_axis_labels("planted interaction strength c", "share of pairs flagged (BH 5%)")
    grid.figure.suptitle("Pair product test on the planted control: power (planted) and false flags (decoy)",
                         y=1.04)
    _save(grid.figure, path)


def integration_z(pairs: pd.DataFrame, path: str | Path) -> None:
    """Distribution of the pair statistic z on the data and on the no-interaction surrogates, one panel per model
    and target."""
    sns.set_theme(style="whitegrid", context="notebook")
    rows = pairs[pairs["z"].notna()]
    grid = sns.displot(data=rows, x="z", hue="data", col="target", row="model", kind="hist", stat="density",
                       common_norm=False, element="step", bins=40, height=3.0, aspect=1.4,
                       facet_kws={"sharey": False})
    grid.set_axis_labels("z of the product term (surrogate reference)", "density")
    grid.figure.suptitle("Pair product test on the LM: data against its no-interaction surrogate", y=1.03)
    _save(grid.figure, path)


def integration_contexts(contexts: pd.DataFrame, path: str | Path, max_rows: int = 12) -> None:
    """The flagged pairs of largest z with their strongest co-activating context (text before the token, the
    token in brackets), as a table figure."""
    fig, ax = plt.subplots(figsize=(11, 0.45 * (max_rows + 2)))
    ax.axis("off")
    if contexts.empty:
        ax.text(0.5, 0.5, "no pair flagged on the data", ha="center", va="center")
    else:
        first = contexts[contexts["rank"] == 0].sort_values("z", ascending=False).head(max_rows)
        cells = [[f"{r.model} s{r.seed}", f"{r.latent_a}, {r.latent_b}", r.target, f"{r.z:.1f}",
                  (r.before[-60:] + " [" + r.token + "]").replace("\n", " ")] for r in first.itertuples()]
        table = ax.table(cellText=cells, colLabels=["model", "latents", "target", "z", "strongest context"],
                         colWidths=[0.12, 0.1, 0.09, 0.05, 0.64], loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    ax.set_title("Flagged pairs and their strongest co-activating test token")
    _save(fig, path)
