"""Reconstruction metrics on the test split (never train), streamed shard by shard.

Per model, seed, token set and component (``sae`` = the model's own SAE path, ``sae+linear``,
``sae+interaction``, ``full``):

* ``mse``: mean squared error per element, normalised space (the training loss);
* ``fvu``: ||x - x_hat||^2 / ||x - mean(x)||^2, normalised space; ``fvu_raw`` and ``mse_raw`` in raw space;
* ``variance_explained_paper``: the author's definition, 1 - sum_d Var(x_d - x_hat_d) / sum_d Var(x_d)
  (a constant offset is not penalised);

and per model: ``l0``, ``dead_fraction`` (features that never fire on the test tokens), the NFM output
magnitudes mean|linear|, mean|interaction| and the paper's "linear share" mean|L| / (mean|L| + mean|I|), and
``improvement_mse`` with ``reference = own_sae``: 1 - MSE(full) / MSE(own SAE path) (the paper's 41.3%
definition). The honest improvement, against the independently trained standard SAE (``reference =
standard``), is added when the table is gathered. ``reference`` is empty (NA) on every other row.

Token sets: ``selected`` (position 0 and massive-norm outliers excluded, the training distribution) and
``with_outliers`` (position 0 excluded only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from featint import stats
from featint.activations import TOKEN_SETS, ActivationStore
from featint.config import EvaluationSettings
from featint.errors import ShardError
from featint.kinds import BASELINE, FULL_COMPONENT, SAE_COMPONENT, comparisons, final_component
from featint.layout import ActivationsFolder, MetricsFolder
from featint.models import FeatureModel, load_model
from featint.normaliser import Normaliser
from featint.tables import (
    COMPARISON_TABLE,
    MODEL_COMPONENT,
    OWN_SAE,
    PARAMETERS,
    RECONSTRUCTION,
    RECONSTRUCTION_DOCUMENTS,
    RECONSTRUCTION_SUMMARY,
    write_table,
)


@dataclass
class _Accumulator:
    d: int
    n: int = 0
    sum_x: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_x2: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_x_raw: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_x2_raw: np.ndarray = field(default=None)  # type: ignore[assignment]
    residual: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sum_x", "sum_x2", "sum_x_raw", "sum_x2_raw"):
            setattr(self, name, np.zeros(self.d))

    def add_inputs(self, x: torch.Tensor, x_raw: torch.Tensor) -> None:
        xd, xr = x.double(), x_raw.double()
        self.n += x.shape[0]
        self.sum_x += xd.sum(0).numpy()
        self.sum_x2 += (xd * xd).sum(0).numpy()
        self.sum_x_raw += xr.sum(0).numpy()
        self.sum_x2_raw += (xr * xr).sum(0).numpy()

    def add_residual(self, component: str, r: torch.Tensor, r_raw: torch.Tensor) -> None:
        slot = self.residual.setdefault(component, {k: np.zeros(self.d) for k in ("r", "r2", "r2_raw")})
        rd = r.double()
        slot["r"] += rd.sum(0).numpy()
        slot["r2"] += (rd * rd).sum(0).numpy()
        slot["r2_raw"] += (r_raw.double() ** 2).sum(0).numpy()

    def metrics(self) -> dict[str, dict[str, float]]:
        n = self.n
        var_x = self.sum_x2 / n - (self.sum_x / n) ** 2
        total_var = (self.sum_x2 - self.sum_x**2 / n).sum()
        total_var_raw = (self.sum_x2_raw - self.sum_x_raw**2 / n).sum()
        out = {}
        for component, slot in self.residual.items():
            var_r = slot["r2"] / n - (slot["r"] / n) ** 2
            out[component] = {
                "mse": float(slot["r2"].sum() / (n * self.d)),
                "fvu": float(slot["r2"].sum() / total_var),
                "mse_raw": float(slot["r2_raw"].sum() / (n * self.d)),
                "fvu_raw": float(slot["r2_raw"].sum() / total_var_raw),
                "variance_explained_paper": float(1.0 - var_r.sum() / var_x.sum()),
            }
        return out


def check_model_matches_store(model: FeatureModel, extra: dict[str, Any], store: ActivationStore,
                              weights_path: str | Path) -> None:
    """A checkpoint trained at another hook point or width than these activations is an error."""
    if extra.get("hook_name") != store.meta.hook_name or model.sae.d_model != store.meta.d_model:
        raise ShardError(f"{weights_path} was trained at {extra.get('hook_name')} (d={model.sae.d_model}) but "
                         f"{store.directory} holds {store.meta.hook_name} (d={store.meta.d_model}); retrain it "
                         "on these activations or point to the activations it was trained on.")


def components_of(model: FeatureModel) -> list[str]:
    """The reconstruction components ``model`` is evaluated on: the SAE alone, each head term beside it, then
    the whole model."""
    if model.head is None:
        return [SAE_COMPONENT]
    parts = [SAE_COMPONENT]
    if model.head.use_linear:
        parts.append("sae+linear")
    if model.head.use_interaction:
        parts.append("sae+interaction")
    return parts + [FULL_COMPONENT]


@dataclass
class _ModelStats:
    n_features: int
    fired: torch.Tensor = field(default=None)  # type: ignore[assignment]
    l0_sum: float = 0.0
    linear_abs: float = 0.0
    interaction_abs: float = 0.0

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.n_features, dtype=torch.bool)


@dataclass
class _DocumentSums:
    """Per-document sums of one token set: enough to recompute FVU (normalised and raw) exactly over any
    multiset of documents, so intervals can resample test documents."""

    n_documents: int
    d: int
    n: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_x: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_sq: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_x_raw: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_sq_raw: np.ndarray = field(default=None)  # type: ignore[assignment]
    sse: dict[str, np.ndarray] = field(default_factory=dict)
    sse_raw: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        D, d = self.n_documents, self.d
        self.n, self.sum_sq, self.sum_sq_raw = np.zeros(D), np.zeros(D), np.zeros(D)
        self.sum_x, self.sum_x_raw = np.zeros((D, d)), np.zeros((D, d))

    def add(self, doc: np.ndarray, x: torch.Tensor, x_raw: torch.Tensor,
            residuals: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        xd, xr = x.double().numpy(), x_raw.double().numpy()
        np.add.at(self.n, doc, 1.0)
        np.add.at(self.sum_x, doc, xd)
        np.add.at(self.sum_x_raw, doc, xr)
        np.add.at(self.sum_sq, doc, (xd * xd).sum(1))
        np.add.at(self.sum_sq_raw, doc, (xr * xr).sum(1))
        for component, (r, r_raw) in residuals.items():
            np.add.at(self.sse.setdefault(component, np.zeros(self.n_documents)), doc,
                      (r.double() ** 2).sum(1).numpy())
            np.add.at(self.sse_raw.setdefault(component, np.zeros(self.n_documents)), doc,
                      (r_raw.double() ** 2).sum(1).numpy())

    def table(self, doc_ids: np.ndarray) -> pd.DataFrame:
        """One row per (component, document): tokens, sse, sst (about the token set's overall mean, so the
        documents' sst add up to the set's total), and both in raw space."""
        n_total = self.n.sum()

        def sst(sum_x: np.ndarray, sum_sq: np.ndarray) -> np.ndarray:
            mean = sum_x.sum(0) / n_total
            return sum_sq - 2.0 * sum_x @ mean + self.n * float(mean @ mean)

        seen = self.n > 0
        sst_norm, sst_raw = sst(self.sum_x, self.sum_sq), sst(self.sum_x_raw, self.sum_sq_raw)
        return pd.concat([pd.DataFrame({"component": component, "doc_id": doc_ids[seen],
                                        "tokens": self.n[seen].astype(np.int64), "sse": self.sse[component][seen],
                                        "sst": sst_norm[seen], "sse_raw": self.sse_raw[component][seen],
                                        "sst_raw": sst_raw[seen]}) for component in self.sse], ignore_index=True)


@torch.no_grad()
def reconstruction_metrics_by_set(model: FeatureModel, normaliser: Normaliser, store: ActivationStore,
                                  token_sets: tuple[str, ...] = TOKEN_SETS, chunk: int = 4096,
                                  documents: dict[str, pd.DataFrame] | None = None,
                                  ) -> dict[str, dict[str, float | dict[str, float]]]:
    """Metrics for several token sets in one pass: the model runs once on the union of the sets. When
    ``documents`` is a dict, it receives each token set's per-document sums (:meth:`_DocumentSums.table`)."""
    masks = {name: store.token_set_mask(name) for name in token_sets}
    union = np.logical_or.reduce(list(masks.values()))
    accumulators = {name: _Accumulator(store.meta.d_model) for name in token_sets}
    stats = {name: _ModelStats(model.sae.n_features) for name in token_sets}
    token_table = store.tokens().sort_values("row")
    doc_ids, doc_of_row = np.unique(token_table["doc_id"].to_numpy(), return_inverse=True)
    per_document = {name: _DocumentSums(doc_ids.size, store.meta.d_model) for name in token_sets}
    components = components_of(model)
    device = model.sae.W_enc.device  # the model runs where it lives; the float64 sums stay on the CPU
    for row_ids, raw_rows in store.iter_shards(union):
        for start in range(0, raw_rows.shape[0], chunk):
            x_raw = raw_rows[start : start + chunk]
            rows = row_ids[start : start + chunk]
            x = normaliser.apply(x_raw)
            rec = model(x.to(device)).cpu()
            hats = {c: rec.component(c) for c in components}
            hats_raw = {c: normaliser.invert(x_hat) for c, x_hat in hats.items()}
            for name in token_sets:
                keep = torch.from_numpy(np.array(masks[name][rows], dtype=bool))
                if not keep.any():
                    continue
                acc, st = accumulators[name], stats[name]
                acc.add_inputs(x[keep], x_raw[keep])
                residuals = {component: (x[keep] - x_hat[keep], x_raw[keep] - hats_raw[component][keep])
                             for component, x_hat in hats.items()}
                for component, (r, r_raw) in residuals.items():
                    acc.add_residual(component, r, r_raw)
                per_document[name].add(doc_of_row[rows[keep.numpy()]], x[keep], x_raw[keep], residuals)
                values, indices = rec.code.values[keep], rec.code.indices[keep]
                active = values > 0
                st.fired[indices[active]] = True
                st.l0_sum += float(active.sum())
                if rec.linear is not None:
                    st.linear_abs += float(rec.linear[keep].abs().sum())
                if rec.interaction is not None:
                    st.interaction_abs += float(rec.interaction[keep].abs().sum())
    if documents is not None:
        for name in token_sets:
            documents[name] = per_document[name].table(doc_ids)
    return {name: _finish(model, accumulators[name], stats[name]) for name in token_sets}


def _finish(model: FeatureModel, acc: _Accumulator, st: _ModelStats) -> dict[str, float | dict[str, float]]:
    n, d = acc.n, acc.d
    scalars: dict[str, float] = {"tokens": float(n), "l0": st.l0_sum / n,
                                 "dead_fraction": float(1.0 - st.fired.float().mean())}
    if model.nfm is not None:
        scalars["linear_magnitude"] = st.linear_abs / (n * d)
        scalars["interaction_magnitude"] = st.interaction_abs / (n * d)
        total = scalars["linear_magnitude"] + scalars["interaction_magnitude"]
        scalars["linear_share"] = scalars["linear_magnitude"] / total if total > 0 else float("nan")
    per_component = acc.metrics()
    against: dict[str, float] = {}
    if "full" in per_component:
        against[OWN_SAE] = stats.improvement(per_component[FULL_COMPONENT]["mse"], per_component[SAE_COMPONENT]["mse"])
    return {"components": per_component, "improvement_mse": against, **scalars}  # type: ignore[dict-item]


def reconstruction_metrics(model: FeatureModel, normaliser: Normaliser, store: ActivationStore,
                           token_set: str, chunk: int = 4096) -> dict[str, float | dict[str, float]]:
    """Metrics of one token set (see :func:`reconstruction_metrics_by_set`)."""
    return reconstruction_metrics_by_set(model, normaliser, store, (token_set,), chunk)[token_set]


def reconstruction_table(weights_path: str | Path, activations_dir: str | Path, run: str,
                         split: str = "test", device: torch.device | str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy reconstruction table of one trained model on a split (test by default), and its per-document
    sums of squares (one row per token set, component and document); the model runs on ``device``."""
    activations = ActivationsFolder(activations_dir)
    normaliser = Normaliser.load(activations.normaliser)
    store = ActivationStore(activations.split(split))
    model, extra = load_model(weights_path, device)
    check_model_matches_store(model, extra, store, weights_path)
    rows = []
    base = {"run": run, "model": model.kind, "seed": int(extra["seed"]), "split": split}
    documents: dict[str, pd.DataFrame] = {}
    for token_set, result in reconstruction_metrics_by_set(model, normaliser, store, documents=documents).items():
        for component, metrics in result.pop("components").items():  # type: ignore[union-attr]
            rows += [{**base, "token_set": token_set, "component": component, "metric": m, "reference": None,
                      "value": v} for m, v in metrics.items()]
        for reference, value in result.pop("improvement_mse").items():  # type: ignore[union-attr]
            rows.append({**base, "token_set": token_set, "component": "model", "metric": "improvement_mse",
                         "reference": reference, "value": value})
        rows += [{**base, "token_set": token_set, "component": "model", "metric": m, "reference": None,
                  "value": float(v)} for m, v in result.items()]
    per_document = pd.concat([frame.assign(**base, token_set=token_set) for token_set, frame in documents.items()],
                             ignore_index=True)
    front = [*base, "token_set"]
    per_document = per_document[front + [c for c in per_document.columns if c not in front]]
    return pd.DataFrame(rows), per_document


def run_evaluate(weights_path: str | Path, activations_dir: str | Path, out_path: str | Path,
                 run: str, split: str = "test", out_documents: str | Path | None = None,
                 device: torch.device | str = "cpu") -> pd.DataFrame:
    """Stage entry point: :func:`reconstruction_table` written to ``out_path`` (and the per-document sums to
    ``out_documents``)."""
    frame, documents = reconstruction_table(weights_path, activations_dir, run, split, device)
    write_table(frame, out_path, RECONSTRUCTION)
    if out_documents is not None:
        write_table(documents, out_documents, RECONSTRUCTION_DOCUMENTS)
    return frame


FINAL_KEYS: tuple[str, ...] = ("run", "model", "seed", "split", "token_set", "metric")


def final_reconstruction(metrics: pd.DataFrame, keys: tuple[str, ...] = FINAL_KEYS) -> pd.DataFrame:
    """MSE and FVU of each model's final reconstruction (:func:`featint.kinds.final_component`: the whole
    model for kinds with a head, the SAE for SAE-only ones), one row per ``keys`` (``metric`` among them)."""
    final = metrics["component"] == metrics["model"].map(final_component)
    rows = metrics[final & metrics["metric"].isin(["mse", "fvu"])]
    return rows.groupby(list(keys))["value"].first().reset_index()


#: Reconstruction metrics given document-bootstrap intervals in the summary, with their reference.
INTERVAL_METRICS: tuple[tuple[str, str | None], ...] = (("fvu", None), ("fvu_raw", None),
                                                         ("improvement_mse", BASELINE))


@dataclass(frozen=True)
class DocumentBootstrap:
    """One resampling of the test documents of a (run, split, token set), shared by every quantity computed on
    them (so differences between models are paired)."""

    run: str  #: the run
    split: str  #: the split (test)
    token_set: str  #: selected or with_outliers
    rows: pd.DataFrame  #: the per-document sums of squares of every model, seed and component
    doc_ids: np.ndarray  #: the documents, sorted
    weights: np.ndarray  #: [1 + B, documents]: row 0 the data itself, then B bootstrap draws
    n_tokens: int  #: tokens in those documents

    def replicates(self, rows: pd.DataFrame, column: str) -> np.ndarray:
        """The sum of ``column`` over documents under each resampling row, [1 + B]."""
        return self.weights @ rows.set_index("doc_id")[column].reindex(self.doc_ids).fillna(0.0).to_numpy()

    def counts(self) -> dict[str, Any]:
        return {"run": self.run, "split": self.split, "token_set": self.token_set,
                "n_documents": int(self.doc_ids.size), "n_tokens": self.n_tokens}


def document_bootstraps(documents: pd.DataFrame, n_boot: int, seed: int) -> list[DocumentBootstrap]:
    """A :class:`DocumentBootstrap` per (run, split, token set) of the per-document tables."""
    out = []
    for (run, split, token_set), frame in documents.groupby(["run", "split", "token_set"]):
        doc_ids = np.sort(frame["doc_id"].unique())
        tokens = frame.drop_duplicates("doc_id").set_index("doc_id")["tokens"].reindex(doc_ids).to_numpy()
        out.append(DocumentBootstrap(str(run), str(split), str(token_set), frame, doc_ids,
                                     stats.nested_cluster_bootstrap_weights(doc_ids, n_boot, seed),
                                     int(tokens.sum())))
    return out


def document_intervals(documents: pd.DataFrame, n_boot: int, level: float, seed: int) -> pd.DataFrame:
    """Percentile intervals of a bootstrap over test documents (one set of resampling rows for every model,
    seed and component, so improvements are paired), per seed and for the mean over seeds. Rows: run, model,
    seed (NA = mean over seeds), split, token_set, component, metric, reference, estimate, ci_low, ci_high,
    n_documents, n_tokens. ``fvu`` and ``fvu_raw`` for every component; ``improvement_mse`` (component
    ``model``) for each comparison of :data:`featint.kinds.COMPARISONS` against the baseline
    (:func:`comparison_replicates`)."""
    out = []
    for boot in document_bootstraps(documents, n_boot, seed):
        series: dict[tuple[str, int, str, str, str | None], np.ndarray] = {}
        finals: dict[tuple[str, int], np.ndarray] = {}
        for (model, model_seed), rows in boot.rows.groupby(["model", "seed"]):
            for component, part in rows.groupby("component"):
                key = (str(model), int(model_seed), str(component))
                series[(*key, "fvu", None)] = boot.replicates(part, "sse") / boot.replicates(part, "sst")
                series[(*key, "fvu_raw", None)] = boot.replicates(part, "sse_raw") / boot.replicates(part, "sst_raw")
            finals[(str(model), int(model_seed))] = series[(str(model), int(model_seed), final_component(str(model)),
                                                            "fvu", None)]
        for (model, model_seed, reference), values in comparison_replicates(finals, baseline=True).items():
            series[(model, model_seed, MODEL_COMPONENT, "improvement_mse", reference)] = values
        for item in stats.per_seed_and_pooled(series, level):
            component, metric, reference = item.rest
            out.append({**boot.counts(), "model": item.model, "seed": pd.NA if item.seed is None else item.seed,
                        "n_seeds": item.n_seeds, "component": component, "metric": metric, "reference": reference,
                        "estimate": item.interval.estimate, "ci_low": item.interval.low,
                        "ci_high": item.interval.high})
    frame = pd.DataFrame(out)
    frame["seed"] = frame["seed"].astype("Int32")
    return frame


def comparison_replicates(finals: dict[tuple[str, int], np.ndarray], *, baseline: bool
                          ) -> dict[tuple[str, int, str], np.ndarray]:
    """``improvement_mse`` = :func:`featint.stats.improvement` of the final FVU (the same test tokens, so
    1 - SSE / SSE of the reference) for each comparison of :func:`featint.kinds.comparisons` among the kinds of
    ``finals`` (keyed model, seed) whose reference has the same seed: those against the baseline when
    ``baseline``, else the term controls. Keyed (model, seed, reference), in the comparisons' order."""
    pairs = comparisons({model for model, _seed in finals}, baseline=baseline, terms=not baseline)
    return {(c.model, model_seed, c.reference): stats.improvement(fvu, finals[(c.reference, model_seed)])
            for c in pairs for (model, model_seed), fvu in finals.items()
            if model == c.model and (c.reference, model_seed) in finals}


def comparison_intervals(documents: pd.DataFrame, parameters: pd.DataFrame, n_boot: int, level: float,
                         seed: int) -> pd.DataFrame:
    """Every term against its control (:data:`featint.kinds.COMPARISONS` not against the baseline) whose two
    kinds were trained with the same seed: ``improvement_mse`` of :func:`comparison_replicates` with the
    document bootstrap of :func:`document_intervals` (the same resampling rows, so paired), per seed and for the
    mean over seeds; with both kinds' parameter counts. Rows: run, split, token_set, model, reference, seed
    (NA = mean over seeds), n_seeds, metric, estimate, ci_low, ci_high, model_parameters, reference_parameters,
    n_documents, n_tokens."""
    totals = (parameters[parameters["component"] == "total"].groupby("model")["parameters"].first().to_dict()
              if len(parameters) else {})
    out = []
    for boot in document_bootstraps(documents, n_boot, seed):
        finals = {}
        for (model, model_seed), rows in boot.rows.groupby(["model", "seed"]):
            final = rows[rows["component"] == final_component(str(model))]
            finals[(str(model), int(model_seed))] = boot.replicates(final, "sse") / boot.replicates(final, "sst")
        series = comparison_replicates(finals, baseline=False)
        for item in stats.per_seed_and_pooled(series, level):
            (reference,) = item.rest
            out.append({**boot.counts(), "model": item.model, "reference": reference,
                        "seed": pd.NA if item.seed is None else item.seed, "n_seeds": item.n_seeds,
                        "metric": "improvement_mse", "estimate": item.interval.estimate, "ci_low": item.interval.low,
                        "ci_high": item.interval.high, "model_parameters": totals.get(item.model, pd.NA),
                        "reference_parameters": totals.get(reference, pd.NA)})
    columns = ["run", "split", "token_set", "model", "reference", "seed", "n_seeds", "metric", "estimate", "ci_low",
               "ci_high", "model_parameters", "reference_parameters", "n_documents", "n_tokens"]
    frame = pd.DataFrame(out, columns=columns)
    frame["seed"] = frame["seed"].astype("Int32")
    return frame


def baseline_improvements(final: pd.DataFrame) -> pd.DataFrame:
    """Rows ``improvement_<metric>`` (component ``model``, reference :data:`featint.kinds.BASELINE`) of each
    comparison against the baseline among the models of ``final`` (:func:`final_reconstruction`'s rows):
    :func:`featint.stats.improvement` of the final MSE and FVU over the baseline's of the same seed, split and
    token set; the baseline's own rows (0 by definition) stay, as the figure's reference bar."""
    compared = [BASELINE, *(c.model for c in comparisons(set(final["model"]), terms=False))]
    reference = final[final["model"] == BASELINE].drop(columns="model").rename(columns={"value": "reference_value"})
    merged = final[final["model"].isin(compared)].merge(
        reference, on=[k for k in FINAL_KEYS if k != "model"], how="inner")
    merged["value"] = stats.improvement(merged["value"], merged["reference_value"])
    merged["metric"] = "improvement_" + merged["metric"]
    merged["reference"] = BASELINE
    merged["component"] = MODEL_COMPONENT
    return merged.drop(columns="reference_value")


def improvement_rows(metrics: pd.DataFrame, reference: str, metric: str = "improvement_mse") -> pd.DataFrame:
    """The rows of a reconstruction table giving ``metric`` (an improvement) against ``reference``."""
    return metrics[(metrics["metric"] == metric) & (metrics["reference"] == reference)]


class MetricsOutputs(NamedTuple):
    """What :func:`gather` writes (:meth:`in_folder` places them as the workflow does)."""

    metrics: str | Path  #: every model's and seed's metrics, with the improvements over the standard SAE added
    summary: str | Path  #: mean / sd / n over seeds, with the document-bootstrap interval where computed
    parameters: str | Path  #: every model's parameter counts
    figure: str | Path  #: the reconstruction comparison figure
    comparisons: str | Path | None = None  #: each term against its control (:func:`comparison_intervals`)

    @classmethod
    def in_folder(cls, folder: MetricsFolder) -> MetricsOutputs:
        return cls(folder.reconstruction, folder.summary, folder.parameters, folder.figure_path, folder.comparisons)


def gather(tables: list[str | Path], document_tables: list[str | Path], parameter_tables: list[str | Path],
           out: MetricsOutputs, settings: EvaluationSettings, seed: int) -> pd.DataFrame:
    """Stage entry point: one tidy table over models and seeds, improvements against the independently
    trained standard SAE of the same seed, mean / sd / n over seeds with a 95% interval of a bootstrap over
    test documents (of the mean over seeds), the documents and tokens it rests on, parameters, the
    comparisons of each term with its control, and the comparison figure, to the files of ``out``."""
    from featint import plots

    metrics = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    final = final_reconstruction(metrics)
    metrics = pd.concat([metrics, baseline_improvements(final)], ignore_index=True)
    write_table(metrics, out.metrics, RECONSTRUCTION)
    keys = ["run", "model", "split", "token_set", "component", "metric", "reference"]
    summary = (metrics.groupby(keys, dropna=False)["value"]
               .agg(mean="mean", sd="std", n_seeds="count", minimum="min", maximum="max").reset_index())
    documents = pd.concat([pd.read_parquet(p) for p in document_tables], ignore_index=True)
    intervals = document_intervals(documents, settings.bootstrap, settings.ci_level, seed)
    wanted = pd.MultiIndex.from_frame(intervals[["metric", "reference"]]).isin(list(INTERVAL_METRICS))
    pooled = intervals[intervals["seed"].isna() & wanted]
    summary = summary.merge(pooled[keys + ["ci_low", "ci_high"]], on=keys, how="left")
    summary["interval"] = np.where(summary["ci_low"].notna(),
                                   f"{settings.ci_level:.0%} bootstrap over test documents, mean over seeds", "")
    counts = intervals.drop_duplicates(["run", "split", "token_set"])[["run", "split", "token_set", "n_documents",
                                                                       "n_tokens"]]
    summary = summary.merge(counts, on=["run", "split", "token_set"], how="left")
    write_table(summary, out.summary, RECONSTRUCTION_SUMMARY)
    parameters = pd.concat([pd.read_parquet(p) for p in parameter_tables], ignore_index=True)
    write_table(parameters, out.parameters, PARAMETERS)
    if out.comparisons is not None:
        write_table(comparison_intervals(documents, parameters, settings.bootstrap, settings.ci_level, seed),
                    out.comparisons, COMPARISON_TABLE)
    plots.reconstruction_comparison(final[final["metric"] == "fvu"], improvement_rows(metrics, BASELINE),
                                    out.figure)
    return summary
