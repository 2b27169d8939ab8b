"""The one statistics module: mixtures and bimodality, rank correlations, partial correlations, PCA spectra,
cluster bootstrap, t-tests and false-discovery control.

Every consumer (reconstruction, geometry, later behaviour and interventions) takes its statistics from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class GaussianMixture1D:
    weights: np.ndarray  # [c]
    means: np.ndarray  # [c]
    variances: np.ndarray  # [c]
    log_likelihood: float
    n: int

    @property
    def n_components(self) -> int:
        return int(self.weights.size)

    @property
    def n_parameters(self) -> int:
        return 3 * self.n_components - 1

    @property
    def bic(self) -> float:
        return -2.0 * self.log_likelihood + self.n_parameters * math.log(self.n)

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        log_p = _component_log_densities(np.asarray(x, dtype=np.float64), self)
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        return p / p.sum(axis=1, keepdims=True)

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Component index per point, components ordered by mean (0 = lowest)."""
        return self.responsibilities(x).argmax(axis=1)


def _component_log_densities(x: np.ndarray, gmm: GaussianMixture1D) -> np.ndarray:
    var = gmm.variances[None, :]
    return (np.log(gmm.weights[None, :]) - 0.5 * np.log(2 * math.pi * var)
            - 0.5 * (x[:, None] - gmm.means[None, :]) ** 2 / var)


def fit_gaussian_mixture_1d(x: np.ndarray, n_components: int, iterations: int = 500,
                            tolerance: float = 1e-10) -> GaussianMixture1D:
    """Maximum-likelihood 1-D Gaussian mixture by EM, initialised at quantiles (deterministic)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    floor = 1e-6 * max(float(x.var()), 1e-300)
    if n_components == 1:
        var = max(float(x.var()), floor)
        ll = float(np.sum(-0.5 * np.log(2 * math.pi * var) - 0.5 * (x - x.mean()) ** 2 / var))
        return GaussianMixture1D(np.ones(1), np.array([x.mean()]), np.array([var]), ll, n)
    quantiles = np.quantile(x, np.linspace(0, 1, n_components + 2)[1:-1])
    gmm = GaussianMixture1D(np.full(n_components, 1 / n_components), quantiles.astype(np.float64),
                            np.full(n_components, max(float(x.var()) / n_components, floor)), -np.inf, n)
    previous = -np.inf
    for _ in range(iterations):
        log_p = _component_log_densities(x, gmm)
        top = log_p.max(axis=1, keepdims=True)
        log_total = top[:, 0] + np.log(np.exp(log_p - top).sum(axis=1))
        ll = float(log_total.sum())
        resp = np.exp(log_p - log_total[:, None])
        mass = resp.sum(axis=0) + 1e-12
        means = (resp * x[:, None]).sum(axis=0) / mass
        variances = np.maximum((resp * (x[:, None] - means) ** 2).sum(axis=0) / mass, floor)
        gmm = GaussianMixture1D(mass / n, means, variances, ll, n)
        if abs(ll - previous) < tolerance * max(1.0, abs(ll)):
            break
        previous = ll
    order = np.argsort(gmm.means)
    final_ll = float(np.log(np.exp(_component_log_densities(x, gmm)).sum(axis=1) + 1e-300).sum())
    return GaussianMixture1D(gmm.weights[order], gmm.means[order], gmm.variances[order], final_ll, n)


def bimodality_coefficient(x: np.ndarray) -> float:
    """Sarle's bimodality coefficient (g^2 + 1) / (kappa + 3 (n-1)^2 / ((n-2)(n-3))); > 5/9 suggests bimodality."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    g = float(scipy_stats.skew(x, bias=False))
    kappa = float(scipy_stats.kurtosis(x, bias=False))
    return (g * g + 1.0) / (kappa + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(rho, two-sided p) ignoring pairs with a NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan"), float("nan")
    result = scipy_stats.spearmanr(x[keep], y[keep])
    return float(result.statistic), float(result.pvalue)


def partial_spearman(x: np.ndarray, y: np.ndarray, control: np.ndarray) -> float:
    """Spearman correlation of x and y controlling for ``control``: Pearson correlation of the residuals of
    the ranks of x and y after regressing each on the ranks of ``control``."""
    x, y, z = (np.asarray(a, dtype=np.float64) for a in (x, y, control))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    rx, ry, rz = (scipy_stats.rankdata(a[keep]) for a in (x, y, z))
    design = np.column_stack([np.ones_like(rz), rz])

    def residual(r: np.ndarray) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(design, r, rcond=None)
        return r - design @ coef

    ex, ey = residual(rx), residual(ry)
    denominator = math.sqrt(float((ex * ex).sum() * (ey * ey).sum()))
    return float((ex * ey).sum() / denominator) if denominator > 0 else float("nan")


def centred_pca_spectrum(rows: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending) of the covariance of ``rows`` [n, d]: the full centred PCA spectrum."""
    rows = np.asarray(rows, dtype=np.float64)
    centred = rows - rows.mean(axis=0)
    covariance = centred.T @ centred / max(1, rows.shape[0] - 1)
    return np.clip(np.linalg.eigvalsh(covariance)[::-1], 0.0, None)


def uncentred_truncated_spectrum(rows: np.ndarray, n_components: int) -> np.ndarray:
    """The author's PCA: squared singular values of the *uncentred* rows, truncated at ``n_components``."""
    singular = np.linalg.svd(np.asarray(rows, dtype=np.float64), compute_uv=False)
    return singular[:n_components] ** 2


def components_for_fraction(spectrum: np.ndarray, fraction: float, total: float | None = None) -> int:
    """Smallest number of leading components whose sum reaches ``fraction`` of ``total`` (default: the sum)."""
    total = float(spectrum.sum()) if total is None else total
    cumulative = np.cumsum(spectrum) / total
    return int(np.searchsorted(cumulative, fraction - 1e-12) + 1)


# ---------------------------------------------------------------------------------------------------------
# Uncertainty over sequences, tests, multiple comparisons


def cluster_bootstrap_weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """[1 + n_boot, n_clusters] resampling counts: row 0 is the sample itself (all ones), each further row
    draws ``n_clusters`` clusters (sequences) with replacement. Every statistic built from cluster sums with
    the same rows is paired across conditions that share the clusters."""
    if n_clusters < 1:
        raise ValueError("the bootstrap needs at least one cluster")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    counts = np.zeros((n_boot, n_clusters), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_clusters), draws.ravel()), 1.0)
    return np.vstack([np.ones((1, n_clusters)), counts])


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    se: float


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> Interval:
    """Point estimate (``replicates[0]``, the full sample) and the percentile interval of the others."""
    replicates = np.asarray(replicates, dtype=np.float64)
    estimate, boot = float(replicates[0]), replicates[1:]
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return Interval(estimate, float("nan"), float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), float(boot.std(ddof=1)) if boot.size > 1 else float("nan"))


def unpaired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Student's two-sample t-test with equal variances (scipy ``ttest_ind``): the paper's test, which treats
    every row as independent. Returns (t, two-sided p)."""
    result = scipy_stats.ttest_ind(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as the input; NaNs stay NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    m = int(finite.sum())
    if m == 0:
        return out
    values = p[finite]
    order = np.argsort(values)
    ranked = values[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    result = np.empty(m)
    result[order] = adjusted
    out[finite] = result
    return out
