"""The budget target's statistics: the scaling fit on curves with a known asymptote, the paired bootstrap table
on made-up evaluations with planted FVUs (known answers without noise, coverage with it), and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featint.budget import BudgetError, BudgetInstance, budget_table, load_instances, scaling_fit
from featint.io import write_parquet

X = np.array([1.0, 2.0, 4.0, 8.0])


def test_the_fit_recovers_a_known_power_law() -> None:
    """L = 0.17 + 0.06 x^-0.24 (the shape issue 11 measured): L_inf, A and alpha come back."""
    fit = scaling_fit(X, 0.17 + 0.06 * X ** -0.24)
    assert fit.l_inf[0] == pytest.approx(0.17, abs=2e-4)
    assert fit.a[0] == pytest.approx(0.06, abs=2e-4)
    assert fit.alpha[0] == pytest.approx(0.24, rel=0.01)
    assert not fit.at_edge[0]
    np.testing.assert_allclose(fit.predict(X)[0], 0.17 + 0.06 * X ** -0.24, atol=1e-6)


def test_the_fit_keeps_its_constraints_and_flags_an_exponent_at_the_edge() -> None:
    """A flat curve has A = 0; a pure power law has L_inf = 0 (never negative); a curve that does not bend
    within the range puts alpha at an edge, flagged."""
    flat = scaling_fit(X, np.full(4, 0.2))
    assert flat.a[0] == pytest.approx(0.0, abs=1e-12) and flat.l_inf[0] == pytest.approx(0.2)
    pure = scaling_fit(X, 0.3 * X ** -0.5)
    assert pure.l_inf[0] == pytest.approx(0.0, abs=1e-3) and pure.alpha[0] == pytest.approx(0.5, rel=0.02)
    rising_then_flat = scaling_fit(X, np.array([0.2, 0.25, 0.25, 0.25]))  # no decrease: a constant
    assert rising_then_flat.a[0] == 0.0 and rising_then_flat.l_inf[0] >= 0
    straight = scaling_fit(X, 0.3 - 0.01 * np.log(X), alpha_range=(0.5, 3.0))  # bends less than alpha=0.5 allows
    assert straight.at_edge[0] and straight.alpha[0] <= 0.5 * 1.1
    with pytest.raises(BudgetError, match="three or more budgets"):
        scaling_fit(np.array([1.0, 2.0, 2.0]), np.array([0.3, 0.2, 0.2]))


def test_rows_of_replicates_are_fitted_independently() -> None:
    curves = np.stack([0.1 + 0.05 * X ** -0.3, 0.2 + 0.02 * X ** -1.0])
    fit = scaling_fit(X, curves)
    np.testing.assert_allclose(fit.l_inf, [0.1, 0.2], atol=3e-4)
    np.testing.assert_allclose(fit.alpha, [0.3, 1.0], rtol=0.02)


PLANTED = {"standard": (0.20, 0.05, 0.3), "joint": (0.19, 0.05, 0.3), "param_matched": (0.195, 0.06, 0.3)}


def planted_instances(noise: float, draw: int, n_docs: int = 60,
                      seeds_at: dict[float, list[int]] | None = None) -> list[BudgetInstance]:
    """Made-up evaluations: per document sst ~ tokens, sse = sst x FVU(model, factor) x (1 + noise e_doc), with
    the document effect e shared by every model (documents differ in difficulty) plus a small private part."""
    rng = np.random.default_rng(draw)
    seeds_at = seeds_at or {1.0: [0, 1, 2], 2.0: [0, 1], 4.0: [0], 8.0: [0]}
    tokens = rng.integers(50, 150, n_docs)
    shared = rng.normal(0, 1, n_docs)
    out = []
    for factor, seeds in seeds_at.items():
        for seed in seeds:
            for model, (l_inf, a, alpha) in PLANTED.items():
                fvu = l_inf + a * factor ** -alpha
                private = rng.normal(0, 0.2, n_docs)
                sst = tokens * 2.0
                sse = sst * fvu * (1 + noise * (shared + private))
                docs = pd.DataFrame({"doc_id": np.arange(n_docs), "tokens": tokens, "sse": sse, "sst": sst})
                out.append(BudgetInstance(model, factor, seed, int(1000 * factor), 3e-3, docs))
    return out


def test_without_noise_the_table_gives_the_planted_answers() -> None:
    table = budget_table(planted_instances(0.0, 0), (0.02, 3.0), n_boot=50, level=0.95, seed=0)
    from featint.tables import BUDGET_SUMMARY

    assert BUDGET_SUMMARY.validate(table, "budget/summary.parquet") is table  # what run_budget writes
    by = table.set_index(["quantity", "model", "reference", "factor"], drop=False)
    for model, (l_inf, a, alpha) in PLANTED.items():
        row = table[(table["quantity"] == "fvu") & (table["model"] == model) & (table["factor"] == 4.0)].iloc[0]
        assert row["estimate"] == pytest.approx(l_inf + a * 4 ** -alpha, rel=1e-9)
        assert row["ci_low"] == pytest.approx(row["estimate"], rel=1e-9)  # no noise: no width
        fit = table[(table["model"] == model) & table["quantity"].isin(["l_inf", "alpha"])].set_index("quantity")
        assert fit.loc["l_inf", "estimate"] == pytest.approx(l_inf, abs=3e-4)
        assert fit.loc["alpha", "estimate"] == pytest.approx(alpha, rel=0.02)
    joint = table[(table["quantity"] == "improvement_mse") & (table["model"] == "joint")
                  & (table["reference"] == "standard") & (table["factor"] == 1.0)].iloc[0]
    assert joint["estimate"] == pytest.approx(1 - 0.24 / 0.25, rel=1e-9) and joint["n_seeds"] == 3
    limit = table[(table["quantity"] == "l_inf_improvement") & (table["model"] == "joint")
                  & (table["reference"] == "standard")].iloc[0]
    assert limit["estimate"] == pytest.approx(1 - 0.19 / 0.20, abs=2e-3)
    difference = table[(table["quantity"] == "l_inf_difference") & (table["model"] == "joint")
                       & (table["reference"] == "param_matched")].iloc[0]
    assert difference["estimate"] == pytest.approx(0.005, abs=3e-4)
    assert set(table["quantity"]) == {"fvu", "lr", "l_inf", "a", "alpha", "fvu_change_per_doubling",
                                      "improvement_mse", "improvement_moved", "l_inf_improvement",
                                      "l_inf_difference"}
    assert by.index.is_unique
    change = table[(table["quantity"] == "fvu_change_per_doubling") & (table["model"] == "standard")].iloc[0]
    expected = (0.20 + 0.05 * 16 ** -0.3) / (0.20 + 0.05 * 8 ** -0.3) - 1
    assert change["estimate"] == pytest.approx(expected, rel=0.01)


def test_the_intervals_cover_the_planted_values() -> None:
    """With noise, the 95% intervals of the per-budget FVU, the comparison and L_inf hold the planted values
    on most draws (18 or more of 20; exact coverage is 95% only asymptotically) and have a width that moves
    with the noise."""
    hits = {"fvu": 0, "improvement_mse": 0, "l_inf_improvement": 0}
    widths = []
    for draw in range(20):
        table = budget_table(planted_instances(0.02, draw), (0.02, 3.0), n_boot=300, level=0.95, seed=draw)
        fvu = table[(table["quantity"] == "fvu") & (table["model"] == "standard") & (table["factor"] == 2.0)].iloc[0]
        truth = 0.20 + 0.05 * 2 ** -0.3
        hits["fvu"] += fvu["ci_low"] <= truth <= fvu["ci_high"]
        widths.append(fvu["ci_high"] - fvu["ci_low"])
        imp = table[(table["quantity"] == "improvement_mse") & (table["model"] == "joint")
                    & (table["reference"] == "standard") & (table["factor"] == 8.0)].iloc[0]
        truth = 1 - (0.19 + 0.05 * 8 ** -0.3) / (0.20 + 0.05 * 8 ** -0.3)
        hits["improvement_mse"] += imp["ci_low"] <= truth <= imp["ci_high"]
        lim = table[(table["quantity"] == "l_inf_improvement") & (table["model"] == "joint")
                    & (table["reference"] == "standard")].iloc[0]
        hits["l_inf_improvement"] += lim["ci_low"] <= 0.05 <= lim["ci_high"]
    assert all(count >= 18 for count in hits.values()), hits
    assert 0 < np.mean(widths) < 0.05


def test_mismatched_seeds_or_documents_stop_with_a_message() -> None:
    instances = planted_instances(0.0, 0)
    with pytest.raises(BudgetError, match="different seeds"):
        budget_table([i for i in instances if not (i.model == "joint" and i.seed == 2)], (0.02, 3.0), 10, 0.95, 0)
    broken = [BudgetInstance(i.model, i.factor, i.seed, i.tokens, i.lr, i.documents.iloc[1:])
              if i.model == "joint" and i.factor == 2.0 else i for i in instances]
    with pytest.raises(BudgetError, match="different test documents"):
        budget_table(broken, (0.02, 3.0), 10, 0.95, 0)


def test_instances_are_read_from_the_evaluations_and_logs(tmp_path: Path) -> None:
    """Kind and seed from the log, factor and LR from its metadata; a table of another model is refused."""
    paths = []
    for model, seed, factor in (("standard", 0, 1.0), ("joint", 0, 2.0)):
        docs = pd.DataFrame({"run": "r", "model": model, "seed": seed, "split": "test", "token_set": "selected",
                             "component": ["sae", "full"] if model == "joint" else ["sae", "sae"],
                             "doc_id": [0, 0] if model == "joint" else [0, 1], "tokens": 10,
                             "sse": [2.0, 1.0], "sst": [4.0, 4.0]})
        log = pd.DataFrame({"model": model, "seed": seed, "tokens": [512, int(1024 * factor)]})
        write_parquet(docs, tmp_path / f"{model}_docs.parquet")
        write_parquet(log, tmp_path / f"{model}_log.parquet", metadata={"lr": 0.003, "budget_factor": factor})
        paths.append((tmp_path / f"{model}_docs.parquet", tmp_path / f"{model}_log.parquet"))
    instances = load_instances([d for d, _ in paths], [log for _, log in paths])
    assert [(i.model, i.factor, i.seed, i.tokens, i.lr) for i in instances] == [
        ("standard", 1.0, 0, 1024, 0.003), ("joint", 2.0, 0, 2048, 0.003)]
    assert instances[1].documents["sse"].tolist() == [1.0]  # the joint model's final component: full
    with pytest.raises(BudgetError, match="same order"):
        load_instances([paths[1][0], paths[0][0]], [paths[0][1], paths[1][1]])
    with pytest.raises(BudgetError, match="one of each"):
        load_instances([paths[0][0]], [paths[0][1], paths[1][1]])


def test_the_claims_row_reads_the_extrapolated_comparison() -> None:
    """budget_extrapolated: 1 - L_inf(joint) / L_inf(standard) with its interval, the other references in the
    note; without the budget table it says how to run it."""
    from featint.claims import Artefacts, Reader, _budget_extrapolated

    empty = {name: pd.DataFrame() for name in ("reconstruction", "parameters", "geometry", "behaviour",
                                               "interventions", "clamps", "reconstruction_summary", "convergence",
                                               "comparisons")}
    assert "snakemake --cores 8 budget" in _budget_extrapolated(Reader(Artefacts(**empty))).note
    table = budget_table(planted_instances(0.02, 1), (0.02, 3.0), n_boot=200, level=0.95, seed=0)
    ours = _budget_extrapolated(Reader(Artefacts(**empty, budget=table)))
    expected = table[(table["quantity"] == "l_inf_improvement") & (table["model"] == "joint")
                     & (table["reference"] == "standard")].iloc[0]
    assert (ours.corrected, ours.low, ours.high) == (expected["estimate"], expected["ci_low"], expected["ci_high"])
    assert ours.low < 0.05 < ours.high and "vs param_matched" in ours.note
    assert "1, 2, 4, 8 x" in ours.corrected_definition
