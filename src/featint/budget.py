"""The verdict as the budget grows: a scaling fit per kind and every comparison at every budget.

On a 2-core CPU the default budget is not converged (the standard SAE's test FVU falls ~2-4% per doubling), so
"is it converged?" is the wrong question for the verdict. The right one is whether **the comparison** moves as
the budget grows, and where it heads. The ``budget`` target trains ``budget.models`` at ``budget.factors`` x
``training.tokens`` (the 1x models are the default run's own), evaluates each on the test split, and here:

* fits L(T) = L_inf + A T^-alpha (L_inf >= 0, A >= 0) to each kind's test FVU against tokens, profiling alpha
  over a log grid of ``budget.alpha_range`` (a closed-form two-parameter fit for each alpha, then a finer grid
  around the best); a best alpha at an end of the range is flagged ``at_edge``: the data do not bend enough to
  place L_inf;
* compares every pair of :data:`featint.kinds.COMPARISONS` among the kinds, and each kind against ``standard``,
  at every budget (improvement = 1 - FVU / FVU of the reference, seed by seed, averaged over seeds) and in the
  limit (1 - L_inf / L_inf of the reference, and the difference of the two L_inf);
* gives every number an interval from one set of bootstrap replicates shared by every model, budget and seed
  (so all differences are paired): the test documents resampled, and at budgets with several seeds the seeds
  resampled too (the same seed draw for every model of that budget).

One tidy table (:func:`budget_table`), one figure (FVU against tokens, log x, the fits drawn).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featint import kinds, stats
from featint.errors import FeatintError
from featint.io import read_parquet_metadata
from featint.tables import BUDGET_SUMMARY, write_table

#: grid points of the coarse alpha profile (log-spaced over ``alpha_range``) and of the refinement around its best
COARSE_POINTS, FINE_POINTS = 160, 41


class BudgetError(FeatintError):
    """The budget tables are missing a model, seed or budget, or disagree on the test documents."""


@dataclass(frozen=True)
class ScalingFit:
    """L(T) = l_inf + a (T / T0)^-alpha, one fit per row of the curves given (row 0 the data itself)."""

    l_inf: np.ndarray  #: the asymptote (>= 0), [R]
    a: np.ndarray  #: the amplitude at T0 (>= 0), [R]
    alpha: np.ndarray  #: the exponent, [R]
    at_edge: np.ndarray  #: the best alpha of the coarse grid sits at an end of the range, [R]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The fitted curves at budgets ``x`` (in units of T0), [R, len(x)]."""
        return self.l_inf[:, None] + self.a[:, None] * np.asarray(x, float)[None, :] ** -self.alpha[:, None]


def _fixed_alpha(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of y ~ c + a z with c >= 0 and a >= 0 along the last axis (z, y [..., n]); returns c, a and
    the residual sum of squares. The constrained optimum is the unconstrained one when feasible, else the best
    one-parameter fit on a face (a = 0: c = mean y; c = 0: a = z.y / z.z)."""
    zm, ym = z.mean(-1, keepdims=True), y.mean(-1, keepdims=True)
    var = ((z - zm) ** 2).sum(-1)
    a = np.where(var > 0, ((z - zm) * (y - ym)).sum(-1) / np.where(var > 0, var, 1.0), 0.0)
    c = ym[..., 0] - a * zm[..., 0]
    flat = a < 0  # no decrease: a constant curve
    a, c = np.where(flat, 0.0, a), np.where(flat, ym[..., 0], c)
    through_zero = c < 0  # the asymptote would be negative: a pure power law
    a_zero = (z * y).sum(-1) / np.maximum((z * z).sum(-1), 1e-300)
    a, c = np.where(through_zero, np.maximum(a_zero, 0.0), a), np.where(through_zero, 0.0, c)
    sse = ((y - c[..., None] - a[..., None] * z) ** 2).sum(-1)
    return c, a, sse


def scaling_fit(x: np.ndarray, curves: np.ndarray, alpha_range: tuple[float, float] = (0.02, 3.0)) -> ScalingFit:
    """Fit L = l_inf + a x^-alpha to each row of ``curves`` [R, n] (or one curve [n]) at budgets ``x`` [n]
    (multiples of the default budget, so ``a`` is the excess over l_inf at 1x). Needs three distinct budgets."""
    x = np.asarray(x, float)
    curves = np.atleast_2d(np.asarray(curves, float))
    if np.unique(x).size < 3:
        raise BudgetError(f"the scaling fit needs three or more budgets, got {sorted(set(x.tolist()))}.")
    low, high = float(alpha_range[0]), float(alpha_range[1])
    grid = np.geomspace(low, high, COARSE_POINTS)
    z = x[None, None, :] ** -grid[None, :, None]  # [1, G, n]
    _, _, sse = _fixed_alpha(z, curves[:, None, :])
    best = sse.argmin(1)
    at_edge = (best == 0) | (best == grid.size - 1)
    # refine between the neighbours of each row's best grid point
    lo, hi = grid[np.maximum(best - 1, 0)], grid[np.minimum(best + 1, grid.size - 1)]
    fine = np.exp(np.log(lo)[:, None] + (np.log(hi) - np.log(lo))[:, None] * np.linspace(0, 1, FINE_POINTS)[None, :])
    c, a, sse = _fixed_alpha(x[None, None, :] ** -fine[:, :, None], curves[:, None, :])
    pick = sse.argmin(1)
    rows = np.arange(curves.shape[0])
    return ScalingFit(c[rows, pick], a[rows, pick], fine[rows, pick], at_edge)


@dataclass(frozen=True)
class BudgetInstance:
    """One trained model of the budget target: its kind, budget, seed and test-document sums."""

    model: str  #: the kind
    factor: float  #: multiple of training.tokens
    seed: int  #: the training seed
    tokens: int  #: tokens it was trained on
    lr: float  #: the learning rate it was trained with
    documents: pd.DataFrame  #: per-document sums of squares of its final reconstruction (selected tokens, test)


def load_instances(documents: list[str | Path], logs: list[str | Path]) -> list[BudgetInstance]:
    """Pair each evaluation's per-document table with its training log (the same order): the kind and seed from
    the log, the budget factor and LR from the log's metadata."""
    if len(documents) != len(logs):
        raise BudgetError(f"{len(documents)} document tables but {len(logs)} train logs; pass one of each per "
                          "trained model, in the same order.")
    out = []
    for doc_path, log_path in zip(documents, logs):
        log, meta = pd.read_parquet(log_path, columns=["model", "seed", "tokens"]), read_parquet_metadata(log_path)
        if "budget_factor" not in meta:
            raise BudgetError(f"{log_path} has no budget_factor in its metadata; retrain it with this version.")
        frame = pd.read_parquet(doc_path)
        frame = frame[(frame["split"] == "test") & (frame["token_set"] == "selected")]
        model, seed = str(log["model"].iloc[0]), int(log["seed"].iloc[0])
        if set(frame["model"]) != {model} or set(frame["seed"]) != {seed}:
            raise BudgetError(f"{doc_path} is not the evaluation of {model} seed {seed} ({log_path}); pass the "
                              "document tables and logs in the same order.")
        final = frame[frame["component"] == kinds.final_component(model)]
        out.append(BudgetInstance(model, float(meta["budget_factor"]), seed, int(log["tokens"].max()),
                                  float(meta["lr"]), final[["doc_id", "tokens", "sse", "sst"]]))
    return out


class _Replicates:
    """Bootstrap replicates of each (model, factor)'s seed-mean test FVU and of each seed's FVU: row 0 the data,
    rows 1..B the test documents resampled (one draw for every model, budget and seed) and, at budgets with
    several seeds, the seeds resampled (one draw per budget, shared by its models)."""

    def __init__(self, instances: list[BudgetInstance], n_boot: int, seed: int) -> None:
        from featint import stats

        doc_sets = {tuple(np.sort(i.documents["doc_id"].to_numpy())) for i in instances}
        if len(doc_sets) != 1:
            raise BudgetError("the budget's evaluations cover different test documents; rerun them on one "
                              "activations folder.")
        self.doc_ids = np.asarray(next(iter(doc_sets)))
        weights = stats.nested_cluster_bootstrap_weights(self.doc_ids, n_boot, seed)
        self.per_seed: dict[tuple[str, float, int], np.ndarray] = {}
        for i in instances:
            table = i.documents.set_index("doc_id").reindex(self.doc_ids)
            self.per_seed[(i.model, i.factor, i.seed)] = (weights @ table["sse"].to_numpy()) / \
                (weights @ table["sst"].to_numpy())
        self.models = sorted({i.model for i in instances})
        self.factors = sorted({i.factor for i in instances})
        self.seeds: dict[float, list[int]] = {}
        for factor in self.factors:
            by_model = {m: sorted(s for (mm, f, s) in self.per_seed if mm == m and f == factor) for m in self.models}
            if len({tuple(v) for v in by_model.values()}) != 1 or not next(iter(by_model.values())):
                raise BudgetError(f"at {factor:g}x the models were trained on different seeds ({by_model}); train "
                                  "every budget.models kind on the same seeds.")
            self.seeds[factor] = next(iter(by_model.values()))
        rng = np.random.default_rng(seed + 1)
        self.seed_draws = {}
        for factor, seeds in self.seeds.items():
            draws = np.tile(np.arange(len(seeds)), (n_boot + 1, 1))
            if len(seeds) > 1:
                draws[1:] = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
            self.seed_draws[factor] = draws
        self.n_boot = n_boot

    def seed_mean(self, values: dict[int, np.ndarray], factor: float) -> np.ndarray:
        """The mean over the (resampled) seeds of per-seed replicates ``values`` at ``factor``, [1 + B]."""
        stacked = np.stack([values[s] for s in self.seeds[factor]], axis=1)  # [1 + B, seeds]
        return np.take_along_axis(stacked, self.seed_draws[factor], axis=1).mean(1)

    def fvu(self, model: str, factor: float) -> np.ndarray:
        return self.seed_mean({s: self.per_seed[(model, factor, s)] for s in self.seeds[factor]}, factor)

    def improvement(self, model: str, reference: str, factor: float) -> np.ndarray:
        """1 - FVU(model) / FVU(reference), seed by seed, averaged over the (resampled) seeds."""
        return self.seed_mean({s: stats.improvement(self.per_seed[(model, factor, s)],
                                                    self.per_seed[(reference, factor, s)])
                               for s in self.seeds[factor]}, factor)

    def seed_sd(self, model: str, reference: str | None, factor: float) -> float:
        """The sd over seeds of the point estimate (FVU, or the improvement), NaN with one seed."""
        seeds = self.seeds[factor]
        if len(seeds) < 2:
            return float("nan")
        values = [self.per_seed[(model, factor, s)][0] if reference is None else
                  stats.improvement(self.per_seed[(model, factor, s)][0], self.per_seed[(reference, factor, s)][0])
                  for s in seeds]
        return float(np.std(values, ddof=1))


def budget_table(instances: list[BudgetInstance], alpha_range: tuple[float, float], n_boot: int, level: float,
                 seed: int) -> pd.DataFrame:
    """The tidy budget table: one row per quantity, model, reference and factor, with its estimate and
    percentile interval. Quantities: ``fvu`` and ``lr`` per budget; ``improvement_mse`` per budget for every
    comparison, and ``improvement_moved`` (largest budget minus 1x, ``moved`` when beyond the seed sd at 1x);
    per kind the fit's ``l_inf``, ``a``, ``alpha`` and ``fvu_change_per_doubling`` (of the fitted curve at the
    largest budget); per comparison ``l_inf_improvement`` (1 - L_inf / L_inf of the reference) and
    ``l_inf_difference`` (L_inf of the reference minus the model's)."""
    from featint.stats import percentile_interval

    rep = _Replicates(instances, n_boot, seed)
    factors = np.asarray(rep.factors)
    base_tokens = {i.factor: i.tokens for i in instances}
    lrs = {(i.model, i.factor): i.lr for i in instances}
    rows: list[dict[str, object]] = []

    def add(quantity: str, model: str, reference: str | None, factor: float | None, replicates: np.ndarray,
            **extra: object) -> None:
        interval = percentile_interval(replicates, level)
        rows.append({"quantity": quantity, "model": model, "reference": reference,
                     "factor": np.nan if factor is None else factor,
                     "tokens": base_tokens[factor] if factor is not None else pd.NA,
                     "n_seeds": len(rep.seeds[factor]) if factor is not None else min(map(len, rep.seeds.values())),
                     "estimate": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
                     "seed_sd": np.nan, "at_edge": pd.NA, "moved": pd.NA, **extra})

    fits = {}
    for model in rep.models:
        curves = np.stack([rep.fvu(model, f) for f in rep.factors], axis=1)  # [1 + B, factors]
        for j, factor in enumerate(rep.factors):
            add("fvu", model, None, factor, curves[:, j], seed_sd=rep.seed_sd(model, None, factor))
            rows.append({**rows[-1], "quantity": "lr", "estimate": lrs[(model, factor)], "ci_low": np.nan,
                         "ci_high": np.nan, "seed_sd": np.nan})
        fit = fits[model] = scaling_fit(factors, curves, alpha_range)
        edge = bool(fit.at_edge[0])
        for name, values in (("l_inf", fit.l_inf), ("a", fit.a), ("alpha", fit.alpha)):
            add(name, model, None, None, values, at_edge=edge)
        last = factors.max()
        pair = fit.predict(np.array([last, 2 * last]))
        add("fvu_change_per_doubling", model, None, None, pair[:, 1] / pair[:, 0] - 1.0, at_edge=edge)
    for model, reference, _term in kinds.comparisons(rep.models):
        for factor in rep.factors:
            add("improvement_mse", model, reference, factor, rep.improvement(model, reference, factor),
                seed_sd=rep.seed_sd(model, reference, factor))
        first, last = rep.factors[0], rep.factors[-1]
        moved = rep.improvement(model, reference, last) - rep.improvement(model, reference, first)
        spread = rep.seed_sd(model, reference, first)
        add("improvement_moved", model, reference, last, moved, seed_sd=spread,
            moved=bool(np.isfinite(spread) and abs(moved[0]) > spread))
        edge = bool(fits[model].at_edge[0] or fits[reference].at_edge[0])
        # relative to the reference's asymptote; undefined (NaN) in replicates where that asymptote is ~0 (< 1e-4)
        ref_l_inf = fits[reference].l_inf
        relative = stats.improvement(fits[model].l_inf, np.where(ref_l_inf > 1e-4, ref_l_inf, np.nan))
        add("l_inf_improvement", model, reference, None, relative, at_edge=edge)
        add("l_inf_difference", model, reference, None, fits[reference].l_inf - fits[model].l_inf, at_edge=edge)
    frame = pd.DataFrame(rows)
    frame["n_documents"] = int(rep.doc_ids.size)
    frame["n_bootstrap"] = n_boot
    for column in ("at_edge", "moved"):
        frame[column] = frame[column].astype("boolean")
    frame["tokens"] = frame["tokens"].astype("Int64")
    return frame


def run_budget(documents: list[str | Path], logs: list[str | Path], alpha_range: tuple[float, float], n_boot: int,
               level: float, seed: int, out_path: str | Path, figure_path: str | Path) -> pd.DataFrame:
    """Stage entry point: :func:`budget_table` of the evaluations and logs, and its figure."""
    from featint import plots

    instances = load_instances(documents, logs)
    table = budget_table(instances, alpha_range, n_boot, level, seed)
    write_table(table, out_path, BUDGET_SUMMARY)
    plots.budget_curves(table, figure_path)
    return table
