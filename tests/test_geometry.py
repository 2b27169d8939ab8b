"""Geometry and the statistics it uses: known answers, and a control able to detect the init-norm artefact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featint import stats
from featint.config import Settings
from featint.geometry import (
    feature_table,
    gram_offdiagonal_statistics,
    interaction_removal_effect,
    paper_contribution_ratios,
    summary_rows,
)
from featint.models import NFM, FeatureModel, SparseCode, TopKSAE


def test_mixture_bic_picks_two_on_bimodal_and_one_on_unimodal() -> None:
    rng = np.random.default_rng(0)
    bimodal = np.concatenate([rng.normal(-2, 0.5, 600), rng.normal(2, 0.5, 400)])
    unimodal = rng.normal(0, 1, 1000)
    for data, expected in ((bimodal, True), (unimodal, False)):
        one, two = stats.fit_gaussian_mixture_1d(data, 1), stats.fit_gaussian_mixture_1d(data, 2)
        assert (two.bic < one.bic) is expected
    two = stats.fit_gaussian_mixture_1d(bimodal, 2)
    np.testing.assert_allclose(two.means, [-2, 2], atol=0.1)
    np.testing.assert_allclose(two.weights, [0.6, 0.4], atol=0.03)
    assert (two.labels(np.array([-2.0, 2.0])) == [0, 1]).all()
    assert stats.bimodality_coefficient(bimodal) > 5 / 9 > stats.bimodality_coefficient(unimodal)


@pytest.mark.parametrize("name", ["lognormal", "gamma", "skew_normal", "skew_normal_left", "t3", "log_gamma"])
def test_two_peak_verdict_calls_skewed_unimodal_samples_unimodal(name: str) -> None:
    # samples of the real size (F = 4608) from unimodal skewed or heavy-tailed laws; BIC and Sarle's
    # coefficient call many of these bimodal, the two-peak verdict must not (>= 95% unimodal)
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(sum(map(ord, name)))
    draw = {"lognormal": lambda: rng.lognormal(0.0, 0.8, 4608), "gamma": lambda: rng.gamma(0.8, 1.0, 4608),
            "skew_normal": lambda: scipy_stats.skewnorm.rvs(8, size=4608, random_state=rng),
            "skew_normal_left": lambda: scipy_stats.skewnorm.rvs(-8, size=4608, random_state=rng),
            "t3": lambda: rng.standard_t(3, 4608),
            "log_gamma": lambda: scipy_stats.loggamma.rvs(0.5, size=4608, random_state=rng)}[name]
    calls = [stats.two_peak_test(draw()).bimodal for _ in range(20)]
    assert sum(calls) <= 1


def test_two_peak_verdict_finds_separated_mixtures_and_reports_density_maxima() -> None:
    rng = np.random.default_rng(5)
    for _ in range(10):
        sample = np.concatenate([rng.normal(0.05, 0.012, 1500), rng.normal(0.37, 0.06, 3108)])
        result = stats.two_peak_test(sample)
        assert result.bimodal and result.ashman_d > 2
        np.testing.assert_allclose(result.modes, [0.05, 0.37], atol=0.01)  # density maxima, not means
    # a shoulder (two components, one peak) is not bimodal
    shoulder = np.concatenate([rng.normal(0.0, 1.0, 4000), rng.normal(1.5, 1.0, 600)])
    assert not stats.two_peak_test(shoulder).bimodal


def test_centred_pca_equals_numpy_eigendecomposition() -> None:
    rows = np.random.default_rng(1).normal(size=(200, 7)) @ np.diag([5, 3, 2, 1, 0.5, 0.2, 0.1])
    expected = np.sort(np.linalg.eigvals(np.cov(rows, rowvar=False)).real)[::-1]
    np.testing.assert_allclose(stats.centred_pca_spectrum(rows), expected, rtol=1e-10)
    assert stats.components_for_fraction(np.array([5.0, 3.0, 1.0, 1.0]), 0.8) == 2
    assert stats.components_for_fraction(np.array([5.0, 3.0, 1.0, 1.0]), 0.81) == 3


def test_partial_spearman_removes_a_shared_cause() -> None:
    rng = np.random.default_rng(2)
    cause = rng.normal(size=2000)
    x, y = cause + 0.3 * rng.normal(size=2000), cause + 0.3 * rng.normal(size=2000)
    assert stats.spearman(x, y)[0] > 0.8
    assert abs(stats.partial_spearman(x, y, cause)) < 0.1


def test_paper_contributions_sum_to_one() -> None:
    torch.manual_seed(0)
    model = FeatureModel("joint", TopKSAE(16, 40, 4), NFM(40, 16, 6))
    ratios = paper_contribution_ratios(model)
    np.testing.assert_allclose(ratios.sum(axis=1), 1.0, rtol=1e-12)
    standard = paper_contribution_ratios(FeatureModel("standard", TopKSAE(16, 40, 4)))
    assert (standard["paper_residual_ratio"] == 1.0).all()


def test_gram_statistics_blockwise_equal_direct() -> None:
    rows = torch.randn(50, 8, dtype=torch.float64)
    got = gram_offdiagonal_statistics(rows, block_rows=7)
    gram = (rows @ rows.T).numpy()
    off = gram[~np.eye(50, dtype=bool)]
    assert got["gram_dot_offdiag_mean"] == pytest.approx(off.mean())
    assert got["gram_dot_offdiag_sd"] == pytest.approx(off.std())
    assert got["gram_dot_offdiag_max_abs"] == pytest.approx(np.abs(off).max())


def test_interaction_removal_effect_equals_recomputation() -> None:
    torch.manual_seed(3)
    model = FeatureModel("joint", TopKSAE(16, 40, 4), NFM(40, 16, 6, dropout=0.5)).eval()
    code, _ = model.sae.encode(torch.randn(5, 16))
    effect = interaction_removal_effect(model, code, chunk=2)
    nfm = model.nfm
    full = nfm(code).interaction  # type: ignore[misc]
    for n in range(5):
        for j in range(4):
            values = code.values.clone()
            values[n, j] = 0.0
            reduced = nfm(SparseCode(code.indices, values)).interaction  # type: ignore[misc]
            assert effect[n, j].item() == pytest.approx((reduced[n] - full[n]).norm().item(), rel=1e-4, abs=1e-6)


def test_control_detects_a_low_mode_made_of_untrained_features() -> None:
    """Half the features never fire and keep their init norm; the other half trained to a larger norm. The
    squared norms look bimodal, and the control (drop features that never fired / never moved) says why."""
    torch.manual_seed(4)
    d, n_features = 32, 512
    init = FeatureModel("joint", TopKSAE(d, n_features, 8), NFM(n_features, d, 6))
    trained = FeatureModel("joint", TopKSAE(d, n_features, 8), NFM(n_features, d, 6))
    trained.load_state_dict(init.state_dict())
    with torch.no_grad():
        live = torch.arange(n_features) < n_features // 2
        trained.sae.W_dec[live] = torch.nn.functional.normalize(torch.randn(int(live.sum()), d), dim=1) * 0.6
        trained.sae.W_enc[live] = trained.sae.W_dec[live]
        trained.sae.b_enc[~live] = -1e4  # never fires
    settings = Settings.from_dict({"geometry": {"min_fires": 1, "interaction_tokens": 256}}).geometry
    x = torch.randn(2048, d)
    features = feature_table(trained, init, x, settings)
    assert (features.loc[~live.numpy(), "fires"] == 0).all()
    rows = {(r["metric"], r["subset"]): r["value"] for r in summary_rows(trained, features, settings)}
    assert rows[("verdict_bimodal", "all")] == 1.0
    assert rows[("verdict_bimodal", "trained")] == 0.0  # after removing the untrained features
    low = features["cluster"] == "low"
    assert (low == ~live.numpy()).mean() > 0.98  # the low cluster is the untrained half
    assert rows[("fraction_never_fired", "all")] == pytest.approx(0.5)


@torch.no_grad()
def test_activation_contributions_are_expectations_over_the_same_tokens() -> None:
    """Brute force: every term averaged over the same scanned tokens, a silent feature contributing 0; NaN for
    features that never fired there."""
    from featint.geometry import activation_statistics

    torch.manual_seed(3)
    d, n_features, k = 12, 30, 3
    model = FeatureModel("joint", TopKSAE(d, n_features, k), NFM(n_features, d, 5, dropout=0.0)).eval()
    with torch.no_grad():
        model.sae.b_enc[-4:] = -1e4  # four features never fire
    x = torch.randn(96, d)
    frame = activation_statistics(model, x, interaction_tokens=64, chunk=32)
    scanned = x[:64]
    code, _ = model.sae.encode(scanned)
    f = code.dense(n_features).double()
    assert model.nfm is not None
    full = model.nfm(code).interaction.double()  # type: ignore[union-attr]
    direct = f.mean(0) * model.sae.W_dec.detach().double().norm(dim=1)
    linear = f.mean(0) * model.nfm.W_lin.detach().double().norm(dim=1)
    interaction = torch.zeros(n_features, dtype=torch.float64)
    for i in range(n_features):
        values = torch.where(code.indices == i, torch.zeros_like(code.values), code.values)
        without = model.nfm(SparseCode(code.indices, values)).interaction.double()  # type: ignore[union-attr]
        interaction[i] = (without - full).norm(dim=1).mean()
    seen = (f > 0).any(0).numpy()
    assert (frame["contribution_tokens"] == 64).all()
    np.testing.assert_allclose(frame["activation_direct"].to_numpy()[seen], direct.numpy()[seen], rtol=1e-5)
    np.testing.assert_allclose(frame["activation_linear"].to_numpy()[seen], linear.numpy()[seen], rtol=1e-5)
    np.testing.assert_allclose(frame["activation_interaction"].to_numpy()[seen], interaction.numpy()[seen],
                               rtol=1e-4, atol=1e-9)
    assert frame.loc[~seen, ["activation_direct", "activation_linear", "activation_interaction",
                             "activation_nfm_share"]].isna().all().all()
    assert (~seen[-4:]).all()
    assert frame["fires"].sum() == int((model.sae.encode(x)[0].values > 0).sum())  # firing over all of x
