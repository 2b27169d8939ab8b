"""The one statistics module: improvements over a reference, mixtures and bimodality, rank and partial
correlations, PCA spectra, cluster bootstrap, t-tests and false-discovery control.

Every consumer (reconstruction, geometry, behaviour and interventions) takes its statistics from here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd


class _ScipyStats:
    """``scipy.stats``, imported on its first use: the import takes about a second, and most processes that
    import this module (a stage's command line, every parse of the Snakefile, which each SLURM job repeats)
    never call it."""

    def __getattr__(self, name: str) -> object:
        from scipy import stats

        return getattr(stats, name)


scipy_stats: Any = _ScipyStats()

ArrayOrFloat = TypeVar("ArrayOrFloat", float, np.ndarray, pd.Series)


def improvement(value: ArrayOrFloat, reference: ArrayOrFloat) -> ArrayOrFloat:
    """``1 - value / reference``: the relative improvement of a loss (MSE, FVU, KL, CE) over a reference's on the
    same tokens; positive = lower loss. The one definition every comparison uses (:data:`featint.kinds.COMPARISONS`,
    the paper's ``own_sae`` improvements, the behaviour, budget, convergence, ablation and planted-control
    tables)."""
    return 1.0 - value / reference


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


def mixture_density(gmm: GaussianMixture1D, grid: np.ndarray) -> np.ndarray:
    """The fitted mixture's density on ``grid``."""
    return np.exp(_component_log_densities(np.asarray(grid, dtype=np.float64), gmm)).sum(axis=1)


def mixture_density_maxima(gmm: GaussianMixture1D, points: int = 8192) -> np.ndarray:
    """Locations of the local maxima of the fitted mixture density (its modes), ascending; searched on a fine
    grid spanning every component's mean +- 5 sd."""
    sd = np.sqrt(gmm.variances)
    grid = np.linspace(float((gmm.means - 5 * sd).min()), float((gmm.means + 5 * sd).max()), points)
    density = mixture_density(gmm, grid)
    inner = (density[1:-1] > density[:-2]) & (density[1:-1] >= density[2:])
    return grid[1:-1][inner]


def ashman_d(gmm: GaussianMixture1D) -> float:
    """Ashman's D of a 2-component mixture, sqrt(2) |mu_1 - mu_2| / sqrt(s_1^2 + s_2^2); D > 2 is needed for
    a clean separation of the two components."""
    if gmm.n_components != 2:
        raise ValueError("Ashman's D is defined for two components")
    return float(math.sqrt(2.0) * abs(gmm.means[1] - gmm.means[0]) / math.sqrt(float(gmm.variances.sum())))


@dataclass(frozen=True)
class TwoPeakTest:
    """Bimodality that needs two peaks: a 2-component Gaussian mixture is fitted by maximum likelihood; the
    sample is called bimodal when the fitted density has two local maxima **and** Ashman's D > 2. A BIC
    preference for two components or Sarle's coefficient > 5/9 is not enough: skewed or heavy-tailed
    unimodal samples meet both."""

    modes: np.ndarray  # the fitted density's local maxima, ascending (one or two values)
    ashman_d: float
    weight_low: float  # weight of the component with the lower mean

    @property
    def two_peaks(self) -> bool:
        return self.modes.size >= 2

    @property
    def bimodal(self) -> bool:
        return self.two_peaks and self.ashman_d > 2.0


def two_peak_test(x: np.ndarray, two: GaussianMixture1D | None = None) -> TwoPeakTest:
    """:class:`TwoPeakTest` of a 1-D sample (``two``: its 2-component fit, when already made)."""
    two = fit_gaussian_mixture_1d(x, 2) if two is None else two
    return TwoPeakTest(mixture_density_maxima(two), ashman_d(two), float(two.weights[0]))


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


def nested_cluster_bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[1 + n_boot, n_units] resampling counts of a two-stage cluster bootstrap: each replicate draws the
    groups (documents) with replacement, then, inside every drawn group, its units (windows) with
    replacement. Row 0 is the sample itself (all ones). ``groups`` [n_units] names each unit's group. When
    every unit is its own group this is the one-stage bootstrap of :func:`cluster_bootstrap_weights`
    (documents resampled as wholes); with many units per group it keeps the between-document variance that a
    bootstrap over windows alone would miss. Statistics built from unit sums with the same rows are paired."""
    groups = np.asarray(groups)
    labels, unit_group = np.unique(groups, return_inverse=True)
    n_units, n_groups = unit_group.size, labels.size
    if n_groups < 1:
        raise ValueError("the bootstrap needs at least one group")
    members = [np.flatnonzero(unit_group == g) for g in range(n_groups)]
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, n_units), dtype=np.float64)
    drawn_groups = rng.integers(0, n_groups, size=(n_boot, n_groups))
    for b in range(n_boot):
        for g in drawn_groups[b]:
            units = members[g]
            if units.size == 1:
                counts[b, units[0]] += 1.0
            else:
                np.add.at(counts[b], units[rng.integers(0, units.size, size=units.size)], 1.0)
    return np.vstack([np.ones((1, n_units)), counts])


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    se: float


def t_interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of the mean over seeds (NaN bounds with one seed)."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan"), float("nan")
    half = float(scipy_stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


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


@dataclass(frozen=True)
class SeedInterval:
    """One interval of :func:`per_seed_and_pooled`."""

    model: str
    seed: int | None  # None: the mean over the model's seeds
    rest: tuple  # the key's fields after (model, seed), e.g. (condition, metric)
    n_seeds: int
    interval: Interval


def per_seed_and_pooled(replicates: dict[tuple, np.ndarray], level: float,
                        pooled: Callable[[str], bool] = lambda model: True) -> list[SeedInterval]:
    """Percentile intervals of bootstrap replicates keyed (model, seed, *rest): one per key, then, for each
    (model, *rest) whose model ``pooled`` accepts, one of the mean over its seeds taken within each replicate
    (every seed resampled with the same rows, so the mean is paired too)."""
    out = [SeedInterval(key[0], key[1], key[2:], 1, percentile_interval(values, level))
           for key, values in replicates.items()]
    groups: dict[tuple, list[np.ndarray]] = {}
    for key, values in replicates.items():
        if pooled(key[0]):
            groups.setdefault((key[0], *key[2:]), []).append(values)
    out += [SeedInterval(key[0], None, key[1:], len(values), percentile_interval(np.mean(values, axis=0), level))
            for key, values in groups.items()]
    return out


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


def welch_t_tests_by_column(values: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch t and p for every column of ``values`` [n, m] between ``group`` True and False rows; columns
    constant in both groups get t = 0, p = 1 (vectorised)."""
    values = np.asarray(values, dtype=np.float64)
    a, b = values[group], values[~group]
    mean_a, mean_b = a.mean(0), b.mean(0)
    var_a, var_b = a.var(0, ddof=1) / a.shape[0], b.var(0, ddof=1) / b.shape[0]
    se2 = var_a + var_b
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean_a - mean_b) / np.sqrt(se2)
        df = se2**2 / (var_a**2 / (a.shape[0] - 1) + var_b**2 / (b.shape[0] - 1))
    p = 2.0 * scipy_stats.t.sf(np.abs(t), df)
    constant = se2 == 0
    t[constant], p[constant] = 0.0, 1.0
    return t, p


def one_way_anova_by_column(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-way ANOVA F and p for every column of ``values`` [n, m] across the groups of ``labels`` (as scipy
    ``f_oneway``, vectorised); columns constant within and between groups get F = 0, p = 1."""
    values = np.asarray(values, dtype=np.float64)
    groups = [values[labels == g] for g in np.unique(labels)]
    n, k = values.shape[0], len(groups)
    grand = values.mean(0)
    between = sum(g.shape[0] * (g.mean(0) - grand) ** 2 for g in groups)
    within = sum(((g - g.mean(0)) ** 2).sum(0) for g in groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (between / (k - 1)) / (within / (n - k))
    p = scipy_stats.f.sf(f, k - 1, n - k)
    constant = (between == 0) & (within == 0)
    f[constant], p[constant] = 0.0, 1.0
    return f, p


def two_way_anova(frame: pd.DataFrame, response: str, factor_a: str, factor_b: str,
                  block: str | None = None) -> pd.DataFrame:
    """Two-way ANOVA ``response ~ C(a) * C(b) [+ C(block)]`` by statsmodels OLS, Type II sums of squares.
    One row per effect (a, b, a:b, block, Residual) with sum_sq, df, F, p and partial eta^2 =
    SS_effect / (SS_effect + SS_residual)."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    formula = f"{response} ~ C({factor_a}) * C({factor_b})" + (f" + C({block})" if block else "")
    fitted = smf.ols(formula, data=frame).fit()
    table = anova_lm(fitted, typ=2)
    names = {f"C({factor_a})": factor_a, f"C({factor_b})": factor_b,
             f"C({factor_a}):C({factor_b})": f"{factor_a}:{factor_b}", "Residual": "Residual"}
    if block:
        names[f"C({block})"] = block
    table = table.rename(index=names).rename(columns={"PR(>F)": "p"})
    residual = float(table.loc["Residual", "sum_sq"])
    table["partial_eta_sq"] = table["sum_sq"] / (table["sum_sq"] + residual)
    table.loc["Residual", "partial_eta_sq"] = np.nan
    return table.reset_index(names="effect")


def crossed_random_intercepts(frame: pd.DataFrame, response: str, factor_a: str, factor_b: str,
                              prompt: str, word: str) -> pd.DataFrame:
    """Linear mixed model ``response ~ C(a, Sum) * C(b, Sum)`` with crossed random intercepts for ``prompt`` and
    ``word`` (statsmodels ``MixedLM``, REML, variance components over one all-encompassing group).

    Every prompt x word row shares its prompt's and its word's intercept, so rows are not independent units; this
    model tests the word-set effects against the variation between words. One row per fixed effect (a, b, a:b;
    sum-to-zero coding, so main effects are main effects): coefficient, standard error, Wald statistic, the Wald
    z p value statsmodels reports (``p_wald_z``), and ``p`` from a t reference with the between-word degrees of
    freedom (words minus the four cells: the Kenward-Roger degrees of freedom of a balanced crossed design; the
    z reference is anti-conservative with few words). ``F`` = t^2 (one numerator degree of freedom). The fitted
    prompt, word and residual variances and the optimiser's convergence flag ride along."""
    import statsmodels.formula.api as smf

    data = frame[[response, factor_a, factor_b, prompt, word]].assign(_group=0)
    formula = f"{response} ~ C({factor_a}, Sum) * C({factor_b}, Sum)"
    model = smf.mixedlm(formula, data, groups="_group", re_formula="0",
                        vc_formula={"prompt": f"0 + C({prompt})", "word": f"0 + C({word})"})
    with warnings.catch_warnings():
        # boundary fits (a variance component at zero) are legitimate answers, not failures
        warnings.simplefilter("ignore")
        fitted = model.fit(reml=True, method=["lbfgs"])
    n_cells = data.groupby([factor_a, factor_b]).ngroups
    df = float(data[word].nunique() - n_cells)
    names = fitted.model.exog_names
    labels = {names[1]: factor_a, names[2]: factor_b, names[3]: f"{factor_a}:{factor_b}"}
    variances = dict(zip(fitted.model.exog_vc.names, np.asarray(fitted.vcomp, float)))
    rows = []
    for name, effect in labels.items():
        t = float(fitted.tvalues[name])
        rows.append({"effect": effect, "coefficient": float(fitted.params[name]), "se": float(fitted.bse[name]),
                     "t": t, "F": t * t, "df": df, "p_wald_z": float(fitted.pvalues[name]),
                     "p": float(2 * scipy_stats.t.sf(abs(t), df)) if df > 0 else np.nan,
                     "prompt_var": variances.get("prompt", np.nan), "word_var": variances.get("word", np.nan),
                     "residual_var": float(fitted.scale), "converged": bool(fitted.converged)})
    return pd.DataFrame(rows)


def paper_interaction_test(differences_a: np.ndarray, differences_b: np.ndarray) -> tuple[float, float]:
    """The author's "interaction" test: a one-way F between two lists of difference scores (each formed by
    pairing rows by list order), df (1, n_a + n_b - 2). Reproduced for comparison, not a valid 2x2 test."""
    result = scipy_stats.f_oneway(np.asarray(differences_a, float), np.asarray(differences_b, float))
    return float(result.statistic), float(result.pvalue)


def normal_upper_tail(z: np.ndarray) -> np.ndarray:
    """P(Z >= z) for a standard normal Z, elementwise (NaN stays NaN)."""
    return scipy_stats.norm.sf(np.asarray(z, dtype=np.float64))


@dataclass(frozen=True)
class CoefficientTest:
    """One coefficient of an OLS fit with a cluster-robust standard error."""

    estimate: float  #: the coefficient
    se: float  #: its cluster-robust (CR1) standard error
    df: int  #: degrees of freedom of its t reference: clusters - 1
    explained_ss: float  #: the drop in residual sum of squares the column brings (estimate^2 x its partialled SS)

    @property
    def t(self) -> float:
        return self.estimate / self.se if self.se > 0 else float("nan")

    def p_greater(self) -> float:
        """One-sided p of estimate > 0 against t with ``df`` degrees of freedom."""
        return float(scipy_stats.t.sf(self.t, self.df)) if self.df > 0 and np.isfinite(self.t) else float("nan")

    def interval(self, level: float) -> tuple[float, float]:
        half = float(scipy_stats.t.ppf(0.5 + level / 2, self.df)) * self.se if self.df > 0 else float("nan")
        return self.estimate - half, self.estimate + half


def ols_cluster_robust(design: np.ndarray, responses: np.ndarray, clusters: np.ndarray,
                       column: int) -> list[CoefficientTest] | None:
    """OLS of each column of ``responses`` [n, m] on ``design`` [n, p] and the test of coefficient ``column``
    with the CR1 cluster-robust sandwich (Liang-Zeger with the small-sample factor G/(G-1) (n-1)/(n-p), as Stata
    and statsmodels' ``cov_type="cluster"``), referred to t with G - 1 degrees of freedom: rows of one cluster
    (tokens of one document) may be dependent in any way. One test per response; None when the design is
    rank-deficient or has fewer than two clusters."""
    x = np.asarray(design, dtype=np.float64)
    y = np.asarray(responses, dtype=np.float64).reshape(x.shape[0], -1)
    n, p = x.shape
    groups, cluster_of = np.unique(clusters, return_inverse=True)
    if groups.size < 2 or n <= p:
        return None
    gram = x.T @ x
    if np.linalg.cond(gram) > 1e12:
        return None
    bread = np.linalg.inv(gram)
    beta = bread @ (x.T @ y)  # [p, m]
    residual = y - x @ beta
    weights = bread[column] @ x.T  # [n]: row contributions to the coefficient's score
    scores = np.zeros((groups.size, y.shape[1]))
    np.add.at(scores, cluster_of, weights[:, None] * residual)
    factor = groups.size / (groups.size - 1) * (n - 1) / (n - p)
    variance = factor * (scores**2).sum(axis=0)
    partial_ss = 1.0 / bread[column, column]  # SS of the column partialled on the others
    return [CoefficientTest(float(b), float(np.sqrt(v)), int(groups.size - 1), float(b * b * partial_ss))
            for b, v in zip(beta[column], variance)]
