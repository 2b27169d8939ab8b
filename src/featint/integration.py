"""Does the representation integrate features? The held-out pair product test on an SAE's own latents.

The paper's "dual encoding" claim is that besides which features are present, the network encodes their
*integration*: a term that depends on two features jointly. Asked of data, per pair of latents (a, b) of a trained
SAE: **is the mean activation, given the pair's codes, not additive in them?** That is, does x carry a term in
``f_a f_b`` beyond a function of ``f_a`` alone plus a function of ``f_b`` alone? No ground truth enters the test, so
it runs unchanged on the planted control (where it is calibrated and its power measured) and on the LM.

**The statistic** (:func:`test_pairs`), per pair and per *target* y, either the activation x itself
(``activation``: integration wherever the SAE put it, in its residual or in a latent of its own that fires with the
pair, whose decoder then adds to x along the pair's direction) or the SAE's residual ``r = x - decode(f)``
(``residual``: the part a linear dictionary leaves out):

1. on the pair's co-active *fit* tokens (train split): OLS of y [d] on the six columns
   ``[1, f_a, f_b, f_a^2, f_b^2, f_a f_b]``; the product's coefficient vector gives a direction ``g``;
2. on the pair's co-active *test* tokens (test split, documents the SAE never saw): OLS of ``g . y`` on the same
   columns; the product's coefficient ``estimate``, its cluster-robust standard error by document
   (:func:`featint.stats.ols_cluster_robust`), ``t``, and the drop in residual sum of squares it brings
   (``explained_ss``);
3. ``t`` referred to the same pair's ``t`` on the surrogates (below; :func:`calibrate`): ``z`` = its distance from
   their mean in units of how much a pair's t moves between surrogate draws, its upper normal tail ``p``,
   Benjamini-Hochberg across pairs (:func:`featint.stats.benjamini_hochberg`), ``flagged`` at q <= fdr.

The squares absorb a code that is a curved function of its feature (top-k shrinkage); fitting the direction on
other tokens than the test keeps the test one one-sided statistic on held-out data.

**Why t alone is not a test, and the data's own null** (:func:`surrogate`). Referred to Student's t (``p_t``),
the statistic flags most pairs of any top-k SAE even where nothing is planted: codes are noisy, nonlinear
functions of x (selection, interference between latents), so E[x | f_a, f_b] is not additive in the codes for
reasons that have nothing to do with integration. The reference is therefore taken from surrogate activations
``x* = decode(f) + r`` shifted by a random offset along the split's token sequence (each residual meets another
token's codes, keeping its run within a document), **re-encoded by the same SAE**: everything linear in the
codes is kept, and so is the encoder's own nonlinearity, but there is no pairwise term by construction. The same
pairs are tested on each of ``surrogates`` draws; the data's t are referred to them, and each draw to the other
draws, so a draw's flags count what the procedure flags with nothing there. Pair by pair, because the encoder's
artefact is the pair's own (on the activation target the same pair's t correlate 0.5-0.65 between draws).

What the surrogate cannot remove: a trained SAE's latents are not the true features, so its residual is itself a
function of the true codes, which may be non-additive in two latents (a feature split over them) with no
integration anywhere. The planted control at c = 0 and its decoy pairs measure how often that happens there.

Which pairs (:func:`candidate_pairs`): those co-active on at least ``min_tokens`` fit and test tokens in at least
``min_documents`` test documents, the ``max_pairs`` with the largest lift (co-activation over chance); the
selection reads only codes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from featint import stats
from featint.activations import ActivationStore
from featint.config import IntegrationSettings
from featint.layout import (
    ActivationsFolder,
    IntegrationFigures,
    SyntheticSettingFolder,
)
from featint.models import FeatureModel, SparseCode, load_model
from featint.normaliser import Normaliser
from featint.tables import (
    INTEGRATION_CALIBRATION,
    INTEGRATION_CONTEXTS,
    INTEGRATION_PAIRS,
    INTEGRATION_POWER,
    INTEGRATION_REPLICATION,
    INTEGRATION_SHOWN_CONTEXTS,
    INTEGRATION_SUMMARY,
    SYNTHETIC_INTEGRATION_PAIRS,
    write_table,
)

log = logging.getLogger(__name__)

TARGETS = ("activation", "residual")  #: what the pair's product is tested against
PRODUCT = 5  #: the product's column in the design


class SplitCodes(NamedTuple):
    """One split's tokens as the test reads them (all on the CPU)."""

    x: torch.Tensor  #: [N, d] normalised activations
    residual: torch.Tensor  #: [N, d] x - the SAE's reconstruction
    code: SparseCode  #: the SAE's top-k code of x (at the model's inference k)
    documents: np.ndarray  #: [N] document of each token (the clusters of the test)
    rows: np.ndarray  #: [N] the tokens' rows in the split's store

    def target(self, name: str) -> torch.Tensor:
        return self.x if name == "activation" else self.residual


@torch.no_grad()
def encode(model: FeatureModel, x: torch.Tensor, chunk: int = 4096) -> tuple[SparseCode, torch.Tensor]:
    """(code, reconstruction) of the SAE of ``model`` on ``x``, computed where the model lives, returned on the
    CPU."""
    device = model.sae.W_enc.device
    codes, hats = [], []
    for start in range(0, x.shape[0], chunk):
        code, _ = model.sae.encode(x[start : start + chunk].to(device), model.infer_k)
        hats.append(model.sae.decode(code).cpu())
        codes.append(code.to("cpu"))
    return SparseCode.cat(codes, model.sae.n_features), torch.cat(hats)


def read_split(model: FeatureModel, normaliser: Normaliser, store: ActivationStore,
               max_tokens: int | None) -> SplitCodes:
    """The split's selected tokens (at most ``max_tokens``, evenly spaced over the split so every document
    contributes), normalised and encoded."""
    mask = store.selected_mask().copy()
    selected = np.flatnonzero(mask)
    if max_tokens is not None and selected.size > max_tokens:
        keep = selected[np.linspace(0, selected.size - 1, max_tokens).round().astype(np.int64)]
        mask[:] = False
        mask[keep] = True
    rows, parts = [], []
    for row_ids, vectors in store.iter_shards(mask):
        rows.append(row_ids)
        parts.append(vectors)
    row_ids = np.concatenate(rows)
    x = normaliser.apply(torch.cat(parts))
    code, hat = encode(model, x)
    tokens = store.tokens().set_index("row")
    return SplitCodes(x, x - hat, code, tokens.loc[row_ids, "doc_id"].to_numpy(), row_ids)


@torch.no_grad()
def surrogate(split: SplitCodes, model: FeatureModel, seed: int) -> SplitCodes:
    """The no-interaction surrogate of ``split``: its reconstruction plus its residual shifted by a random offset
    (a quarter to three quarters of the split) along the token sequence, re-encoded by the same SAE."""
    n = split.x.shape[0]
    offset = int(np.random.default_rng(seed).integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
    x = (split.x - split.residual) + torch.roll(split.residual, offset, dims=0)
    code, hat = encode(model, x)
    return SplitCodes(x, x - hat, code, split.documents, split.rows)


def _columns(code: SparseCode, n_features: int) -> sp.csc_matrix:
    """The code as a sparse [N, F] matrix (zero codes dropped), by column."""
    n, k = code.indices.shape
    values = code.values.double().numpy().ravel()
    live = values > 0
    matrix = sp.csr_matrix((values[live], (np.repeat(np.arange(n), k)[live], code.indices.numpy().ravel()[live])),
                           shape=(n, n_features))
    matrix.sum_duplicates()
    return matrix.tocsc()


def _coactivation(columns: sp.csc_matrix) -> sp.coo_matrix:
    """Upper-triangle counts of tokens on which each pair of latents is active together."""
    active = columns.copy()
    active.data[:] = 1.0
    return sp.triu(active.T @ active, k=1).tocoo()


class _Pair(NamedTuple):
    rows: np.ndarray  #: the split's positions where both latents are active
    f_a: np.ndarray
    f_b: np.ndarray


def _pair(columns: sp.csc_matrix, a: int, b: int) -> _Pair:
    start_a, end_a = columns.indptr[a], columns.indptr[a + 1]
    start_b, end_b = columns.indptr[b], columns.indptr[b + 1]
    rows, in_a, in_b = np.intersect1d(columns.indices[start_a:end_a], columns.indices[start_b:end_b],
                                      assume_unique=True, return_indices=True)
    return _Pair(rows, columns.data[start_a:end_a][in_a], columns.data[start_b:end_b][in_b])


def design(f_a: np.ndarray, f_b: np.ndarray) -> np.ndarray:
    """The test's columns: intercept, each code, each code squared, and the product (column :data:`PRODUCT`)."""
    return np.column_stack([np.ones_like(f_a), f_a, f_b, f_a**2, f_b**2, f_a * f_b])


def candidate_pairs(fit: SplitCodes, test: SplitCodes, n_features: int, settings: IntegrationSettings) -> pd.DataFrame:
    """The pairs to test (``latent_a`` < ``latent_b``), chosen from codes only: co-active on at least
    ``min_tokens`` fit and test tokens, from at least ``min_documents`` test documents, the ``max_pairs`` with the
    largest ``lift`` on the fit split (co-active tokens over what independent firing would give: the pairs that go
    together far more than chance, where integration would be sought first)."""
    fit_columns = _columns(fit.code, n_features)
    fit_coo = _coactivation(fit_columns)
    keep = fit_coo.data >= settings.min_tokens
    a, b, fit_tokens = fit_coo.row[keep], fit_coo.col[keep], fit_coo.data[keep]
    test_counts = _coactivation(_columns(test.code, n_features)).tocsr()
    test_tokens = np.asarray(test_counts[a, b]).ravel() if a.size else np.zeros(0)
    fires = np.diff(fit_columns.indptr).astype(np.float64)
    lift = fit_tokens * fit.x.shape[0] / np.maximum(fires[a] * fires[b], 1.0)
    frame = pd.DataFrame({"latent_a": a.astype(np.int64), "latent_b": b.astype(np.int64),
                          "fit_tokens": fit_tokens.astype(np.int64), "test_tokens": test_tokens.astype(np.int64),
                          "lift": lift})
    frame = frame[frame["test_tokens"] >= settings.min_tokens]
    frame = frame.sort_values(["lift", "latent_a", "latent_b"], ascending=[False, True, True]).reset_index(drop=True)
    test_columns = _columns(test.code, n_features)
    chosen, documents = [], []
    for position, row in enumerate(frame.itertuples()):
        count = np.unique(test.documents[_pair(test_columns, row.latent_a, row.latent_b).rows]).size
        if count >= settings.min_documents:
            chosen.append(position)
            documents.append(count)
            if len(chosen) == settings.max_pairs:
                break
    return frame.iloc[chosen].assign(test_documents=np.asarray(documents, dtype=np.int64)).reset_index(drop=True)


def _spread(rows: np.ndarray, limit: int) -> np.ndarray:
    """Positions of at most ``limit`` of ``rows``, evenly spaced."""
    if rows.size <= limit:
        return np.arange(rows.size)
    return np.linspace(0, rows.size - 1, limit).round().astype(np.int64)


def test_pairs(pairs: pd.DataFrame, fit: SplitCodes, test: SplitCodes, n_features: int,
               settings: IntegrationSettings, targets: tuple[str, ...] = TARGETS) -> pd.DataFrame:
    """One row per pair and target: the held-out product test of the module docstring, q values and ``flagged``
    (BH within each target), and ``explained_share``: the pair's ``explained_ss`` over the target's total sum of
    squares on the test split (about its mean for the activation, about zero for the residual)."""
    fit_columns, test_columns = _columns(fit.code, n_features), _columns(test.code, n_features)
    totals = {"activation": float(((test.x - test.x.mean(0)) ** 2).double().sum()),
              "residual": float((test.residual.double() ** 2).sum())}
    rows = []
    fit_y = torch.cat([fit.target(t) for t in targets], dim=1)  # [N, d * targets]: one solve for every target
    test_y = torch.cat([test.target(t) for t in targets], dim=1)
    d = fit.x.shape[1]
    for pair in pairs.itertuples():
        on_fit = _pair(fit_columns, pair.latent_a, pair.latent_b)
        on_test = _pair(test_columns, pair.latent_a, pair.latent_b)
        take = _spread(on_fit.rows, settings.max_fit_tokens)
        fit_design = design(on_fit.f_a[take], on_fit.f_b[take])
        test_design = design(on_test.f_a, on_test.f_b)
        results: list[stats.CoefficientTest | None] = [None] * len(targets)
        gram = fit_design.T @ fit_design
        if np.linalg.cond(gram) < 1e12:
            y = fit_y[torch.from_numpy(on_fit.rows[take])].double().numpy()
            gamma = np.linalg.solve(gram, fit_design.T @ y)[PRODUCT].reshape(len(targets), d)
            norms = np.linalg.norm(gamma, axis=1, keepdims=True)
            if (norms > 0).all():
                directions = torch.from_numpy((gamma / norms).T)  # [d, targets]
                y_test = test_y[torch.from_numpy(on_test.rows)].double().reshape(-1, len(targets), d)
                responses = torch.einsum("ntd,dt->nt", y_test, directions).numpy()
                tested = stats.ols_cluster_robust(test_design, responses, test.documents[on_test.rows], PRODUCT)
                if tested is not None:
                    results = list(tested)
        documents = int(np.unique(test.documents[on_test.rows]).size)
        for target, result in zip(targets, results):
            entry = {"latent_a": pair.latent_a, "latent_b": pair.latent_b, "target": target,
                     "fit_tokens": int(take.size), "test_tokens": int(on_test.rows.size), "test_documents": documents}
            if result is None:
                entry.update(estimate=np.nan, se=np.nan, df=0, t=np.nan, p=np.nan, ci_low=np.nan, ci_high=np.nan,
                             explained_ss=np.nan, explained_share=np.nan)
            else:
                low, high = result.interval(settings.ci_level)
                entry.update(estimate=result.estimate, se=result.se, df=result.df, t=result.t, p=result.p_greater(),
                             ci_low=low, ci_high=high, explained_ss=result.explained_ss,
                             explained_share=result.explained_ss / totals[target])
            rows.append(entry)
    return pd.DataFrame(rows)


KEY = ["latent_a", "latent_b", "target"]  #: one test: a pair of latents on one target


def within_pair_spread(draws: list[pd.DataFrame]) -> dict[str, float]:
    """Per target, the pooled within-pair standard deviation of t across surrogate draws: how much the same
    pair's t moves from one no-interaction draw to another (needs two draws at least)."""
    if len(draws) < 2:
        raise ValueError(f"the surrogate reference needs at least 2 draws, got {len(draws)}")
    t = pd.concat([d.set_index(KEY)["t"] for d in draws], axis=1).dropna()
    variance = t.var(axis=1, ddof=1)
    return {str(target): float(np.sqrt(v.mean())) for target, v in variance.groupby(level="target")}


def calibrate(data: pd.DataFrame, references: list[pd.DataFrame], spread: dict[str, float],
              settings: IntegrationSettings) -> pd.DataFrame:
    """Refer each pair's t to the same pair's t on the ``references`` (surrogate draws): ``z = (t - mean of the
    references) / (s sqrt(1 + 1/m))`` with ``s`` the target's within-pair spread over draws
    (:func:`within_pair_spread`) and ``m`` the references, so a pair whose encoder artefact gives it a large t
    everywhere is judged against its own. ``p_empirical`` is the upper normal tail of ``z``, ``q`` the BH values
    within each target, ``flagged`` at q <= ``fdr``; ``p_t`` (the t reference) stays beside it. The t reference
    assumes the codes are fixed regressors; an encoder's codes are noisy, nonlinear functions of x, which makes
    E[x | f_a, f_b] non-additive for almost every pair (the module docstring), so only the surrogate reference is
    calibrated."""
    frame = data.copy()
    frame["p_t"] = frame["p"]
    frame["z"], frame["p_empirical"], frame["q"] = np.nan, np.nan, np.nan
    if frame.empty:
        return frame.assign(flagged=pd.Series(dtype=bool))
    reference = pd.concat([r.set_index(KEY)["t"] for r in references], axis=1)
    centre, count = reference.mean(axis=1), reference.notna().sum(axis=1)
    keys = pd.MultiIndex.from_frame(frame[KEY])
    centre, count = centre.reindex(keys).to_numpy(), count.reindex(keys).fillna(0).to_numpy()
    scale = frame["target"].map(spread).to_numpy(dtype=np.float64) * np.sqrt(1 + 1 / np.maximum(count, 1))
    z = np.where(count > 0, (frame["t"].to_numpy() - centre) / scale, np.nan)
    frame["z"] = z
    frame["p_empirical"] = stats.normal_upper_tail(z)
    for target, part in frame.groupby("target", sort=False):
        frame.loc[part.index, "q"] = stats.benjamini_hochberg(part["p_empirical"].to_numpy())
    frame["p"] = frame["p_empirical"]
    frame["flagged"] = frame["q"] <= settings.fdr
    return frame


def top_contexts(table: pd.DataFrame, test: SplitCodes, n_features: int, per_pair: int) -> pd.DataFrame:
    """For every flagged pair: its ``per_pair`` test tokens with the largest product ``f_a f_b`` (store row,
    document, codes), the contexts the gather turns into text."""
    flagged = table[table["flagged"]].drop_duplicates(["latent_a", "latent_b"])
    columns = _columns(test.code, n_features)
    rows = []
    for pair in flagged.itertuples():
        on_test = _pair(columns, pair.latent_a, pair.latent_b)
        product = on_test.f_a * on_test.f_b
        for rank, position in enumerate(np.argsort(-product, kind="stable")[:per_pair]):
            rows.append({"latent_a": pair.latent_a, "latent_b": pair.latent_b, "rank": rank,
                         "row": int(test.rows[on_test.rows[position]]),
                         "doc_id": int(test.documents[on_test.rows[position]]),
                         "f_a": float(on_test.f_a[position]), "f_b": float(on_test.f_b[position]),
                         "product": float(product[position])})
    return pd.DataFrame(rows, columns=["latent_a", "latent_b", "rank", "row", "doc_id", "f_a", "f_b", "product"])


class IntegrationResult(NamedTuple):
    """What one model's test writes."""

    pairs: pd.DataFrame  #: one row per data (``data`` | ``surrogate`` with its ``draw``), target and pair tested
    contexts: pd.DataFrame  #: the strongest co-activating test tokens of every pair flagged on the data


def run_test(model: FeatureModel, normaliser: Normaliser, activations_dir: str | Path,
             settings: IntegrationSettings, seed: int) -> IntegrationResult:
    """The test on one model's SAE (fit on train, test on test): the pairs chosen on the data, tested on the data
    and on ``settings.surrogates`` surrogate draws; the data referred to every draw, each draw to the others (so
    a draw's flags count what the procedure flags where nothing is planted)."""
    activations = ActivationsFolder(activations_dir)
    fit = read_split(model, normaliser, ActivationStore(activations.split("train")), settings.fit_tokens)
    test = read_split(model, normaliser, ActivationStore(activations.split("test")), None)
    n_features = model.sae.n_features
    pairs = candidate_pairs(fit, test, n_features, settings)
    log.info("%d pairs to test (latents co-active on >= %d fit and test tokens, >= %d test documents)", len(pairs),
             settings.min_tokens, settings.min_documents)
    raw = {"data": test_pairs(pairs, fit, test, n_features, settings)}
    for draw in range(settings.surrogates):
        raw[f"surrogate_{draw}"] = test_pairs(pairs, surrogate(fit, model, 1000 * seed + 2 * draw + 1),
                                              surrogate(test, model, 1000 * seed + 2 * draw + 2), n_features, settings)
        log.info("surrogate draw %d of %d tested", draw + 1, settings.surrogates)
    draws = [name for name in raw if name != "data"]
    spread = within_pair_spread([raw[name] for name in draws])
    log.info("within-pair spread of t over surrogate draws: %s", {k: round(v, 3) for k, v in spread.items()})
    tables = []
    for name, table in raw.items():
        others = [raw[other] for other in draws if other != name]
        calibrated = calibrate(table, others, spread, settings)
        log.info("%s: flagged %s", name, calibrated.groupby("target")["flagged"].sum().to_dict() if len(table) else {})
        tables.append(calibrated.assign(data="data" if name == "data" else "surrogate",
                                        draw=-1 if name == "data" else int(name.split("_")[1])))
    data = tables[0]
    return IntegrationResult(pd.concat(tables, ignore_index=True),
                             top_contexts(data, test, n_features, settings.contexts_per_pair))


class IntegrationOutputs(NamedTuple):
    """What :func:`run_integration` writes for one model and seed."""

    pairs: str | Path  #: every pair test, on the data and on each surrogate draw
    contexts: str | Path  #: each tested pair's tokens of largest product


def run_integration(weights_path: str | Path, activations_dir: str | Path, out: IntegrationOutputs, run: str,
                    settings: IntegrationSettings, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: the pair tests and contexts of one model and seed, to the files of ``out``;
    returns the pair table."""
    model, extra = load_model(weights_path, device)
    normaliser = Normaliser.load(ActivationsFolder(activations_dir).normaliser)
    seed = int(extra.get("seed", 0))
    result = run_test(model, normaliser, activations_dir, settings, seed)
    keys = {"run": run, "model": model.kind, "seed": seed}
    for path, frame, table in ((out.pairs, result.pairs, INTEGRATION_PAIRS),
                               (out.contexts, result.contexts, INTEGRATION_CONTEXTS)):
        for position, (key, value) in enumerate(keys.items()):
            frame.insert(position, key, value)
        write_table(frame, path, table)
    return result.pairs


# ---------------------------------------------------------------------------------------------------------
# Reading the answer: latents matched by decoder, the planted truth, replication across seeds


def decoder_directions(model: FeatureModel, normaliser: Normaliser) -> torch.Tensor:
    """[F, d] unit decoder directions in the raw activation space (a step ``w`` in the normaliser's space is
    ``w / scale`` in raw space)."""
    raw = model.sae.W_dec.detach().cpu().float() / normaliser.scale.float()
    return torch.nn.functional.normalize(raw, dim=1)


def best_match(directions: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``directions``: the row of ``targets`` (unit) with the largest cosine, and that cosine."""
    cosine = directions @ torch.nn.functional.normalize(targets.float(), dim=1).T
    best, index = cosine.max(dim=1)
    return index.numpy(), best.numpy()


def pair_membership(directions: torch.Tensor, features: torch.Tensor, truth_pairs: np.ndarray,
                    planted_directions: torch.Tensor, threshold: float) -> np.ndarray:
    """[F, n_true_pairs] booleans: latent ``l`` belongs to true pair ``n`` when its best-matched true feature
    (decoder cosine >= ``threshold``) is one of the pair's two, or (planted pairs) when its decoder has cosine
    >= ``threshold`` with the pair's interaction direction ``u``. A wide SAE splits a feature into latents and
    gives a planted term latents of its own (a conjunction latent); this counts every latent in the pair's span."""
    match, cosine = best_match(directions, features)
    member = np.zeros((directions.shape[0], len(truth_pairs)), dtype=bool)
    owner = np.full(features.shape[0], -1, dtype=np.int64)
    for number, (i, j) in enumerate(truth_pairs.tolist()):
        owner[i] = owner[j] = number
    owned = (cosine >= threshold) & (owner[match] >= 0)
    member[np.nonzero(owned)[0], owner[match[owned]]] = True
    if len(planted_directions):
        u_cosine = (directions @ torch.nn.functional.normalize(planted_directions.float(), dim=1).T).numpy()
        member[:, : len(planted_directions)] |= u_cosine >= threshold
    return member


def score_against_truth(table: pd.DataFrame, member: np.ndarray, n_planted: int) -> pd.DataFrame:
    """Per true pair (planted, then decoy) and target: was a latent pair of that pair (both latents members,
    :func:`pair_membership`) tested, and was one flagged?"""
    rows = []
    for target, part in table.groupby("target", sort=False):
        both = member[part["latent_a"].to_numpy()] & member[part["latent_b"].to_numpy()]  # [rows, true pairs]
        flagged = both & part["flagged"].to_numpy()[:, None]
        for number in range(member.shape[1]):
            rows.append({"target": target, "true_pair": number, "planted": number < n_planted,
                         "tested": bool(both[:, number].any()), "flagged": bool(flagged[:, number].any()),
                         "latent_pairs": int(both[:, number].sum())})
    return pd.DataFrame(rows)


def calibration_rows(table: pd.DataFrame, truth: pd.DataFrame) -> list[dict[str, float | int | str]]:
    """Per target: pairs tested and flagged in all, flagged pairs matched to no true pair, and the planted and
    decoy pairs flagged (shares of all planted / decoy pairs; untested ones count as not flagged)."""
    rows = []
    for target, part in table.groupby("target", sort=False):
        mine = truth[truth["target"] == target]
        planted, decoy = mine[mine["planted"]], mine[~mine["planted"]]
        rows.append({"target": target, "pairs_tested": int(part["p"].notna().sum()),
                     "pairs_flagged": int(part["flagged"].sum()),
                     "planted_tested": int(planted["tested"].sum()), "planted_flagged": int(planted["flagged"].sum()),
                     "planted_flagged_share": float(planted["flagged"].mean()),
                     "decoy_tested": int(decoy["tested"].sum()), "decoy_flagged": int(decoy["flagged"].sum()),
                     "decoy_flagged_share": float(decoy["flagged"].mean())})
    return rows


def replication(tables: dict[int, pd.DataFrame], directions: dict[int, torch.Tensor],
                threshold: float) -> pd.DataFrame:
    """Per ordered pair of seeds (s, s') and target: of the pairs flagged in s whose two latents both have a
    match in s' (decoder cosine >= ``threshold``, distinct latents), how many were tested in s' and how many
    flagged there (``replicated``), beside the share of all pairs tested in s' that are flagged there
    (``base_rate``: what a flagged pair would replicate at if flags were unrelated across seeds)."""
    rows = []
    for seed, table in tables.items():
        for other, other_table in tables.items():
            if other == seed:
                continue
            match, cosine = best_match(directions[seed], directions[other])
            for target in table["target"].unique():
                mine = table[(table["target"] == target) & table["flagged"]]
                theirs = other_table[other_table["target"] == target]
                tested = {(a, b): f for a, b, f in zip(theirs["latent_a"], theirs["latent_b"], theirs["flagged"])}
                matched = tested_there = replicated = 0
                for a, b in zip(mine["latent_a"], mine["latent_b"]):
                    if cosine[a] < threshold or cosine[b] < threshold or match[a] == match[b]:
                        continue
                    matched += 1
                    key = (min(match[a], match[b]), max(match[a], match[b]))
                    if key in tested:
                        tested_there += 1
                        replicated += int(tested[key])
                rows.append({"seed": seed, "other_seed": other, "target": target, "flagged": len(mine),
                             "matched": matched, "tested_there": tested_there, "replicated": replicated,
                             "replication_rate": replicated / tested_there if tested_there else np.nan,
                             "base_rate": float(theirs["flagged"].mean()) if len(theirs) else np.nan})
    return pd.DataFrame(rows, columns=[c.name for c in INTEGRATION_REPLICATION.columns if c.name != "model"])


# ---------------------------------------------------------------------------------------------------------
# Stage entry points: the planted control and the gathers


class SyntheticIntegrationOutputs(NamedTuple):
    """What the pair product test writes on one planted setting and seed."""

    pairs: str | Path  #: every tested pair as on the LM, with the setting's keys (SYNTHETIC_INTEGRATION_PAIRS)
    calibration: str | Path  #: the flags read against the planted truth, per data / draw and target


class GatheredSyntheticIntegrationOutputs(NamedTuple):
    """What the planted control's pair-test gather writes."""

    calibration: str | Path  #: every setting's and seed's calibration rows in one table
    power: str | Path  #: power and decoy share per variant, strength, data and target (:func:`synthetic_summary`)
    figure: str | Path  #: power against the planted strength (PNG)


def run_synthetic_integration(weights_path: str | Path, setting_dir: str | Path, out: SyntheticIntegrationOutputs,
                              settings: IntegrationSettings, variant: str, strength: float) -> pd.DataFrame:
    """Stage entry point on one planted setting and seed: the test exactly as on the LM (:func:`run_test`), then,
    and only then, its flags read against the truth: each latent given to the true pairs whose span it matches
    (:func:`pair_membership` at ``match_cosine``, with the setting's planted directions). Writes the files of
    ``out`` (the calibration per data / draw and target: :func:`calibration_rows`); returns the calibration."""
    from safetensors.torch import load_file

    setting = SyntheticSettingFolder(setting_dir)
    model, extra = load_model(weights_path)
    normaliser = Normaliser.load(setting.activations.normaliser)
    seed = int(extra.get("seed", 0))
    result = run_test(model, normaliser, str(setting.activations), settings, seed)
    truth = load_file(setting.truth)
    n_planted = int(truth["pairs"].shape[0] // 2)
    member = pair_membership(decoder_directions(model, normaliser), truth["features"], truth["pairs"].numpy(),
                             truth["directions"], settings.match_cosine)  # the setting's u ('new' or 'span')
    rows = []
    for (data, draw), table in result.pairs.groupby(["data", "draw"], sort=False):
        scored = score_against_truth(table, member, n_planted)
        rows += [{"data": data, "draw": int(draw), **row} for row in calibration_rows(table, scored)]
    keys = {"variant": variant, "strength": strength, "model": model.kind, "seed": seed}
    calibration = pd.DataFrame(rows)
    for path, frame, table in ((out.pairs, result.pairs, SYNTHETIC_INTEGRATION_PAIRS),
                               (out.calibration, calibration, INTEGRATION_CALIBRATION)):
        for position, (key, value) in enumerate(keys.items()):
            frame.insert(position, key, value)
        write_table(frame, path, table)
    return calibration


def synthetic_summary(calibration: pd.DataFrame) -> pd.DataFrame:
    """Per variant, strength, data and target, over seeds (and surrogate draws): mean power (share of planted
    pairs flagged), mean share of decoy pairs flagged, mean pairs flagged and tested, and the share of runs that
    flagged any pair (at c = 0 the family-wise error, which BH keeps at the FDR level under the complete null)."""
    grouped = calibration.groupby(["variant", "strength", "data", "target"], sort=True)
    return grouped.agg(runs=("seed", "size"), power=("planted_flagged_share", "mean"),
                       planted_tested=("planted_tested", "mean"), decoy_flagged_share=("decoy_flagged_share", "mean"),
                       pairs_flagged=("pairs_flagged", "mean"), pairs_tested=("pairs_tested", "mean"),
                       any_flagged=("pairs_flagged", lambda v: float((v > 0).mean()))).reset_index()


def gather_synthetic(calibration_tables: list[str | Path], out: GatheredSyntheticIntegrationOutputs) -> pd.DataFrame:
    """Stage entry point: the files of ``out``: every run's calibration, the summary (:func:`synthetic_summary`)
    and the power figure; returns the summary."""
    from featint import plots

    calibration = pd.concat([pd.read_parquet(p) for p in calibration_tables], ignore_index=True)
    summary = synthetic_summary(calibration)
    write_table(calibration, out.calibration, INTEGRATION_CALIBRATION)
    write_table(summary, out.power, INTEGRATION_POWER)
    plots.integration_power(summary, out.figure)
    return summary


def lm_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per model, seed, data (surrogate draws pooled) and target: pairs tested and flagged, the flagged pairs'
    median estimate and summed ``explained_share`` (an upper bound on the share of the target's test sum of
    squares their terms explain: the pairs' tokens overlap and each term was fitted alone)."""
    rows = []
    for (model, seed, data, target), part in pairs.groupby(["model", "seed", "data", "target"], sort=True):
        draws = max(part["draw"].nunique(), 1)
        flagged = part[part["flagged"]]
        rows.append({"model": model, "seed": int(seed), "data": data, "target": target,
                     "pairs_tested": int(part["t"].notna().sum()) / draws,
                     "pairs_flagged": len(flagged) / draws,
                     "flagged_share": float(part["flagged"].mean()),
                     "median_z": float(part["z"].median()),
                     "flagged_median_estimate": float(flagged["estimate"].median()) if len(flagged) else np.nan,
                     "flagged_explained_share": float(flagged["explained_share"].sum()) / draws})
    return pd.DataFrame(rows)


def context_text(contexts: pd.DataFrame, store: ActivationStore, tokenizer: object, before: int) -> pd.DataFrame:
    """The text around each context token: ``before`` tokens of its window before it and the token itself
    (``token``), decoded by the LM's tokenizer from the store's token table."""
    tokens = store.tokens().set_index("row")
    texts, words = [], []
    for row in contexts["row"].to_numpy():
        here = tokens.loc[row]
        first = max(int(row) - before, int(row) - int(here["position"]) + 1)
        ids = tokens.loc[first : int(row), "token_id"].to_numpy()
        texts.append(tokenizer.decode(ids[:-1].tolist()))  # type: ignore[attr-defined]
        words.append(tokenizer.decode(ids[-1:].tolist()))  # type: ignore[attr-defined]
    return contexts.assign(before=texts, token=words)


class GatheredIntegrationOutputs(NamedTuple):
    """What :func:`gather` writes."""

    summary: str | Path  #: per model, seed, data and target: pairs tested and flagged (:func:`lm_summary`)
    pairs: str | Path  #: every test of every model and seed
    replication: str | Path  #: per model and ordered pair of seeds, flagged pairs flagged again (:func:`replication`)
    contexts: str | Path  #: the flagged pairs of largest z per model and seed, with their text
    figures: IntegrationFigures  #: the z distribution and the top pairs' contexts


def gather(pair_tables: list[str | Path], context_tables: list[str | Path], weights: list[str | Path],
           activations_dir: str | Path, lm_dir: str | Path, settings: IntegrationSettings,
           out: GatheredIntegrationOutputs) -> pd.DataFrame:
    """Stage entry point on the LM: the summary (:func:`lm_summary`), every test, the replication across seeds
    (:func:`replication`, per model), the ``top_pairs`` flagged pairs of largest z per model and seed (on either
    target, with their text) and two figures, to the files of ``out``; returns the summary."""
    from transformers import AutoTokenizer

    from featint import plots

    activations = ActivationsFolder(activations_dir)
    pairs = pd.concat([pd.read_parquet(p) for p in pair_tables], ignore_index=True)
    contexts = pd.concat([pd.read_parquet(p) for p in context_tables], ignore_index=True)
    normaliser = Normaliser.load(activations.normaliser)
    directions: dict[str, dict[int, torch.Tensor]] = {}
    for path in weights:
        model, extra = load_model(path)
        directions.setdefault(model.kind, {})[int(extra["seed"])] = decoder_directions(model, normaliser)
    data = pairs[pairs["data"] == "data"]
    replications = [replication({int(s): t for s, t in part.groupby("seed")}, directions[model],
                                settings.match_cosine).assign(model=model)
                    for model, part in data.groupby("model", sort=True) if model in directions]
    replicated = pd.concat(replications, ignore_index=True) if replications else \
        pd.DataFrame(columns=[column.name for column in INTEGRATION_REPLICATION.columns])
    top = (data[data["flagged"]].sort_values("z", ascending=False)
           .drop_duplicates(["model", "seed", "latent_a", "latent_b"])  # a pair's strongest target
           .groupby(["model", "seed"], sort=True).head(settings.top_pairs))
    shown = contexts.merge(top[["model", "seed", "latent_a", "latent_b", "target", "z", "estimate", "ci_low",
                                "ci_high", "explained_share"]], on=["model", "seed", "latent_a", "latent_b"])
    tokenizer = AutoTokenizer.from_pretrained(str(lm_dir), local_files_only=True)
    shown = context_text(shown, ActivationStore(activations.split("test")), tokenizer, settings.context_tokens)
    summary = lm_summary(pairs)
    write_table(summary, out.summary, INTEGRATION_SUMMARY)
    write_table(pairs, out.pairs, INTEGRATION_PAIRS)
    write_table(replicated, out.replication, INTEGRATION_REPLICATION)
    write_table(shown, out.contexts, INTEGRATION_SHOWN_CONTEXTS)
    plots.integration_z(pairs, out.figures.pair_z)
    plots.integration_contexts(shown, out.figures.top_pairs)
    return summary
