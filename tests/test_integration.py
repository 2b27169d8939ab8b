"""The pair product test (featint.integration) and its cluster-robust OLS (featint.stats)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from featint import integration, stats
from featint.config import load_settings
from featint.models import SparseCode


def test_cluster_robust_ols_equals_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    n, groups = 400, rng.integers(0, 20, 400)
    x = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    y = x @ [1.0, 0.5, 0.0, -0.3] + rng.normal(size=n) + rng.normal(size=20)[groups]
    ours = stats.ols_cluster_robust(x, y[:, None], groups, 2)
    assert ours is not None
    fitted = sm.OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": groups})
    assert ours[0].estimate == pytest.approx(fitted.params[2], rel=1e-10)
    assert ours[0].se == pytest.approx(fitted.bse[2], rel=1e-8)
    assert ours[0].df == 19


def _split(codes: np.ndarray, y: np.ndarray, doc_tokens: int) -> integration.SplitCodes:
    """A split whose code is the true sparse magnitudes (no encoder between them and y)."""
    k = int((codes > 0).sum(1).max())
    values, indices = torch.from_numpy(codes).float().topk(k, dim=1)
    x = torch.from_numpy(y).float()
    return integration.SplitCodes(x, x.clone(), SparseCode(indices, values), np.arange(len(y)) // doc_tokens,
                                  np.arange(len(y)))


def _planted(n: int, strength: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features, d = 12, 8
    directions = 0.2 * rng.normal(size=(features, d))  # small beside the planted term: the test has power here
    active = rng.random((n, features)) < 0.3
    codes = np.where(active, np.exp(0.5 * rng.normal(size=(n, features))), 0.0)
    y = codes @ directions + 0.3 * rng.normal(size=(n, d))
    y[:, 0] += strength * codes[:, 0] * codes[:, 1]  # the one planted pair (0, 1)
    return codes, y


def test_without_a_pairwise_term_the_t_reference_holds_its_level() -> None:
    """Known answer: y linear in the codes plus noise, the codes fixed regressors: over repeated draws a pair is
    flagged (BH 5% over its 66 pairs) in at most the nominal share of draws, and its p values are uniform."""
    settings = dataclasses.replace(load_settings("config/config.yaml").integration, min_tokens=20, min_documents=5,
                                   max_pairs=100)
    any_flagged, p_values = 0, []
    for draw in range(20):
        fit_codes, fit_y = _planted(3000, 0.0, 2 * draw)
        test_codes, test_y = _planted(1500, 0.0, 2 * draw + 1)
        fit, test = _split(fit_codes, fit_y, 50), _split(test_codes, test_y, 50)
        pairs = integration.candidate_pairs(fit, test, 12, settings)
        table = integration.test_pairs(pairs, fit, test, 12, settings, targets=("activation",))
        q = stats.benjamini_hochberg(table["p"].to_numpy())
        any_flagged += int((q <= 0.05).any())
        p_values.append(table["p"].to_numpy())
    p = np.concatenate(p_values)
    assert any_flagged <= 2  # 20 draws at FDR 5% under the complete null: 1 expected
    assert 0.03 <= (p < 0.05).mean() <= 0.08


def test_a_planted_product_is_flagged_and_scored_against_the_truth() -> None:
    settings = dataclasses.replace(load_settings("config/config.yaml").integration, min_tokens=20, min_documents=5)
    fit_codes, fit_y = _planted(3000, 2.0, 100)
    test_codes, test_y = _planted(1500, 2.0, 101)
    fit, test = _split(fit_codes, fit_y, 50), _split(test_codes, test_y, 50)
    pairs = integration.candidate_pairs(fit, test, 12, settings)
    table = integration.test_pairs(pairs, fit, test, 12, settings, targets=("activation",))
    table["flagged"] = stats.benjamini_hochberg(table["p"].to_numpy()) <= 0.05
    planted = table[(table["latent_a"] == 0) & (table["latent_b"] == 1)]
    assert len(planted) == 1 and bool(planted["flagged"].iloc[0])
    assert planted["ci_low"].iloc[0] < 2.0 < planted["ci_high"].iloc[0]  # the planted coefficient, along e_0
    assert table["flagged"].sum() <= 2
    member = integration.pair_membership(torch.eye(12), torch.eye(12), np.array([[0, 1], [2, 3]]), torch.zeros(0, 12),
                                         0.9)
    truth = integration.score_against_truth(table, member, 1)
    rows = integration.calibration_rows(table, truth)[0]
    assert rows["planted_flagged"] == 1 and rows["planted_flagged_share"] == 1.0
    assert rows["decoy_flagged"] == 0


def test_pair_membership_counts_split_and_conjunction_latents() -> None:
    """Latent 2 splits feature 0 (cosine 0.8), latent 3 carries the planted direction u; latent 4 matches nothing."""
    features, u = torch.eye(5)[:4], torch.eye(5)[4:]  # true features e0..e3 (pairs 0-1 planted, 2-3 decoy), u = e4
    directions = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0.8, 0.6, 0, 0, 0], [0.1, 0, 0, 0, 1.0], [0.5, 0.5, 0.5, 0.5, 0]]),
        dim=1)
    member = integration.pair_membership(directions, features, np.array([[0, 1], [2, 3]]), u, 0.7)
    assert member.tolist() == [[True, False], [True, False], [True, False], [True, False], [False, False]]


def test_calibrate_refers_t_to_the_surrogates() -> None:
    """A data table whose t sit where the surrogates' do is flagged nowhere; one shifted by 10 sd is flagged."""
    settings = load_settings("config/config.yaml").integration
    rng = np.random.default_rng(3)
    def table(shift: float) -> pd.DataFrame:
        return pd.DataFrame({"latent_a": np.arange(200), "latent_b": np.arange(200) + 1, "target": "activation",
                             "test_tokens": rng.integers(30, 300, 200), "t": 3 + rng.normal(size=200) + shift,
                             "p": 0.5})
    surrogates = [table(0.0), table(0.0)]
    spread = integration.within_pair_spread(surrogates)
    assert spread["activation"] == pytest.approx(1.0, abs=0.15)  # the draws' t move by N(0, 1) around 3
    assert not integration.calibrate(table(0.0), surrogates, spread, settings)["flagged"].any()
    assert integration.calibrate(table(10.0), surrogates, spread, settings)["flagged"].all()


def test_calibrate_judges_a_pair_against_its_own_artefact() -> None:
    """A pair whose t is large on every draw (an encoder artefact of its own) is not flagged for it."""
    settings = load_settings("config/config.yaml").integration
    rng = np.random.default_rng(5)
    artefact = np.where(np.arange(200) < 20, 8.0, 0.0)  # 20 pairs with t near 8 everywhere
    def table() -> pd.DataFrame:
        return pd.DataFrame({"latent_a": np.arange(200), "latent_b": np.arange(200) + 1, "target": "residual",
                             "test_tokens": 100, "t": artefact + rng.normal(size=200), "p": 0.5})
    surrogates = [table(), table(), table()]
    calibrated = integration.calibrate(table(), surrogates, integration.within_pair_spread(surrogates), settings)
    assert not calibrated["flagged"].any()


def test_replication_matches_latents_across_seeds() -> None:
    rng = np.random.default_rng(4)
    directions = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(6, 5))).float(), dim=1)
    permuted = directions[[5, 4, 3, 2, 1, 0]]  # seed 1's latent i is seed 0's latent 5 - i
    seed0 = pd.DataFrame({"latent_a": [0, 2], "latent_b": [1, 3], "target": "activation", "flagged": [True, False]})
    seed1 = pd.DataFrame({"latent_a": [4, 2], "latent_b": [5, 3], "target": "activation", "flagged": [True, False]})
    rows = integration.replication({0: seed0, 1: seed1}, {0: directions, 1: permuted}, 0.9)
    first = rows[rows["seed"] == 0].iloc[0]
    assert first["matched"] == 1 and first["tested_there"] == 1 and first["replicated"] == 1
    assert first["base_rate"] == 0.5
    # one seed: nothing to replicate against, and still the declared table (it was a bare column before)
    from featint.tables import INTEGRATION_REPLICATION

    alone = integration.replication({0: seed0}, {0: directions}, 0.9).assign(model="joint")
    assert alone.empty and INTEGRATION_REPLICATION.validate(alone, "replication.parquet") is alone
    assert INTEGRATION_REPLICATION.validate(rows.assign(model="joint"), "replication.parquet") is not None


def test_the_context_table_shows_the_strongest_co_activating_tokens_as_text(tmp_path, embedded_lm_dir) -> None:
    """Known answer: latents 0 and 1 co-fire on rows 3, 9 and 14, most strongly on 14; the table gives those
    rows in that order, with the text of the tokens before each (never across its window's start)."""
    from transformers import AutoTokenizer

    from featint.activations import TOKENS, ActivationStore, write_store_from_tensor
    from featint.io import write_parquet

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_lm_dir))
    ids = tokenizer("The cat sat on the warm mat while the dog slept by the door all day")["input_ids"][:16]
    store_dir = tmp_path / "test"
    write_store_from_tensor(store_dir, torch.zeros(16, 4), "test", "hook", window_length=8, doc_length=8)
    tokens = pd.read_parquet(store_dir / TOKENS).assign(token_id=np.asarray(ids, dtype=np.int32))
    write_parquet(tokens, store_dir / TOKENS, metadata={"split": "test"})
    codes = np.zeros((16, 4))
    for row, (a, b) in {3: (1.0, 1.0), 9: (2.0, 1.5), 14: (3.0, 2.0), 5: (4.0, 0.0)}.items():
        codes[row, :2] = a, b
    split = _split(codes, np.zeros((16, 4)), 8)
    table = pd.DataFrame({"latent_a": [0, 2], "latent_b": [1, 3], "flagged": [True, False]})
    contexts = integration.top_contexts(table, split, 4, per_pair=2)
    assert contexts["row"].tolist() == [14, 9] and contexts["product"].tolist() == [6.0, 3.0]
    assert contexts["doc_id"].tolist() == [1, 1]
    shown = integration.context_text(contexts, ActivationStore(store_dir), tokenizer, before=3)
    assert shown["token"].tolist() == [tokenizer.decode(ids[14:15]), tokenizer.decode(ids[9:10])]
    assert shown["before"].tolist() == [tokenizer.decode(ids[11:14]), tokenizer.decode(ids[8:9])]  # row 8 opens


def test_the_dual_encoding_claim_reads_the_tables_it_is_given() -> None:
    """The claims row: the mean share of pairs flagged on the data over seeds (range as interval), with the
    surrogates' share, replication and the planted control's power and c = 0 flags in its note."""
    from featint import claims

    summary = pd.DataFrame({"model": "standard", "seed": [0, 1, 0, 1], "data": ["data", "data", "surrogate",
                            "surrogate"], "target": "residual", "pairs_tested": 400.0,
                            "flagged_share": [0.5, 0.3, 0.01, 0.0], "flagged_explained_share": [1e-3, 2e-3, 0, 0]})
    replication = pd.DataFrame({"model": "standard", "target": "residual", "seed": [0, 1], "other_seed": [1, 0],
                                "flagged": [200, 120], "matched": [10, 6], "tested_there": [4, 2],
                                "replicated": [3, 1], "base_rate": [0.3, 0.5]})
    power = pd.DataFrame({"variant": "base", "strength": [0.0, 1.0], "data": "data", "target": "residual",
                          "power": [0.0, 0.25], "decoy_flagged_share": [0.0, 0.04], "pairs_flagged": [2.0, 19.0],
                          "pairs_tested": 400.0, "any_flagged": [0.5, 1.0]})
    empty = {name: pd.DataFrame() for name in ("reconstruction", "parameters", "geometry", "behaviour",
                                                "interventions", "clamps", "reconstruction_summary", "convergence",
                                                "comparisons")}
    reader = claims.Reader(claims.Artefacts(**empty, integration=summary, replication=replication,
                                            planted_power=power))
    ours = claims.CLAIMS["dual_encoding"].extract(reader)
    assert ours.corrected == pytest.approx(0.4) and (ours.low, ours.high) == (0.3, 0.5) and ours.seeds == 2
    assert "surrogates (no pairwise term) flag 0.005" in ours.note
    assert "16 of 320 flagged pairs" in ours.note and "4 flagged again" in ours.note
    assert "base c=1: 0.25" in ours.note and "2.0 of 400 pairs" in ours.note and "0.50 of runs" in ours.note
    unstated = claims.CLAIMS["dual_encoding"].extract(claims.Reader(claims.Artefacts(**empty, integration=summary)))
    assert "power not stated" in unstated.note
    assert np.isnan(claims.CLAIMS["dual_encoding"].extract(claims.Reader(claims.Artefacts(**empty))).corrected)
