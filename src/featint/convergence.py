"""Would more training change the verdict? The convergence check of the default budget.

Some kinds (``convergence.models``, first seed) are retrained at ``budget_factor`` x ``training.tokens`` with
the same LR, seed and schedule shape, and evaluated on the same test tokens. The check passes when

* each model's test FVU changes by less than ``max_relative_fvu_change`` (relative), and
* each comparison among them (:func:`featint.kinds.comparisons`: each against ``standard``, each term
  against its control) changes by less than its standard deviation over the default run's seeds: a longer
  training would not move the comparison by more than the seeds already do.

One tidy row per quantity (``test_fvu`` of each model; ``improvement_mse`` of each comparison, model against
``reference``), with both values, the change, the threshold and whether it passes; the figure shows the
validation curves of both budgets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from featint import stats
from featint.config import ConvergenceSettings
from featint.errors import FeatintError
from featint.evaluation import final_reconstruction
from featint.kinds import comparisons
from featint.tables import CONVERGENCE_SUMMARY, write_table


class ConvergenceError(FeatintError):
    """The tables the convergence check compares are missing a model or seed."""


def _final_fvu(tables: list[str | Path]) -> pd.DataFrame:
    """model, seed, fvu, tokens (test split, ``selected`` tokens, the final reconstruction)."""
    metrics = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    metrics = metrics[(metrics["split"] == "test") & (metrics["token_set"] == "selected")]
    final = final_reconstruction(metrics)
    fvu = final[final["metric"] == "fvu"][["model", "seed", "value"]].rename(columns={"value": "fvu"})
    counted = metrics[(metrics["component"] == "model") & (metrics["metric"] == "tokens")]
    return fvu.merge(counted[["model", "seed", "value"]].rename(columns={"value": "test_tokens"}),
                     on=["model", "seed"], how="left")


def _lookup(frame: pd.DataFrame, model: str, seed: int, where: str) -> float:
    hit = frame[(frame["model"] == model) & (frame["seed"] == seed)]
    if hit.empty:
        raise ConvergenceError(f"no test FVU of {model} seed {seed} among the {where} tables; run its "
                               "train and evaluate rules.")
    return float(hit["fvu"].iloc[0])


def convergence_table(settings: ConvergenceSettings, default: pd.DataFrame, longer: pd.DataFrame,
                      budgets: dict[str, int]) -> pd.DataFrame:
    """The tidy criterion table (see the module docstring). ``budgets``: tokens of the default and longer
    trainings."""
    seed = int(longer["seed"].min())
    rows = []
    base = {"seed": seed, "tokens_default": budgets["default"], "tokens_longer": budgets["longer"]}
    for model in settings.models:
        before, after = _lookup(default, model, seed, "default"), _lookup(longer, model, seed, "longer")
        change = (after - before) / before
        rows.append({**base, "quantity": "test_fvu", "model": model, "reference": None, "default": before,
                     "longer": after, "change": change, "change_kind": "relative",
                     "threshold": settings.max_relative_fvu_change,
                     "threshold_definition": "max_relative_fvu_change",
                     "passes": bool(abs(change) < settings.max_relative_fvu_change)})
    for model, reference, _term in comparisons(settings.models):
        def improvement(frame: pd.DataFrame, s: int, where: str, model: str = model, reference: str = reference
                        ) -> float:
            return stats.improvement(_lookup(frame, model, s, where), _lookup(frame, reference, s, where))

        before, after = improvement(default, seed, "default"), improvement(longer, seed, "longer")
        seeds = sorted(set(default.loc[default["model"] == model, "seed"])
                       & set(default.loc[default["model"] == reference, "seed"]))
        spread = float(np.std([improvement(default, s, "default") for s in seeds], ddof=1)) \
            if len(seeds) > 1 else float("nan")
        rows.append({**base, "quantity": "improvement_mse", "model": model, "reference": reference,
                     "default": before, "longer": after, "change": after - before, "change_kind": "absolute",
                     "threshold": spread,
                     "threshold_definition": f"sd over {len(seeds)} seeds of the improvement at the default budget",
                     "passes": bool(np.isfinite(spread) and abs(after - before) < spread)})
    return pd.DataFrame(rows)


def run_convergence(settings: ConvergenceSettings, default_tables: list[str | Path], longer_tables: list[str | Path],
                    log_tables: list[str | Path], out_path: str | Path, figure_path: str | Path) -> pd.DataFrame:
    """Stage entry point: the criterion table and the validation curves of both budgets."""
    from featint import plots

    logs = pd.concat([pd.read_parquet(p).assign(budget_tokens=lambda f: int(f["tokens"].max())) for p in log_tables],
                     ignore_index=True)
    budgets = sorted(logs["budget_tokens"].unique())
    if len(budgets) != 2:
        raise ConvergenceError(f"expected the train logs of two budgets, got {budgets}; pass the default and the "
                               "longer trainings' train_log.parquet.")
    table = convergence_table(settings, _final_fvu(default_tables), _final_fvu(longer_tables),
                              {"default": int(budgets[0]), "longer": int(budgets[1])})
    write_table(table, out_path, CONVERGENCE_SUMMARY)
    plots.convergence_curves(logs, table, figure_path)
    return table
