"""The one comparison list (featint.kinds.COMPARISONS) and the one improvement (featint.stats.improvement)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featint import stats
from featint.evaluation import baseline_improvements, comparison_replicates
from featint.kinds import BASELINE, COMPARISONS, KINDS, WHOLE_MODEL, comparisons


def test_every_kind_is_compared_with_the_baseline_first_then_each_term_with_its_control() -> None:
    against = [c for c in COMPARISONS if c.against_baseline]
    assert [c.model for c in against] == [k for k in KINDS if k != BASELINE]
    assert all(c.reference == BASELINE and c.term == WHOLE_MODEL for c in against)
    assert COMPARISONS[:len(against)] == tuple(against)  # the baseline rows come first
    terms = COMPARISONS[len(against):]
    assert terms and all(c.model in KINDS and c.reference in KINDS and c.reference != BASELINE for c in terms)
    assert len({(c.model, c.reference) for c in COMPARISONS}) == len(COMPARISONS)


def test_comparisons_keep_only_the_trained_kinds_in_the_lists_order() -> None:
    trained = ["param_matched", "joint_no_interaction", "joint", "standard"]
    assert [(c.model, c.reference) for c in comparisons(trained)] == [
        ("param_matched", "standard"), ("joint", "standard"), ("joint_no_interaction", "standard"),
        ("joint", "joint_no_interaction"), ("joint", "param_matched")]
    assert [(c.model, c.reference) for c in comparisons(trained, baseline=False)] == [
        ("joint", "joint_no_interaction"), ("joint", "param_matched")]
    assert [c.model for c in comparisons(trained, terms=False)] == ["param_matched", "joint", "joint_no_interaction"]
    assert comparisons(["joint", "param_matched"]) == (COMPARISONS[-5],)  # no baseline without standard
    assert comparisons(["standard"]) == ()


def test_improvement_is_one_minus_the_loss_ratio() -> None:
    assert stats.improvement(0.75, 1.0) == 0.25
    assert stats.improvement(2.0, 1.0) == -1.0
    np.testing.assert_array_equal(stats.improvement(np.array([1.0, 3.0]), np.array([2.0, 4.0])), [0.5, 0.25])


def test_comparison_replicates_pair_each_model_with_its_references_same_seed() -> None:
    finals = {("standard", 0): np.array([0.4, 0.5]), ("joint", 0): np.array([0.3, 0.5]),
              ("joint_no_interaction", 0): np.array([0.36, 0.4]), ("joint", 1): np.array([0.2, 0.2])}
    against = comparison_replicates(finals, baseline=True)
    assert list(against) == [("joint", 0, "standard"), ("joint_no_interaction", 0, "standard")]  # seed 1: none
    np.testing.assert_allclose(against[("joint", 0, "standard")], [0.25, 0.0])
    terms = comparison_replicates(finals, baseline=False)
    assert list(terms) == [("joint", 0, "joint_no_interaction")]
    np.testing.assert_allclose(terms[("joint", 0, "joint_no_interaction")], [1 - 0.3 / 0.36, 1 - 0.5 / 0.4])


def test_baseline_improvements_are_per_seed_split_and_token_set_and_keep_the_baselines_zero_row() -> None:
    rows = [("standard", 0, "fvu", 0.4), ("joint", 0, "fvu", 0.3), ("standard", 1, "fvu", 0.5),
            ("joint", 1, "fvu", 0.45), ("joint", 0, "mse", 0.03), ("standard", 0, "mse", 0.04)]
    final = pd.DataFrame([{"run": "r", "model": m, "seed": s, "split": "test", "token_set": "selected",
                           "metric": metric, "value": v} for m, s, metric, v in rows])
    out = baseline_improvements(final).set_index(["model", "seed", "metric"])["value"]
    assert out[("joint", 0, "improvement_fvu")] == pytest.approx(0.25)
    assert out[("joint", 1, "improvement_fvu")] == pytest.approx(0.1)
    assert out[("joint", 0, "improvement_mse")] == pytest.approx(0.25)
    assert out[("standard", 1, "improvement_fvu")] == 0.0
    frame = baseline_improvements(final)
    assert set(frame["reference"]) == {BASELINE} and set(frame["component"]) == {"model"}
