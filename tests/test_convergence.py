"""The convergence check: known answers of its criteria on small tidy tables."""

from __future__ import annotations

import pandas as pd
import pytest

from featint.config import ConvergenceSettings
from featint.convergence import ConvergenceError, convergence_table


def _fvu(values: dict[tuple[str, int], float]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "seed": s, "fvu": v} for (m, s), v in values.items()])


def test_criteria_known_answers() -> None:
    settings = ConvergenceSettings(models=["standard", "joint"], budget_factor=2.0, max_relative_fvu_change=0.02)
    default = _fvu({("standard", 0): 0.300, ("joint", 0): 0.290, ("standard", 1): 0.302, ("joint", 1): 0.296,
                    ("standard", 2): 0.298, ("joint", 2): 0.289})
    longer = _fvu({("standard", 0): 0.297, ("joint", 0): 0.280})
    table = convergence_table(settings, default, longer, {"default": 100, "longer": 200}).set_index(
        ["quantity", "model"])
    standard = table.loc[("test_fvu", "standard")]
    assert standard["change"] == pytest.approx(-0.01) and bool(standard["passes"])
    joint = table.loc[("test_fvu", "joint")]
    assert joint["change"] == pytest.approx(0.280 / 0.290 - 1) and not bool(joint["passes"])  # -3.4%
    improvement = table.loc[("improvement_mse", "joint")]
    before, after = 1 - 0.290 / 0.300, 1 - 0.280 / 0.297
    assert improvement["change"] == pytest.approx(after - before)
    seeds = [1 - 0.290 / 0.300, 1 - 0.296 / 0.302, 1 - 0.289 / 0.298]
    assert improvement["threshold"] == pytest.approx(pd.Series(seeds).std())
    assert bool(improvement["passes"]) == (abs(after - before) < pd.Series(seeds).std())
    assert (table["tokens_longer"] == 200).all()


def test_a_missing_model_is_named() -> None:
    settings = ConvergenceSettings(models=["standard", "joint"], budget_factor=2.0, max_relative_fvu_change=0.02)
    with pytest.raises(ConvergenceError, match="no test FVU of joint seed 0 among the longer tables"):
        convergence_table(settings, _fvu({("standard", 0): 0.3, ("joint", 0): 0.3}), _fvu({("standard", 0): 0.3}),
                          {"default": 1, "longer": 2})
