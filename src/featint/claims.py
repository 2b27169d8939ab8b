"""The paper's headline claims beside our numbers: one row per claim, each of our values read from a Parquet
artefact of an upstream rule (never typed), under the paper's definition and under the corrected one.

The paper's values live in ``config/paper_claims.tsv`` (with the section of the reading in PAPER_SPEC they come
from). Intervals: bootstrap CIs over test documents (and, for behaviour, their windows) for reconstruction
improvements and behavioural claims (mean over seeds), the range over seeds for the
others (``interval`` says which).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd

from featint import kinds
from featint.errors import FeatintError
from featint.io import atomic_path
from featint.kinds import COMPARISONS
from featint.layout import ReportFolder
from featint.tables import (
    BEHAVIOUR_SUMMARY,
    CLAIMS_TABLE,
    CLAMP_STATISTICS,
    COMPARISON_TABLE,
    CONVERGENCE_SUMMARY,
    DELTA_VS_PIPELINE,
    DOCUMENT_WINDOW_BOOTSTRAP,
    GEOMETRY_SUMMARY,
    INTEGRATION_SUMMARY,
    KINDS_BY_PARAMETERS,
    PARAMETERS,
    RECONSTRUCTION,
    RECONSTRUCTION_SUMMARY,
    SELECTED_SECONDARY,
    SENTENCE_INTERACTION,
    WORD_INTERACTION,
    read_table,
    write_table,
)


class ClaimsError(FeatintError):
    """The paper-claims table or an upstream artefact is missing or malformed."""


#: The tables the claims read, by field of :class:`Artefacts`, and the rule that writes each; the first eight
#: every run has, the others only when the run has that part (an optional table not handed over is empty).
TABLES = {
    "reconstruction": "gather_reconstruction: metrics/reconstruction.parquet (per seed)",
    "reconstruction_summary": "gather_reconstruction: metrics/reconstruction_summary.parquet (documents, tokens)",
    "parameters": "gather_reconstruction: metrics/parameters.parquet",
    "comparisons": "gather_reconstruction: metrics/comparisons.parquet (each term against its control)",
    "geometry": "gather_geometry: geometry/summary.parquet",
    "behaviour": "gather_behaviour: behaviour/summary.parquet",
    "interventions": "gather_interventions: interventions/summary.parquet",
    "clamps": "gather_interventions: interventions/clamp_statistics.parquet",
    "convergence": "convergence: convergence/summary.parquet (when convergence.models is set)",
    "integration": "gather_integration: integration/summary.parquet (the claims row dual_encoding)",
    "replication": "gather_integration: integration/replication.parquet",
    "planted_power": "a planted control's integration_power.parquet (integration.planted_power)",
    "budget": "budget_summary: budget/summary.parquet (the claims row budget_extrapolated)",
}
#: the inputs whose columns featint.tables declares: checked on reading, so a table an earlier version wrote
#: stops with the table, file and column named instead of a KeyError deep in an extractor
DECLARED = {"reconstruction": RECONSTRUCTION, "reconstruction_summary": RECONSTRUCTION_SUMMARY,
            "parameters": PARAMETERS, "comparisons": COMPARISON_TABLE, "geometry": GEOMETRY_SUMMARY,
            "behaviour": BEHAVIOUR_SUMMARY, "clamps": CLAMP_STATISTICS, "convergence": CONVERGENCE_SUMMARY,
            "integration": INTEGRATION_SUMMARY}
REQUIRED_TABLES = ("reconstruction", "reconstruction_summary", "parameters", "comparisons", "geometry", "behaviour",
                   "interventions", "clamps")


@dataclass
class Artefacts:
    """The upstream tables, one field per entry of :data:`TABLES`."""

    reconstruction: pd.DataFrame
    parameters: pd.DataFrame
    geometry: pd.DataFrame
    behaviour: pd.DataFrame
    interventions: pd.DataFrame
    clamps: pd.DataFrame
    reconstruction_summary: pd.DataFrame
    comparisons: pd.DataFrame
    convergence: pd.DataFrame = field(default_factory=pd.DataFrame)
    integration: pd.DataFrame = field(default_factory=pd.DataFrame)
    replication: pd.DataFrame = field(default_factory=pd.DataFrame)
    planted_power: pd.DataFrame = field(default_factory=pd.DataFrame)
    budget: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def load(cls, paths: Mapping[str, str | Path | None]) -> Artefacts:
        """The tables at ``paths`` (a :data:`TABLES` name -> its file) and nothing else: the claims rule hands
        over every file it declares, so a table left on disk by an earlier config (a stale convergence summary)
        is never read."""
        unknown = sorted(set(paths) - set(TABLES))
        if unknown:
            raise ClaimsError(f"unknown claims inputs {unknown}; the claims read {sorted(TABLES)}.")
        frames = {}
        for name, source in TABLES.items():
            path = paths.get(name)
            if path is None:
                if name in REQUIRED_TABLES:
                    raise ClaimsError(f"the claims need the {name} table ({source}); pass "
                                      f"--{name.replace('_', '-')}.")
                continue
            if not Path(path).is_file():
                raise ClaimsError(f"{path} does not exist; run the rule that writes it ({source}) or leave it "
                                  "out if it is optional.")
            frames[name] = read_table(path, DECLARED[name]) if name in DECLARED else pd.read_parquet(path)
        return cls(**frames)


@dataclass
class Ours:
    paper_definition: float
    corrected: float
    low: float
    high: float
    interval: str
    seeds: int
    corrected_definition: str
    note: str


def _range(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return (float(values.min()), float(values.max())) if values.size else (float("nan"), float("nan"))


def _seed_values(frame: pd.DataFrame, **where: object) -> np.ndarray:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        mask &= (frame[column] == value).to_numpy()
    return frame.loc[mask].sort_values("seed")["value"].to_numpy(dtype=np.float64)


def _against(frame: pd.DataFrame, reference: str | None) -> pd.Series:
    """Rows comparing with ``reference`` (None: rows that compare with nothing)."""
    return frame["reference"].isna() if reference is None else frame["reference"] == reference


class Reader:
    """Small accessors over the artefacts (test split, ``selected`` tokens, pooled seeds)."""

    def __init__(self, artefacts: Artefacts) -> None:
        self.a = artefacts

    def recon(self, model: str, metric: str, component: str = "model", reference: str | None = None) -> np.ndarray:
        frame = self.a.reconstruction
        frame = frame[(frame["split"] == "test") & (frame["token_set"] == "selected") & _against(frame, reference)]
        return _seed_values(frame, model=model, metric=metric, component=component)

    def recon_interval(self, model: str, metric: str, component: str = "model",
                       reference: str | None = None) -> tuple[float, float, float, int]:
        """(mean over seeds, CI low, CI high, seeds) of the document bootstrap in the reconstruction summary."""
        frame = self.a.reconstruction_summary
        row = frame[(frame["split"] == "test") & (frame["token_set"] == "selected") & (frame["model"] == model)
                    & (frame["metric"] == metric) & (frame["component"] == component) & _against(frame, reference)]
        if row.empty:
            return float("nan"), float("nan"), float("nan"), 0
        r = row.iloc[0]
        return float(r["mean"]), float(r.get("ci_low", np.nan)), float(r.get("ci_high", np.nan)), int(r["n_seeds"])

    def recon_basis(self) -> str:
        frame = self.a.reconstruction_summary
        row = frame[(frame["split"] == "test") & (frame["token_set"] == "selected")]
        if row.empty or "n_documents" not in row.columns:
            return ""
        return f"{int(row['n_documents'].iloc[0])} test documents, {int(row['n_tokens'].iloc[0]):,} tokens"

    def behaviour_basis(self) -> str:
        frame = self.a.behaviour
        row = frame[frame["method"] == DOCUMENT_WINDOW_BOOTSTRAP]
        if row.empty:
            return ""
        r = row.iloc[0]
        return (f"{int(r['n_documents'])} test documents, {int(r['n_windows'])} windows, "
                f"{int(r['n_tokens']):,} spliced tokens")

    def behaviour(self, model: str, condition: str, metric: str,
                  reference: str | None = None) -> tuple[float, float, float, int]:
        frame = self.a.behaviour
        row = frame[(frame["model"] == model) & (frame["condition"] == condition) & (frame["metric"] == metric)
                    & _against(frame, reference) & frame["seed"].isna()
                    & (frame["method"] == DOCUMENT_WINDOW_BOOTSTRAP)]
        if row.empty:
            return float("nan"), float("nan"), float("nan"), 0
        r = row.iloc[0]
        return float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"]), int(r["n_seeds"])

    def geometry(self, model: str, metric: str, subset: str | None = "all") -> np.ndarray:
        where = {"model": model, "metric": metric} | ({} if subset is None else {"subset": subset})
        return _seed_values(self.a.geometry, **where)

    def parameter_share(self, model: str, components: tuple[str, ...]) -> float:
        frame = self.a.parameters[self.a.parameters["model"] == model]
        first_seed = frame[frame["seed"] == frame["seed"].min()].set_index("component")["parameters"]
        return float(first_seed[list(components)].sum() / first_seed["total"])

    def intervention(self, model: str, quantity: str, column: str = "value", **where: str) -> np.ndarray:
        """``column`` of the intervention summary's ``quantity`` rows of ``model``, per seed, where each column
        of ``where`` (role, sentences, effect, ...) has its value."""
        frame = self.a.interventions
        rows = frame[(frame["model"] == model) & (frame["quantity"] == quantity)]
        for key, value in where.items():
            rows = rows[rows[key] == value]
        return rows.sort_values("seed")[column].to_numpy(dtype=np.float64)

    def clamp(self, model: str, test: str, value: float, column: str) -> np.ndarray:
        frame = self.a.clamps
        rows = frame[(frame["model"] == model) & (frame["role"] == SELECTED_SECONDARY) & (frame["mode"] == "multiply")
                     & (frame["value"] == value) & (frame["reference"] == DELTA_VS_PIPELINE) & (frame["test"] == test)
                     & (frame["effect"].isin([WORD_INTERACTION]))].sort_values("seed")
        return rows[column].to_numpy(dtype=np.float64)


#: what a claim's numbers rest on: held-out reconstruction tokens, spliced behaviour windows, the stimuli, or the
#: trained weights themselves
Basis = Literal["reconstruction", "behaviour", "stimuli", "weights"]


@dataclass(frozen=True)
class Claim:
    """One claim of ``config/paper_claims.tsv``: what it reads, how, and what its numbers rest on."""

    id: str  #: its ``claim_id`` in ``config/paper_claims.tsv``
    reads: tuple[str, ...]  #: the :data:`TABLES` its extractor reads (a unit test checks it reads no other)
    basis: Basis  #: the held-out data its numbers rest on (the table's ``rests_on``)
    extract: Callable[[Reader], Ours]  #: our values under the paper's definition and the corrected one

    def rests_on(self, r: Reader) -> str:
        """The held-out data the claim's numbers rest on, counted from the artefacts."""
        if self.basis == "reconstruction":
            return r.recon_basis()
        if self.basis == "behaviour":
            return r.behaviour_basis()
        if self.basis == "stimuli":
            return "held-out test sentences and prompts of config/stimuli (see interventions/summary.parquet)"
        return "trained weights (and train tokens for firing statistics)"


#: every claim by id, in registration order (each registered next to its extractor)
CLAIMS: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    """Add ``claim`` to :data:`CLAIMS` (an id registered twice or a table not in :data:`TABLES` is an error)."""
    if claim.id in CLAIMS:
        raise ValueError(f"claim {claim.id!r} registered twice")
    unknown = sorted(set(claim.reads) - set(TABLES))
    if unknown:
        raise ValueError(f"claim {claim.id!r} reads unknown tables {unknown}; the claims read {sorted(TABLES)}")
    CLAIMS[claim.id] = claim
    return claim


def claim(claim_id: str, reads: tuple[str, ...], basis: Basis) -> Callable[[Callable[[Reader], Ours]],
                                                                           Callable[[Reader], Ours]]:
    """Decorator: register the decorated extractor as claim ``claim_id``."""
    def decorate(extract: Callable[[Reader], Ours]) -> Callable[[Reader], Ours]:
        register(Claim(claim_id, reads, basis, extract))
        return extract

    return decorate


#: the clamp value of the paper's clamping claims (PAPER_SPEC section 8: F = 5.06, p = 0.027 at clamp -4.0)
PAPER_CLAMP = -4.0


def _bimodality_note(r: Reader) -> str:
    """Which models' decoder squared norms are bimodal, read from the geometry verdicts."""
    parts = []
    for model in ("joint", "joint_no_interaction", "joint_no_linear", "standard"):
        verdicts = r.geometry(model, "verdict_bimodal")
        if verdicts.size:
            parts.append(f"{model} {int(verdicts.sum())}/{verdicts.size}")
    return ("paper def. = the mixture components' means; seeds called bimodal (two density peaks and Ashman's "
            "D > 2): " + ", ".join(parts))


def _seeds(paper: np.ndarray, corrected: np.ndarray, corrected_definition: str, note: str) -> Ours:
    low, high = _range(corrected)
    return Ours(float(np.mean(paper)) if paper.size else float("nan"),
                float(np.mean(corrected)) if corrected.size else float("nan"), low, high, "range over seeds",
                int(corrected.size), corrected_definition, note)


def _combined_p(paper: np.ndarray, corrected: np.ndarray, corrected_definition: str, note: str) -> Ours:
    """p / q values of several seeds: never averaged. Both columns hold the intersection-union combination
    (the largest value: every seed must pass), valid whatever the dependence between seeds (they share the
    stimuli); the per-seed values go into the note."""
    low, high = _range(corrected)
    per_seed = ", ".join(_fmt(v) for v in corrected)
    paper_seeds = ", ".join(_fmt(v) for v in paper)
    return Ours(float(np.max(paper)) if paper.size else float("nan"),
                float(np.max(corrected)) if corrected.size else float("nan"), low, high, "range over seeds",
                int(corrected.size), corrected_definition,
                f"{note}; per seed: paper p {paper_seeds}; corrected q {per_seed}; combined = max over seeds")


def _documents(paper: np.ndarray, corrected: tuple[float, float, float, int], corrected_definition: str,
               note: str) -> Ours:
    return Ours(float(np.mean(paper)) if paper.size else float("nan"), corrected[0], corrected[1], corrected[2],
                "95% CI, bootstrap over test documents, mean over seeds", corrected[3], corrected_definition, note)


def _bootstrap(paper: tuple[float, float, float, int], corrected: tuple[float, float, float, int],
               corrected_definition: str, note: str) -> Ours:
    return Ours(paper[0], corrected[0], corrected[1], corrected[2],
                "95% CI, bootstrap over test documents and their windows, mean over seeds",
                corrected[3], corrected_definition, note)


HELD_OUT = "test split, BOS and massive-norm tokens excluded"


def _nonlinear_share(r: Reader) -> Ours:
    own_full = r.behaviour("joint", "full", "improvement_kl", "own_sae")[0]
    own_interaction = r.behaviour("joint", "sae+interaction", "improvement_kl", "own_sae")[0]
    standard = r.behaviour("standard", "sae", "mean_kl")[0]
    joint = r.behaviour("joint", "full", "mean_kl")[0]
    without = r.behaviour("joint_no_interaction", "full", "mean_kl")[0]
    gain = standard - joint
    corrected = (without - joint) / gain if gain > 0 else float("nan")
    note = ("share of the joint model's KL gain over the standard SAE that the interaction pathway adds "
            "(joint vs joint_no_interaction); NaN when the joint model is no better than the standard SAE")
    return Ours(own_interaction / own_full, corrected, float("nan"), float("nan"), "point estimate", 0,
                "(KL(joint_no_interaction) - KL(joint)) / (KL(standard) - KL(joint))", note)


@claim("budget_convergence", ("convergence",), "reconstruction")
def _convergence(r: Reader) -> Ours:
    table = r.a.convergence
    if table.empty:
        return Ours(float("nan"), float("nan"), float("nan"), float("nan"), "not run", 0, "",
                    "convergence.models is empty: the check did not run")
    fvu = table[table["quantity"] == "test_fvu"]
    largest = float(fvu["change"].abs().max())
    parts = [f"{row.model} test FVU {row.change:+.2%}" for row in fvu.itertuples()]
    parts += [f"{row.model} {row.quantity} {row.change:+.4f} (seed sd {row.threshold:.4f})"
              for row in table[table["quantity"] != "test_fvu"].itertuples()]
    factor = int(table["tokens_longer"].iloc[0]) / int(table["tokens_default"].iloc[0])
    # both halves stated: does the FVU still fall (per doubling), and did the comparison move beyond its seed sd?
    doublings = float(np.log2(factor))
    falling = [f"{row.model} test FVU {row.change:+.2%} ({(1 + row.change) ** (1 / doublings) - 1:+.2%} per doubling"
               f"{', still falling' if not row.passes else ''})" for row in fvu.itertuples()]
    moved = [f"{row.model} vs {row.reference} improvement moved {row.change * 100:+.2f} points, "
             f"{'within' if row.passes else 'beyond'} its seed sd ({row.threshold * 100:.2f})"
             for row in table[table["quantity"] != "test_fvu"].itertuples()]
    return Ours(float("nan"), largest, float("nan"), float("nan"), "point estimate (one seed)", 1,
                f"largest |relative change| of test FVU when the budget is multiplied by {factor:g} "
                f"({int(table['tokens_default'].iloc[0]):,} -> {int(table['tokens_longer'].iloc[0]):,} tokens)",
                "; ".join(falling + moved) + "; see the budget target for the trend")


@claim("budget_extrapolated", ("budget",), "reconstruction")
def _budget_extrapolated(r: Reader) -> Ours:
    """The comparison at an infinite budget: 1 - L_inf(joint) / L_inf(standard) of the budget target's fits."""
    table = r.a.budget
    if table.empty:
        return Ours(float("nan"), float("nan"), float("nan"), float("nan"), "not run", 0, "",
                    "the budget target did not run (snakemake --cores 8 budget writes budget/report/claims.*)")

    def row(quantity: str, model: str, reference: str | None = None) -> pd.Series:
        hit = table[(table["quantity"] == quantity) & (table["model"] == model)
                    & ((table["reference"] == reference) if reference else table["reference"].isna())]
        if hit.empty:
            raise ClaimsError(f"budget/summary.parquet has no {quantity} of {model} vs {reference}; list both "
                              "in budget.models.")
        return hit.iloc[0]

    main = row("l_inf_improvement", "joint", "standard")
    others = [f"vs {ref} {row('l_inf_improvement', 'joint', ref)['estimate']:+.2%} "
              f"[{row('l_inf_improvement', 'joint', ref)['ci_low']:+.2%}, "
              f"{row('l_inf_improvement', 'joint', ref)['ci_high']:+.2%}]"
              for ref in ("param_matched", "joint_no_interaction")
              if ((table["reference"] == ref) & (table["model"] == "joint")).any()]
    l_inf = "; ".join(f"L_inf {m} {row('l_inf', m)['estimate']:.4f}" for m in sorted(set(
        table.loc[table["quantity"] == "l_inf", "model"])))
    factors = sorted(table["factor"].dropna().unique())
    edge = (" (an exponent at the edge of budget.alpha_range: L_inf is not placed by the data)"
            if bool(table["at_edge"].fillna(False).any()) else "")
    return Ours(float("nan"), float(main["estimate"]), float(main["ci_low"]), float(main["ci_high"]),
                "95% bootstrap (test documents, seeds where several)", int(main["n_seeds"]),
                "1 - L_inf(joint) / L_inf(standard) of L(T) = L_inf + A T^-alpha fitted to test FVU at "
                f"{', '.join(f'{f:g}' for f in factors)} x the default budget",
                f"joint {', '.join(others)}; {l_inf}{edge}")


#: code-based nonlinear models and the linear control they are compared with at equal parameters
LINEAR_CONTROL = "sequential_linear_input"
CODE_NONLINEAR = tuple(c.model for c in COMPARISONS if c.reference == LINEAR_CONTROL)


@claim("nonlinear_vs_linear_control", ("comparisons",), "reconstruction")
def _nonlinear_vs_linear(r: Reader) -> Ours:
    """The best (lowest pooled test FVU) code-based nonlinear head against the linear control with the same
    parameter count, both on the same frozen standard SAE: 1 - MSE(best nonlinear) / MSE(linear control)."""
    frame = r.a.comparisons
    rows = frame[(frame["split"] == "test") & (frame["token_set"] == "selected") & frame["seed"].isna()
                 & (frame["reference"] == LINEAR_CONTROL) & frame["model"].isin(CODE_NONLINEAR)]
    if rows.empty:
        return Ours(float("nan"), float("nan"), float("nan"), float("nan"), "not run", 0, "",
                    f"the run trains none of {list(CODE_NONLINEAR)} beside {LINEAR_CONTROL}")
    best = rows.sort_values("estimate", ascending=False).iloc[0]
    others = "; ".join(f"{row.model} {row.estimate:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
                       for row in rows.itertuples())
    return Ours(float("nan"), float(best["estimate"]), float(best["ci_low"]), float(best["ci_high"]),
                "95% CI, bootstrap over test documents, mean over seeds", int(best["n_seeds"]),
                f"1 - MSE({best['model']}) / MSE({LINEAR_CONTROL}): the best head nonlinear in the codes vs a "
                f"linear map of x, same frozen SAE and linear code term, {int(best['model_parameters']):,} vs "
                f"{int(best['reference_parameters']):,} parameters",
                f"every code-based head vs the linear control: {others}")


def _planted_power_note(power: pd.DataFrame, target: str) -> str:
    """The planted control's power and calibration on ``target``, as a sentence (or why there is none)."""
    if power.empty:
        return ("planted-control power not stated: set integration.planted_power to a planted run's "
                "integration_power.parquet (config/synthetic.yaml)")
    data = power[(power["data"] == "data") & (power["target"] == target)]
    planted = data[data["strength"] > 0]
    parts = [f"{row.variant} c={row.strength:g}: {row.power:.2f}" for row in planted.itertuples()]
    null = data[data["strength"] == 0]
    return (f"planted-control power on the {target} (share of planted pairs flagged): " + ", ".join(parts)
            + f"; decoy pairs flagged at most {data['decoy_flagged_share'].max():.2f}; at c=0 (nothing planted, "
            f"every flag false) {null['pairs_flagged'].mean():.1f} of {null['pairs_tested'].mean():.0f} pairs "
            f"flagged on average and {null['any_flagged'].mean():.2f} of runs flag any (nominal at most the FDR)")


@claim("dual_encoding", ("integration", "replication", "planted_power"), "reconstruction")
def _dual_encoding(r: Reader, target: str = "residual") -> Ours:
    """The pair product test on the standard SAE: share of tested co-active latent pairs flagged on the data,
    beside what the no-interaction surrogates flag, replication across seeds and the planted control's power."""
    summary = r.a.integration
    if summary.empty:
        return Ours(float("nan"), float("nan"), float("nan"), float("nan"), "not run", 0, "",
                    "the run does not run the pair product test (integration.models is empty)")
    model = "standard" if "standard" in set(summary["model"]) else str(summary["model"].iloc[0])
    mine = summary[(summary["model"] == model) & (summary["target"] == target)]
    data, null = mine[mine["data"] == "data"].sort_values("seed"), mine[mine["data"] == "surrogate"]
    shares = data["flagged_share"].to_numpy(dtype=np.float64)
    low, high = _range(shares)
    note = (f"surrogates (no pairwise term) flag {null['flagged_share'].mean():.3f} of the same pairs; "
            f"flagged terms explain at most {data['flagged_explained_share'].mean():.2e} of the {target}'s test "
            f"sum of squares")
    replication = r.a.replication
    if not replication.empty:
        rep = replication[(replication["model"] == model) & (replication["target"] == target)]
        tested, replicated = int(rep["tested_there"].sum()), int(rep["replicated"].sum())
        note += (f"; replication: {int(rep['matched'].sum())} of {int(rep['flagged'].sum())} flagged pairs have "
                 f"both latents matched in another seed, {tested} of those were tested there and {replicated} "
                 f"flagged again (base rate {rep['base_rate'].mean():.2f})")
    note += "; " + _planted_power_note(r.a.planted_power, target)
    pairs = int(data["pairs_tested"].mean()) if len(data) else 0
    return Ours(float("nan"), float(shares.mean()), low, high, "range over seeds", len(shares),
                f"share of the {pairs} co-active latent pairs of the {model} SAE flagged (BH q <= FDR) by the "
                f"held-out pair product test on the {target}, referred to surrogate activations with no "
                f"pairwise term", note)


def _paper_clamp(r: Reader, test: str, column: str) -> np.ndarray:
    """``column`` of the clamp statistics of ``test`` at the paper's clamp multiplier."""
    return r.clamp("sequential", test, PAPER_CLAMP, column)


register(Claim("sae_variance_explained", ("reconstruction",), "reconstruction", lambda r: _seeds(
    r.recon("standard", "variance_explained_paper", "sae"), 1.0 - r.recon("standard", "fvu", "sae"),
    "1 - FVU (uncentred residual, normalised space), " + HELD_OUT,
    "paper: training batches; ours: held-out text with a smaller model and budget")))
register(Claim("sequential_error_reduction", ("reconstruction", "reconstruction_summary"), "reconstruction",
               lambda r: _documents(
                   r.recon("sequential_truncated", "improvement_mse", reference="own_sae"),
                   r.recon_interval("sequential", "improvement_mse", reference="standard"),
                   "1 - MSE(sequential, SAE at its trained k) / MSE(standalone standard SAE)",
                   "the paper's figure needs the SAE run at k/4 (sequential_truncated); at its trained k the NFM "
                   "gains less")))
register(Claim("sequential_linear_share", ("reconstruction",), "reconstruction", lambda r: _seeds(
    r.recon("sequential", "linear_share"), r.recon("sequential", "linear_share"),
    "same definition, " + HELD_OUT, "output magnitudes; the definitions agree")))
register(Claim("joint_improvement", ("reconstruction", "reconstruction_summary"), "reconstruction",
               lambda r: _documents(
                   r.recon("joint", "improvement_mse", reference="own_sae"),
                   r.recon_interval("joint", "improvement_mse", reference="standard"),
                   "1 - MSE(joint) / MSE(independently trained standard SAE, same seed, budget, data)",
                   "the paper compares with the joint model's own ablated SAE path, which alone is a poor SAE")))
register(Claim("joint_linear_share", ("reconstruction",), "reconstruction", lambda r: _seeds(
    r.recon("joint", "linear_share"), r.recon("joint", "linear_share"),
    "same definition, " + HELD_OUT, "output magnitudes; the definitions agree")))
register(Claim("sae_pathology_ratio", ("behaviour",), "behaviour", lambda r: _bootstrap(
    r.behaviour("standard", "sae", "pathology_ratio", "epsilon_own_norm"),
    r.behaviour("standard", "sae", "pathology_ratio", "epsilon_own_norm"),
    "KL(SAE) / KL(epsilon at the SAE's own error norm), spliced at the training hook with the normaliser, "
    "test text",
    "the paper spliced one layer off without normalisation on training text")))
register(Claim("sequential_pathology_ratio", ("behaviour",), "behaviour", lambda r: _bootstrap(
    r.behaviour("sequential", "full", "pathology_ratio", "epsilon_sae_norm"),
    r.behaviour("sequential", "full", "pathology_ratio", "epsilon_own_norm"),
    "KL(full) / KL(epsilon at the full model's own error norm)",
    "the paper's epsilon used the SAE's error norm for every condition")))
register(Claim("sequential_kl_reduction", ("behaviour",), "behaviour", lambda r: _bootstrap(
    r.behaviour("sequential", "sae+linear", "improvement_kl", "own_sae"),
    r.behaviour("sequential", "full", "improvement_kl", "standard"),
    "1 - KL(sequential full) / KL(standalone standard SAE)",
    "the sequential model's SAE path is the standard SAE, so both references coincide")))
register(Claim("joint_kl_reduction", ("behaviour",), "behaviour", lambda r: _bootstrap(
    r.behaviour("joint", "full", "improvement_kl", "own_sae"),
    r.behaviour("joint", "full", "improvement_kl", "standard"),
    "1 - KL(joint full) / KL(standalone standard SAE)",
    "the paper's reference is the joint model's own ablated SAE path")))
register(Claim("joint_nonlinear_kl_reduction", ("behaviour",), "behaviour", lambda r: _bootstrap(
    r.behaviour("joint", "sae+interaction", "improvement_kl", "own_sae"),
    r.behaviour("joint", "sae+interaction", "improvement_kl", "standard"),
    "1 - KL(joint SAE + interaction) / KL(standalone standard SAE)",
    "the ablated joint SAE path is a poor reference")))
register(Claim("joint_ce_reduction", ("behaviour",), "behaviour", lambda r: _bootstrap(
    r.behaviour("joint", "full", "improvement_ce", "own_sae"),
    r.behaviour("joint", "full", "improvement_delta_ce", "standard"),
    "1 - delta CE(joint full) / delta CE(standalone standard SAE), delta = spliced - clean",
    "absolute CE ratios shrink every effect towards 0; the CE increase is the quantity that moves")))
register(Claim("nonlinear_share_of_improvement", ("behaviour",), "behaviour", _nonlinear_share))
register(Claim("interaction_parameter_share", ("parameters",), "weights", lambda r: _seeds(
    np.array([r.parameter_share("joint", ("nfm_embeddings", "nfm_interaction_mlp"))]),
    np.array([r.parameter_share("joint", ("nfm_embeddings", "nfm_interaction_mlp"))]),
    "same definition at our sizes", "a property of the chosen sizes, not a finding")))
register(Claim("linear_parameter_share", ("parameters",), "weights", lambda r: _seeds(
    np.array([r.parameter_share("joint", ("linear",))]), np.array([r.parameter_share("joint", ("linear",))]),
    "same definition at our sizes", "a property of the chosen sizes, not a finding")))
register(Claim("pca_components_90", ("geometry",), "weights", lambda r: _seeds(
    r.geometry("joint", "pca_paper_components_for_90pct_of_truncated", subset=None),
    r.geometry("joint", "pca_centred_raw_components_for_90pct"),
    "centred PCA, components for 90% of the total variance of the decoder rows",
    "our decoder lives in d = 576 dimensions (paper: 3200): compare as fractions of d")))
register(Claim("squared_norm_mode_low", ("geometry",), "weights", lambda r: _seeds(
    r.geometry("joint", "squared_norm_component_mean_low"), r.geometry("joint", "squared_norm_density_mode_low"),
    "lowest maximum of the fitted 2-component density of squared norms (one peak: the only mode)",
    _bimodality_note(r))))
register(Claim("squared_norm_mode_high", ("geometry",), "weights", lambda r: _seeds(
    r.geometry("joint", "squared_norm_component_mean_high"), r.geometry("joint", "squared_norm_density_mode_high"),
    "second maximum of that density; NaN on seeds whose density has one peak",
    _bimodality_note(r))))
register(Claim("spearman_norm_vs_nfm", ("geometry",), "weights", lambda r: _seeds(
    r.geometry("joint", "spearman_squared_norm_vs_nfm_ratio"),
    r.geometry("joint", "spearman_squared_norm_vs_activation_nfm_share", subset="fired"),
    "rho(squared norm, activation-based NFM share) over features that fired",
    "the paper's ratio contains the decoder norm itself, so its rho is partly definitional")))
register(Claim("secondary_anova_F", ("interventions",), "stimuli", lambda r: _seeds(
    r.intervention("sequential", "secondary_F", role="top_ranked", sentences="select"),
    r.intervention("sequential", "secondary_F", role="top_ranked", sentences="test", effect=SENTENCE_INTERACTION),
    "two-way ANOVA interaction F on held-out test sentences for the feature selected on select sentences",
    "the paper selected and tested on the same 40 sentences with a one-way F")))
register(Claim("clamp_interaction_F", ("clamps",), "stimuli", lambda r: _seeds(
    _paper_clamp(r, "paper_difference_score_F", "F"), _paper_clamp(r, "mixedlm_crossed_prompt_word", "F"),
    f"interaction t^2 of a mixed model with crossed random intercepts for prompt and word, clamp {PAPER_CLAMP:g}",
    "the paper's F pairs rows by list order and treats prompt x word rows as independent")))
register(Claim("clamp_interaction_p", ("clamps",), "stimuli", lambda r: _combined_p(
    _paper_clamp(r, "paper_difference_score_F", "p"), _paper_clamp(r, "mixedlm_crossed_prompt_word", "q"),
    "BH q-value of the crossed prompt + word random-intercept mixed model's interaction (t reference, "
    "between-word df) across all clamped features x values, combined over seeds by "
    "the intersection-union test (max over seeds: significant only if significant in every seed)",
    "no multiple-comparison correction in the paper")))
register(Claim("clamp_interaction_effect", ("clamps",), "stimuli", lambda r: _seeds(
    np.abs(_paper_clamp(r, "paper_difference_score_F", "interaction_contrast")),
    np.abs(_paper_clamp(r, "mixedlm_crossed_prompt_word", "interaction_contrast")),
    f"|(FE - FN) - (CE - CN)| of mean logit changes vs the unclamped pipeline, clamp {PAPER_CLAMP:g}",
    "the same contrast; compare with the size of a logit")))


def read_paper_claims(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ClaimsError(f"{path} does not exist; it holds the paper's values (see config/paper_claims.tsv).")
    table = pd.read_csv(path, sep="\t", comment="#", dtype={"paper_value": float})
    unknown = sorted(set(table["claim_id"]) - set(CLAIMS))
    if unknown:
        raise ClaimsError(f"{path}: no extractor for claim(s) {unknown}; known: {sorted(CLAIMS)}.")
    return table


def claims_table(paper: pd.DataFrame, artefacts: Artefacts) -> pd.DataFrame:
    reader = Reader(artefacts)
    rows = []
    for record in paper.to_dict("records"):
        claim = CLAIMS[record["claim_id"]]
        ours = claim.extract(reader)
        rows.append({**record, "ours_paper_definition": ours.paper_definition, "ours_corrected": ours.corrected,
                     "ci_low": ours.low, "ci_high": ours.high, "interval": ours.interval, "seeds": ours.seeds,
                     "rests_on": claim.rests_on(reader),
                     "corrected_definition": ours.corrected_definition, "note": ours.note})
    return pd.DataFrame(rows)


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "–"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4g}"


def claims_markdown(table: pd.DataFrame, run: str) -> str:
    lines = [f"# Paper claims vs this run (`{run}`)", "",
             ("Paper values from `config/paper_claims.tsv`; ours read from this run's Parquet artefacts. "
              "`paper def.` applies the paper's definition to our models; `corrected` the definition in the last "
              "column (held-out text, independent baselines, per-condition epsilon, proper ANOVA)."), "",
             ("| claim | paper | ours, paper def. | ours, corrected | interval | seeds | rests on "
              "| corrected definition | note |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        interval = ("–" if not np.isfinite(r["ci_low"])
                    else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] ({r['interval']})")
        lines.append(f"| {r['claim']} | {_fmt(r['paper_value'])} {r['unit']} | {_fmt(r['ours_paper_definition'])} | "
                     f"{_fmt(r['ours_corrected'])} | {interval} | {r['seeds']} | {r['rests_on']} | "
                     f"{r['corrected_definition']} | "
                     f"{r['note']} |")
    return "\n".join(lines) + "\n"


def kinds_by_parameters(artefacts: Artefacts) -> pd.DataFrame:
    """Every trained kind's final reconstruction on held-out text against its parameter count: one row per
    kind and quantity (``test_fvu`` from the reconstruction summary; ``spliced_kl`` from the behaviour
    summary where that stage ran), the mean over seeds with its document-bootstrap interval."""
    parameters = artefacts.parameters
    totals = parameters[parameters["component"] == "total"].groupby("model")["parameters"].first()
    recon = artefacts.reconstruction_summary
    recon = recon[(recon["split"] == "test") & (recon["token_set"] == "selected") & (recon["metric"] == "fvu")]
    behaviour = artefacts.behaviour
    behaviour = behaviour[(behaviour["metric"] == "mean_kl") & behaviour["seed"].isna()
                          & (behaviour["method"] == DOCUMENT_WINDOW_BOOTSTRAP)]
    rows = []
    for model in kinds.order(totals.index):
        final = kinds.final_component(model)
        base = {"model": model, "role": kinds.kind(model).role,
                "parameters": int(totals[model])}
        fvu = recon[(recon["model"] == model) & (recon["component"] == final)]
        if len(fvu):
            r = fvu.iloc[0]
            rows.append({**base, "quantity": "test_fvu", "estimate": float(r["mean"]),
                         "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]), "n_seeds": int(r["n_seeds"])})
        kl = behaviour[(behaviour["model"] == model) & (behaviour["condition"] == final)]
        if len(kl):
            r = kl.iloc[0]
            rows.append({**base, "quantity": "spliced_kl", "estimate": float(r["estimate"]),
                         "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]), "n_seeds": int(r["n_seeds"])})
    return pd.DataFrame(rows, columns=["model", "role", "parameters", "quantity", "estimate", "ci_low", "ci_high",
                                       "n_seeds"])


class ClaimsOutputs(NamedTuple):
    """What :func:`run_claims` writes (:meth:`in_folder` places them as the workflow does)."""

    table: str | Path  #: one row per claim: the paper's value beside ours under both definitions
    markdown: str | Path  #: the same table for a reader
    kinds: str | Path | None = None  #: every kind's test FVU and spliced KL against its parameter count
    kinds_figure: str | Path | None = None  #: the figure of that table

    @classmethod
    def in_folder(cls, folder: ReportFolder) -> ClaimsOutputs:
        return cls(folder.claims, folder.claims_markdown, folder.kinds, folder.kinds_figure)


def run_claims(paper_claims: str | Path, tables: Mapping[str, str | Path | None], out: ClaimsOutputs,
               run: str) -> pd.DataFrame:
    """Stage entry point: the claims table and its markdown from the upstream ``tables``
    (:meth:`Artefacts.load`); every kind against its parameter count when ``out`` names its files."""
    from featint import plots

    artefacts = Artefacts.load(tables)
    table = claims_table(read_paper_claims(paper_claims), artefacts)
    write_table(table, out.table, CLAIMS_TABLE)
    with atomic_path(out.markdown) as tmp:
        tmp.write_text(claims_markdown(table, run))
    if out.kinds is not None or out.kinds_figure is not None:
        points = kinds_by_parameters(artefacts)
        if out.kinds is not None:
            write_table(points, out.kinds, KINDS_BY_PARAMETERS)
        if out.kinds_figure is not None:
            plots.kinds_by_parameters(points, out.kinds_figure)
    return table
