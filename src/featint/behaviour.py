"""Behavioural evaluation: each reconstruction spliced into the LM at the hook, on held-out (test) text.

Per trained model and seed, conditions are the model's reconstruction components (``sae`` = its own SAE path,
``sae+linear``, ``sae+interaction``, ``full``) and, for each, an **epsilon-random** control: the clean residual
plus a uniformly random unit direction scaled to that condition's own per-token error norm
``||x - x_hat||`` in raw activation space (Gurnee's "pathological errors" test), ``epsilon_draws`` times.
References, once per run: the clean model, zero-ablation and mean-ablation (raw train mean) of the residual
at the spliced positions.

Per token: KL(clean || spliced) over the full vocabulary (float32 log-softmax, float64 sums, chunked), the spliced
model's next-token cross-entropy, and the error norm. The clean model runs to the hook once per batch of windows;
every condition then runs only the blocks after the hook (:class:`featint.splice.ModelContinuation`).

Summaries (:func:`summarise`) resample **windows** (sequences), not tokens, with the same bootstrap rows for
every condition, model and seed, so every difference and ratio is paired. The paper's unpaired per-token
t-test is reported beside them, labelled as such.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from featint import stats
from featint.activations import ActivationStore
from featint.config import BehaviourSettings, Settings
from featint.errors import FeatintError, ShardError
from featint.io import read_parquet_metadata
from featint.kinds import BASELINE, SAE_COMPONENT
from featint.layout import ActivationsFolder, BehaviourFigures
from featint.lm import HookPoint, load_bridge
from featint.models import FeatureModel, load_model
from featint.normaliser import Normaliser
from featint.splice import ModelContinuation, spliced_residual
from featint.tables import (
    BEHAVIOUR_SUMMARY,
    BEHAVIOUR_TOKENS,
    DOCUMENT_WINDOW_BOOTSTRAP,
    OWN_SAE,
    PAPER_UNPAIRED_T,
    write_table,
)

log = logging.getLogger(__name__)

REFERENCE_CONDITIONS: tuple[str, ...] = ("clean", "zero_ablation", "mean_ablation")
EPSILON_PREFIX = "epsilon:"


class BehaviourError(FeatintError):
    """NaN logits, an empty evaluation set, or a model that does not belong to these activations."""


# ---------------------------------------------------------------------------------------------------------
# Per-token metrics


@dataclass
class CleanDistribution:
    """log-probabilities and probabilities [N, vocab] of the clean model (float32), computed once per batch."""

    log_p: torch.Tensor
    p: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> CleanDistribution:
        log_p = torch.log_softmax(logits.float(), dim=-1)
        return cls(log_p, log_p.exp())


def kl_and_ce(clean: CleanDistribution | None, logits: torch.Tensor, targets: torch.Tensor | None,
              chunk_tokens: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: KL(clean || softmax(logits)) = sum_v p_v (log p_v - log q_v) (NaN without ``clean``) and the
    cross-entropy -log q(target) (target -1 or no targets -> NaN). [N, vocab] inputs, float64 [N] outputs. The
    log-softmax and the elementwise differences are float32 (no cancellation: differences are taken before
    weighting), the sums float64; identical logits give exactly 0."""
    n = logits.shape[0]
    kl = torch.full((n,), float("nan"), dtype=torch.float64, device=logits.device)
    ce = torch.full((n,), float("nan"), dtype=torch.float64, device=logits.device)
    for start in range(0, n, chunk_tokens):
        stop = min(n, start + chunk_tokens)
        log_q = torch.log_softmax(logits[start:stop].float(), dim=-1)
        if clean is not None:
            kl[start:stop] = ((clean.log_p[start:stop] - log_q) * clean.p[start:stop]).sum(-1, dtype=torch.float64)
        if targets is not None:
            t = targets[start:stop]
            has = t >= 0
            if has.any():
                ce[start:stop][has] = -log_q[has].gather(1, t[has, None]).squeeze(1).double()
    return kl, ce


def kl_per_token(clean_logits: torch.Tensor, other_logits: torch.Tensor, chunk_tokens: int = 64) -> torch.Tensor:
    """KL(clean || other) per token, [..., vocab] -> [...] (nats)."""
    if clean_logits.shape != other_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(clean_logits.shape)} vs {tuple(other_logits.shape)}")
    vocab = clean_logits.shape[-1]
    clean = CleanDistribution.from_logits(clean_logits.reshape(-1, vocab))
    kl, _ = kl_and_ce(clean, other_logits.reshape(-1, vocab), None, chunk_tokens)
    return kl.reshape(clean_logits.shape[:-1])


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, chunk_tokens: int = 64) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, t + 1] from logits[:, t]; returns [B, T - 1] (nats)."""
    vocab = logits.shape[-1]
    _, ce = kl_and_ce(None, logits[:, :-1, :].reshape(-1, vocab), tokens[:, 1:].reshape(-1), chunk_tokens)
    return ce.reshape(tokens.shape[0], tokens.shape[1] - 1)


# ---------------------------------------------------------------------------------------------------------
# The evaluated windows


@dataclass
class EvaluationWindows:
    """Test windows evaluated: ``tokens`` [W, P] (BOS first), ``targets`` [W, P] (next token, -1 if unknown),
    ``spliced`` [W, P] (positions replaced and averaged), ``stored`` [W, P, d] (the stored activations)."""

    window_ids: np.ndarray
    doc_ids: np.ndarray  # [W], the document of each window (the bootstrap resamples documents)
    tokens: torch.Tensor
    targets: torch.Tensor
    spliced: torch.Tensor
    stored: torch.Tensor

    @property
    def n_documents(self) -> int:
        return int(np.unique(self.doc_ids).size)

    @property
    def n_positions(self) -> int:
        return int(self.tokens.shape[1])

    def batches(self, batch_tokens: int) -> Iterator[slice]:
        per_batch = max(1, batch_tokens // self.n_positions)
        for start in range(0, len(self.window_ids), per_batch):
            yield slice(start, min(len(self.window_ids), start + per_batch))


def spread_over_documents(doc_of_window: pd.Series, n_windows: int) -> np.ndarray:
    """Up to ``n_windows`` window ids (index of ``doc_of_window``) spread over **every** document: each
    document gets an equal share (capped by what it has, the rest passed on to the longer ones), taken evenly
    spaced inside it. Sorted."""
    by_doc = {doc: np.sort(group.index.to_numpy()) for doc, group in doc_of_window.groupby(doc_of_window)}
    have = {doc: ids.size for doc, ids in by_doc.items()}
    share = dict.fromkeys(by_doc, 0)
    left = min(n_windows, sum(have.values()))
    while left > 0:
        open_docs = [doc for doc in by_doc if share[doc] < have[doc]]
        for doc in open_docs[:left]:
            share[doc] += 1
        left -= min(left, len(open_docs))
    chosen = [ids[np.unique(np.linspace(0, ids.size - 1, share[doc]).round().astype(int))]
              for doc, ids in by_doc.items() if share[doc] > 0]
    return np.sort(np.concatenate(chosen))


def evaluation_windows(store: ActivationStore, settings: BehaviourSettings) -> EvaluationWindows:
    """``settings.windows`` windows spread over every document of the split (:func:`spread_over_documents`),
    their first ``settings.positions`` positions."""
    tokens = store.tokens()
    if len(tokens) == 0:
        raise BehaviourError(f"{store.directory} holds no token; extract the test split with "
                             "extraction.max_tokens.test > 0.")
    length = store.meta.context_length
    positions = length if settings.positions is None else min(settings.positions, length)
    complete = tokens.groupby("window")["position"].max() >= positions - 1
    candidates = np.sort(complete[complete].index.to_numpy())
    if candidates.size == 0:
        raise BehaviourError(f"no window in {store.directory} has {positions} positions; lower behaviour.positions.")
    doc_of_window = tokens.groupby("window")["doc_id"].first()
    window_ids = spread_over_documents(doc_of_window.loc[candidates], settings.windows)
    rows = tokens[tokens["window"].isin(window_ids) & (tokens["position"] <= positions)]
    rows = rows.sort_values(["window", "position"])
    mask = store.token_set_mask(settings.token_set)
    if settings.replace_position_zero:
        mask = mask | tokens["is_position_zero"].to_numpy()
    W = len(window_ids)
    index = {w: i for i, w in enumerate(window_ids)}
    token_grid = np.full((W, positions + 1), -1, dtype=np.int64)
    spliced = np.zeros((W, positions), dtype=bool)
    w_idx = rows["window"].map(index).to_numpy()
    p_idx = rows["position"].to_numpy().astype(np.int64)
    token_grid[w_idx, p_idx] = rows["token_id"].to_numpy()
    inside = p_idx < positions
    spliced[w_idx[inside], p_idx[inside]] = mask[rows["row"].to_numpy()[inside]]
    if not spliced.any():
        raise BehaviourError(f"no {settings.token_set} token in the first {positions} positions of the evaluated "
                             f"windows of {store.directory}; raise behaviour.windows or behaviour.positions.")
    stored = torch.zeros(W, positions, store.meta.d_model)
    wanted = np.zeros(store.n_rows, dtype=bool)
    wanted[rows["row"].to_numpy()[inside]] = True
    row_to_cell = {r: (w, p) for r, w, p in zip(rows["row"].to_numpy()[inside], w_idx[inside], p_idx[inside])}
    for row_ids, vectors in store.iter_shards(wanted):
        cells = np.array([row_to_cell[r] for r in row_ids])
        stored[cells[:, 0], cells[:, 1]] = vectors
    return EvaluationWindows(window_ids=window_ids, doc_ids=doc_of_window.loc[window_ids].to_numpy(),
                             tokens=torch.from_numpy(token_grid[:, :positions].copy()),
                             targets=torch.from_numpy(token_grid[:, 1:].copy()),
                             spliced=torch.from_numpy(spliced), stored=stored)


def check_residual_matches_store(residual: torch.Tensor, stored: torch.Tensor, store_directory: str | Path,
                                 hook: HookPoint, tolerance: float) -> float:
    """The LM's residual at the hook must equal the stored activations of the same tokens (same model, hook
    and dtype as at extraction); returns the largest relative difference per token."""
    difference = (residual - stored).norm(dim=-1) / stored.norm(dim=-1).clamp_min(1e-6)
    worst = float(difference.max())
    if not worst <= tolerance:
        raise ShardError(
            f"the residual at {hook.name} of the evaluated windows differs from the activations stored in "
            f"{store_directory} (largest relative difference {worst:.3g} > behaviour.residual_tolerance "
            f"{tolerance}); the model, hook or dtype differs from extraction: re-extract the activations or "
            "restore the model/hook settings they were extracted with."
        )
    return worst


# ---------------------------------------------------------------------------------------------------------
# Conditions


@dataclass
class SplicedCondition:
    condition: str  # "full", "epsilon:full", "zero_ablation", ...
    kind: str  # reconstruction | epsilon_random | reference
    component: str  # the reconstruction component a condition (or its epsilon control) belongs to
    draw: int  # epsilon draw, -1 otherwise
    residual: torch.Tensor  # [B, P, d]
    error_norm: torch.Tensor  # [B, P], NaN where not spliced


def _error_norm(spliced: torch.Tensor, clean: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    norm = (spliced - clean).norm(dim=-1)
    return torch.where(positions, norm, torch.full_like(norm, float("nan")))


def _generator(*keys: object) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(zlib.crc32("/".join(str(k) for k in keys).encode()))
    return generator


def model_conditions(model: FeatureModel, normaliser: Normaliser, clean: torch.Tensor, positions: torch.Tensor,
                     components: list[str], draws: int, seed_keys: tuple[object, ...]) -> Iterator[SplicedCondition]:
    """Each component spliced through the one splice, followed by its epsilon-random controls."""
    for component in components:
        spliced = spliced_residual(clean, lambda z, c=component: model(z).component(c), normaliser, positions)
        error_norm = _error_norm(spliced, clean, positions)
        yield SplicedCondition(component, "reconstruction", component, -1, spliced, error_norm)
        norms = error_norm[positions][:, None]
        for draw in range(draws):
            # drawn on the CPU generator, then moved: a GPU run draws the same directions as a CPU run
            direction = torch.randn(int(positions.sum()), clean.shape[-1],
                                    generator=_generator(*seed_keys, component, draw)).to(clean.device)
            direction = direction / direction.norm(dim=-1, keepdim=True)
            noisy = spliced_residual(clean, lambda x, u=direction, n=norms: x + n * u, None, positions)
            yield SplicedCondition(EPSILON_PREFIX + component, "epsilon_random", component, draw, noisy,
                                   _error_norm(noisy, clean, positions))


def reference_conditions(normaliser: Normaliser, clean: torch.Tensor,
                         positions: torch.Tensor) -> Iterator[SplicedCondition]:
    """Clean model, zero-ablation and mean-ablation (raw train mean) at the spliced positions."""
    yield SplicedCondition("clean", "reference", "clean", -1, clean, _error_norm(clean, clean, positions))
    zero = spliced_residual(clean, torch.zeros_like, None, positions)
    yield SplicedCondition("zero_ablation", "reference", "zero_ablation", -1, zero, _error_norm(zero, clean, positions))
    mean = spliced_residual(clean, lambda x: normaliser.raw_mean.to(x).expand_as(x), None, positions)
    yield SplicedCondition("mean_ablation", "reference", "mean_ablation", -1, mean, _error_norm(mean, clean, positions))


# ---------------------------------------------------------------------------------------------------------
# Running conditions


def evaluate_conditions(continuation: ModelContinuation, windows: EvaluationWindows, store_directory: str | Path,
                        settings: BehaviourSettings, make_conditions: Any, n_conditions: int,
                        description: str) -> pd.DataFrame:
    """Per-token KL, CE and error norm of every condition ``make_conditions(clean_residual, positions,
    batch_index)`` yields, batch of windows by batch of windows: the clean model runs to the hook once per
    batch, then conditions are stacked (up to ``batch_tokens`` positions per call) through the blocks after it."""
    frames: list[pd.DataFrame] = []
    batches = list(windows.batches(settings.batch_tokens))
    P = windows.n_positions
    worst = 0.0
    with tqdm(total=len(batches) * n_conditions, desc=description, unit="condition", mininterval=5) as bar:
        for batch_index, window_slice in enumerate(batches):
            device = continuation.device  # the windows live on the CPU; each batch moves to the LM's device
            tokens = windows.tokens[window_slice].to(device)
            positions = windows.spliced[window_slice].to(device)
            targets = windows.targets[window_slice].reshape(-1).to(device)
            clean = continuation.residual(tokens)
            worst = max(worst, check_residual_matches_store(clean, windows.stored[window_slice].to(device),
                                                            store_directory, continuation.hook,
                                                            settings.residual_tolerance))
            clean_logits = continuation.logits(clean)
            vocab = clean_logits.shape[-1]
            clean_distribution = CleanDistribution.from_logits(clean_logits.reshape(-1, vocab))
            del clean_logits
            window_grid = np.repeat(windows.window_ids[window_slice], P).astype(np.int32)
            doc_grid = np.repeat(windows.doc_ids[window_slice], P).astype(np.int32)
            position_grid = np.tile(np.arange(P), tokens.shape[0]).astype(np.int16)
            per_call = conditions_per_call(settings.batch_tokens, tokens.shape[0], P)
            for group in _groups(make_conditions(clean, positions, batch_index), per_call):
                stacked = continuation.logits(torch.cat([c.residual for c in group]))
                for condition, logits in zip(group, stacked.reshape(len(group), -1, vocab).unbind(0)):
                    kl, ce = kl_and_ce(clean_distribution, logits, targets, settings.kl_chunk_tokens)
                    # a NaN or inf logit makes its token's KL non-finite (the sum runs over the whole
                    # vocabulary), so checking the [N] KLs checks the [N, vocab] logits at no cost
                    if not torch.isfinite(kl).all():
                        raise BehaviourError(
                            f"the LM produced NaN/inf logits under condition '{condition.condition}' (draw "
                            f"{condition.draw}); the reconstruction is not finite: check the model's weights "
                            "and the normaliser.")
                    frames.append(pd.DataFrame({
                        "condition": condition.condition, "condition_kind": condition.kind,
                        "component": condition.component, "draw": np.int16(condition.draw),
                        "doc_id": doc_grid, "window": window_grid, "position": position_grid,
                        "spliced": positions.reshape(-1).cpu().numpy(), "kl": kl.cpu().numpy(),
                        "ce": ce.cpu().numpy(), "error_norm": condition.error_norm.reshape(-1).double().cpu().numpy(),
                    }))
                    bar.update(1)
    log.info("residual at %s matches the stored activations (largest relative difference %.2e)",
             continuation.hook.name, worst)
    return pd.concat(frames, ignore_index=True)


def conditions_per_call(batch_tokens: int, n_windows: int, n_positions: int) -> int:
    """How many conditions of a batch of ``n_windows`` windows go through the blocks after the hook in one
    call: as many as fit in ``batch_tokens`` positions, at least one."""
    return max(1, batch_tokens // (n_windows * n_positions))


def _groups(conditions: Iterator[SplicedCondition], size: int) -> Iterator[list[SplicedCondition]]:
    group: list[SplicedCondition] = []
    for condition in conditions:
        group.append(condition)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _setup(settings: Settings, lm_dir: str | Path, activations_dir: str | Path,
           device: torch.device | str) -> tuple[ModelContinuation, EvaluationWindows, ActivationStore, Normaliser]:
    activations = ActivationsFolder(activations_dir)
    store = ActivationStore(activations.split("test"))
    normaliser = Normaliser.load(activations.normaliser)
    hook = HookPoint.from_settings(settings.hook)
    if store.meta.hook_name != hook.name:
        raise ShardError(f"{store.directory} holds {store.meta.hook_name} but the config's hook is {hook.name}; "
                         "use the config the activations were extracted with.")
    windows = evaluation_windows(store, settings.behaviour)
    bridge = load_bridge(lm_dir, settings.model.dtype, device)
    continuation = ModelContinuation(bridge, hook, check_tokens=windows.tokens[:2].to(device))
    log.info("evaluating %d test windows from %d documents x %d positions (%d spliced tokens)",
             len(windows.window_ids), windows.n_documents, windows.n_positions, int(windows.spliced.sum()))
    return continuation, windows, store, normaliser


def _metadata(settings: Settings, windows: EvaluationWindows, **extra: Any) -> dict[str, Any]:
    return {"behaviour": settings.raw["behaviour"], "n_windows": len(windows.window_ids),
            "n_positions": windows.n_positions, **extra}


@torch.no_grad()
def run_reference(settings: Settings, lm_dir: str | Path, activations_dir: str | Path, out_path: str | Path,
                  run: str, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: per-token table of the clean model, zero- and mean-ablation on the test windows."""
    continuation, windows, store, normaliser = _setup(settings, lm_dir, activations_dir, device)
    frame = evaluate_conditions(
        continuation, windows, store.directory, settings.behaviour,
        lambda clean, positions, _batch: reference_conditions(normaliser, clean, positions),
        len(REFERENCE_CONDITIONS), "reference conditions")
    frame.insert(0, "run", run)
    frame.insert(1, "model", "reference")
    frame.insert(2, "seed", np.int32(-1))
    write_table(frame, out_path, BEHAVIOUR_TOKENS, metadata=_metadata(settings, windows))
    return frame


@torch.no_grad()
def run_behaviour(settings: Settings, lm_dir: str | Path, weights_path: str | Path, activations_dir: str | Path,
                  out_path: str | Path, run: str, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: per-token table of one trained model's conditions on the test windows."""
    from featint.evaluation import check_model_matches_store, components_of

    continuation, windows, store, normaliser = _setup(settings, lm_dir, activations_dir, device)
    model, extra = load_model(weights_path, continuation.device)
    check_model_matches_store(model, extra, store, weights_path)
    model.eval()
    components = components_of(model)
    draws = settings.behaviour.epsilon_draws
    seed = int(extra["seed"])
    frame = evaluate_conditions(
        continuation, windows, store.directory, settings.behaviour,
        lambda clean, positions, batch: model_conditions(model, normaliser, clean, positions, components, draws,
                                                         (settings.seed, model.kind, seed, batch)),
        len(components) * (1 + draws), f"{model.kind} seed {seed}")
    frame.insert(0, "run", run)
    frame.insert(1, "model", model.kind)
    frame.insert(2, "seed", np.int32(seed))
    write_table(frame, out_path, BEHAVIOUR_TOKENS, metadata=_metadata(settings, windows, weights=str(weights_path)))
    return frame


# ---------------------------------------------------------------------------------------------------------
# Summaries with uncertainty over windows


@dataclass
class WindowSums:
    """Per (model, seed, condition) sums over the averaged positions of each window; eps draws averaged."""

    keys: pd.DataFrame  # model, seed, condition, condition_kind, component
    kl: np.ndarray  # [K, W]
    ce: np.ndarray  # [K, W]
    n_kl: np.ndarray  # [W]
    n_ce: np.ndarray  # [W]
    window_ids: np.ndarray  # [W]
    doc_ids: np.ndarray  # [W], the document of each window

    def column(self, model: str, seed: int, condition: str) -> int | None:
        hit = self.keys.index[(self.keys["model"] == model) & (self.keys["seed"] == seed)
                              & (self.keys["condition"] == condition)]
        return int(hit[0]) if len(hit) else None


def window_sums(tokens: pd.DataFrame) -> WindowSums:
    """Reduce per-token rows (spliced positions only) to per-window sums."""
    used = tokens[tokens["spliced"]]
    if used.empty:
        raise BehaviourError("no spliced token in the behaviour tables; nothing to summarise.")
    keys_cols = ["model", "seed", "condition", "condition_kind", "component"]
    n_draws = used.groupby(keys_cols)["draw"].nunique().rename("n_draws")
    used = used.assign(has_ce=used["ce"].notna(), ce0=used["ce"].fillna(0.0))
    grouped = used.groupby(keys_cols + ["window"]).agg(kl=("kl", "sum"), ce=("ce0", "sum"),
                                                       n_kl=("kl", "size"), n_ce=("has_ce", "sum")).reset_index()
    grouped = grouped.merge(n_draws.reset_index(), on=keys_cols)
    for column in ("kl", "ce", "n_kl", "n_ce"):
        grouped[column] = grouped[column] / grouped["n_draws"]
    window_ids = np.sort(grouped["window"].unique())
    if "doc_id" not in used.columns:
        raise BehaviourError("the behaviour tables have no doc_id column (written by an older featint); rerun "
                             "them (snakemake --forcerun behaviour_reference behaviour).")
    doc_ids = used.groupby("window")["doc_id"].first().loc[window_ids].to_numpy()
    keys = grouped[keys_cols].drop_duplicates().sort_values(keys_cols).reset_index(drop=True)
    kl = grouped.pivot_table(index=keys_cols, columns="window", values="kl", fill_value=np.nan)
    ce = grouped.pivot_table(index=keys_cols, columns="window", values="ce", fill_value=np.nan)
    counts = grouped.pivot_table(index=keys_cols, columns="window", values="n_kl")
    counts_ce = grouped.pivot_table(index=keys_cols, columns="window", values="n_ce")
    index = pd.MultiIndex.from_frame(keys)
    kl, ce = kl.reindex(index)[window_ids].to_numpy(), ce.reindex(index)[window_ids].to_numpy()
    counts, counts_ce = counts.reindex(index)[window_ids].to_numpy(), counts_ce.reindex(index)[window_ids].to_numpy()
    if np.isnan(kl).any() or not (np.allclose(counts, counts[0]) and np.allclose(counts_ce, counts_ce[0])):
        raise BehaviourError("the behaviour tables do not cover the same windows and positions (different "
                             "behaviour settings between rules?); rerun them with one config.")
    return WindowSums(keys, kl, ce, counts[0], counts_ce[0], window_ids, doc_ids)


#: What each (metric, reference) of the summary measures; ``reference`` is None where nothing is compared.
SUMMARY_METRICS: dict[tuple[str, str | None], str] = {
    ("mean_kl", None): "mean KL(clean || spliced) per token, nats",
    ("mean_ce", None): "mean next-token cross-entropy of the spliced model, nats",
    ("delta_ce", None): "mean CE(spliced) - CE(clean)",
    ("ce_loss_recovered", None): "(CE_zero - CE) / (CE_zero - CE_clean)",
    ("pathology_ratio", "epsilon_own_norm"): "mean KL(condition) / mean KL(epsilon-random at the condition's own "
                                              "error norm)",
    ("pathology_ratio", "epsilon_sae_norm"): "mean KL(condition) / mean KL(epsilon-random at the SAE path's error "
                                              "norm) - the paper's definition",
    ("improvement_kl", "own_sae"): "1 - KL(condition) / KL(the same model's SAE path) - the paper's definition",
    ("improvement_kl", "standard"): "1 - KL(condition) / KL(the standalone standard SAE, same seed)",
    ("improvement_ce", "own_sae"): "1 - CE(condition) / CE(own SAE path) - the paper's definition",
    ("improvement_ce", "standard"): "1 - CE(condition) / CE(standalone standard SAE)",
    ("improvement_delta_ce", "standard"): "1 - delta CE(condition) / delta CE(standalone standard SAE)",
    ("paper_t", "epsilon_own_norm"): "the paper's unpaired per-token t statistic, KL(condition) vs its "
                                      "epsilon-random rows",
    ("paper_t", "own_sae"): "the paper's unpaired per-token t statistic, KL(condition) vs the model's SAE path",
}


def summarise(tokens: pd.DataFrame, run: str, n_boot: int, level: float, seed: int) -> pd.DataFrame:
    """Tidy summary: one row per (model, seed, condition, metric, reference) with the estimate, a percentile CI of a
    two-stage cluster bootstrap (test documents, then windows inside each drawn document; paired: one set of
    resampling rows for everything), per seed and averaged over seeds (``seed`` = NA); plus the paper's
    unpaired per-token t-tests, labelled ``method = paper_unpaired_t``."""
    sums = window_sums(tokens)
    weights = stats.nested_cluster_bootstrap_weights(sums.doc_ids, n_boot, seed)
    denominator_kl = weights @ sums.n_kl
    denominator_ce = weights @ sums.n_ce
    mean_kl = (weights @ sums.kl.T) / denominator_kl[:, None]  # [1 + B, K]
    mean_ce = (weights @ sums.ce.T) / denominator_ce[:, None]
    ref_seed = -1
    clean_ce = mean_ce[:, sums.column("reference", ref_seed, "clean")]
    zero_ce = mean_ce[:, sums.column("reference", ref_seed, "zero_ablation")]

    per_seed: dict[tuple[str, int, str, str, str | None], np.ndarray] = {}
    for k, key in sums.keys.iterrows():
        model, model_seed, condition = key["model"], int(key["seed"]), key["condition"]
        values: dict[tuple[str, str | None], np.ndarray] = {
            ("mean_kl", None): mean_kl[:, k], ("mean_ce", None): mean_ce[:, k],
            ("delta_ce", None): mean_ce[:, k] - clean_ce,
            ("ce_loss_recovered", None): (zero_ce - mean_ce[:, k]) / (zero_ce - clean_ce)}
        if key["condition_kind"] == "reconstruction":
            eps = sums.column(model, model_seed, EPSILON_PREFIX + condition)
            if eps is not None:
                values[("pathology_ratio", "epsilon_own_norm")] = mean_kl[:, k] / mean_kl[:, eps]
            eps_sae = sums.column(model, model_seed, EPSILON_PREFIX + "sae")
            if eps_sae is not None:
                values[("pathology_ratio", "epsilon_sae_norm")] = mean_kl[:, k] / mean_kl[:, eps_sae]
            own = sums.column(model, model_seed, "sae")
            if condition != "sae" and own is not None:
                values[("improvement_kl", OWN_SAE)] = stats.improvement(mean_kl[:, k], mean_kl[:, own])
                values[("improvement_ce", OWN_SAE)] = stats.improvement(mean_ce[:, k], mean_ce[:, own])
            standard = sums.column(BASELINE, model_seed, SAE_COMPONENT)
            if model != BASELINE and standard is not None:
                values[("improvement_kl", BASELINE)] = stats.improvement(mean_kl[:, k], mean_kl[:, standard])
                values[("improvement_ce", BASELINE)] = stats.improvement(mean_ce[:, k], mean_ce[:, standard])
                values[("improvement_delta_ce", BASELINE)] = stats.improvement(mean_ce[:, k] - clean_ce,
                                                                               mean_ce[:, standard] - clean_ce)
        for (metric, reference), replicates in values.items():
            per_seed[(model, model_seed, condition, metric, reference)] = replicates

    rows = []
    base = {"run": run, "n_documents": int(np.unique(sums.doc_ids).size), "n_windows": len(sums.window_ids),
            "n_tokens": int(sums.n_kl.sum()), "method": DOCUMENT_WINDOW_BOOTSTRAP, "ci_level": level}
    for item in stats.per_seed_and_pooled(per_seed, level, pooled=lambda model: model != "reference"):
        condition, metric, reference = item.rest
        rows.append({**base, "model": item.model, "seed": pd.NA if item.seed is None else item.seed,
                     "n_seeds": item.n_seeds, "condition": condition, "metric": metric, "reference": reference,
                     **_interval_columns(item.interval)})
    rows += _paper_t_tests(tokens, run)
    summary = pd.DataFrame(rows)
    summary["seed"] = summary["seed"].astype("Int32")
    summary["description"] = [SUMMARY_METRICS.get((metric, None if pd.isna(reference) else reference), "")
                              for metric, reference in zip(summary["metric"], summary["reference"])]
    return summary


def summary_rows(summary: pd.DataFrame, metric: str, reference: str | None = None) -> pd.DataFrame:
    """The rows of a behaviour summary giving ``metric`` against ``reference`` (None: a metric without one)."""
    against = summary["reference"].isna() if reference is None else summary["reference"] == reference
    return summary[(summary["metric"] == metric) & against]


def _interval_columns(interval: stats.Interval) -> dict[str, float]:
    return {"estimate": interval.estimate, "ci_low": interval.low, "ci_high": interval.high, "se": interval.se}


def _paper_t_tests(tokens: pd.DataFrame, run: str) -> list[dict[str, Any]]:
    """The paper's statistics: scipy ttest_ind (equal variances, unpaired) on per-token KL rows, condition vs
    the model's own SAE path and vs its epsilon-random rows (all draws pooled); tokens treated as independent."""
    used = tokens[tokens["spliced"] & (tokens["condition_kind"] != "reference")]
    rows = []
    for (model, model_seed), group in used.groupby(["model", "seed"]):
        kl = {condition: g["kl"].to_numpy() for condition, g in group.groupby("condition")}
        for condition in [c for c in kl if not c.startswith(EPSILON_PREFIX)]:
            comparisons = {"epsilon_own_norm": kl.get(EPSILON_PREFIX + condition)}
            if condition != "sae":
                comparisons["own_sae"] = kl.get("sae")
            for reference, other in comparisons.items():
                if other is None:
                    continue
                t, p = stats.unpaired_t_test(kl[condition], other)
                rows.append({"run": run, "model": model, "seed": int(model_seed), "n_seeds": 1,
                             "condition": condition, "metric": "paper_t", "reference": reference, "estimate": t,
                             "p_value": p,
                             "n_documents": int(group["doc_id"].nunique()),
                             "n_windows": int(group["window"].nunique()), "n_tokens": int(kl[condition].size),
                             "method": PAPER_UNPAIRED_T})
    return rows


def gather(token_tables: list[str | Path], reference_table: str | Path, out_summary: str | Path,
           figures: BehaviourFigures, run: str, settings: BehaviourSettings, seed: int) -> pd.DataFrame:
    """Stage entry point: the summary table over every model and seed, and the behaviour ``figures``."""
    from featint import plots

    frames = [pd.read_parquet(reference_table)] + [pd.read_parquet(p) for p in token_tables]
    settings_used = {str(read_parquet_metadata(p).get("behaviour")) for p in [reference_table, *token_tables]}
    if len(settings_used) != 1:
        raise BehaviourError("the behaviour tables were computed with different behaviour settings; rerun them "
                             "(snakemake --forcerun behaviour_reference behaviour).")
    tokens = pd.concat(frames, ignore_index=True)
    summary = summarise(tokens, run, settings.bootstrap, settings.ci_level, seed)
    write_table(summary, out_summary, BEHAVIOUR_SUMMARY, metadata={"behaviour": settings.__dict__})
    plots.kl_distributions(tokens, figures.kl_distributions)
    plots.behaviour_ratios(summary, figures.pathology_ratios)
    plots.kl_vs_error_norm(tokens, figures.kl_vs_error_norm)
    return summary
