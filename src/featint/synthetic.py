"""Planted-interaction positive control: would the method see integration if it were there?

A generator writes activations in the usual store format from known ground truth:

* ``n_features`` true features, unit directions in ``d_model`` dimensions, firing independently with
  heavy-tailed probabilities (rank^-``zipf_exponent``, ``active_mean`` active per token on average) at log-normal
  magnitudes (median 1);
* ``n_pairs`` **planted pairs** (i, j): whenever both fire, the token gains ``c f_i f_j u_ij`` along a direction
  u_ij that is new (random) or in the span of the pair's own features (``direction='span'``: u = (a_i + a_j) / |.|);
* as many **decoy pairs**, forced to co-activate exactly like the planted ones but with no interaction: the
  reference that tells "the NFM models this pair's interaction" from "the NFM reacts to co-activation";
* on a ``pair_fraction`` of tokens one planted or decoy pair (uniformly chosen) is forced active; Gaussian noise.

The features, pairs and directions depend on ``data_seed`` only, so every strength and variant shares them; the
strength ``c`` scales the planted term (``c = 0`` is the null). The training and evaluation stages run unchanged
on the written stores. :func:`pair_identification` measures, per planted and decoy pair, how much the joint
model's interaction term lowers the squared error on the test tokens carrying that pair; :func:`power_table`
turns the models' test FVUs into the gain of ``joint`` over ``joint_no_interaction`` and ``param_matched`` with
t intervals over seeds, and its excess over the same variant's null setting (strength 0): a strength is detected
when that excess is above zero, and :func:`detection_thresholds` names the smallest detected strength.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from scipy import stats as scipy_stats

from featint import stats
from featint.activations import ActivationStore, write_store_from_tensor
from featint.config import SPLITS, Settings, SyntheticSettings, SyntheticVariant
from featint.io import atomic_directory
from featint.kinds import SAE_COMPONENT, WITH_INTERACTION, comparisons, final_component
from featint.layout import KindsFolder, SyntheticSettingFolder
from featint.normaliser import Normaliser
from featint.tables import (
    SYNTHETIC_DETECTION,
    SYNTHETIC_FVU,
    SYNTHETIC_IDENTIFICATION,
    SYNTHETIC_PAIRS,
    SYNTHETIC_POWER,
    SYNTHETIC_TEST_PAIRS,
    SYNTHETIC_VARIANCE,
    write_table,
)

log = logging.getLogger(__name__)

HOOK_NAME = "synthetic"


@dataclass(frozen=True)
class GroundTruth:
    """What the generator plants (shared by every setting of a run)."""

    features: torch.Tensor  #: [n_features, d] unit directions
    firing: torch.Tensor  #: [n_features] background firing probability per token
    pairs: torch.Tensor  #: [2 n_pairs, 2] feature pairs; the first n_pairs are planted, the rest decoys
    new_directions: torch.Tensor  #: [n_pairs, d] random unit directions (direction 'new')

    @property
    def n_planted(self) -> int:
        return self.new_directions.shape[0]

    def directions(self, direction: str) -> torch.Tensor:
        """u_ij of every planted pair: a new direction, or the unit sum of the pair's own features."""
        if direction == "new":
            return self.new_directions
        own = self.features[self.pairs[: self.n_planted]].sum(dim=1)
        return own / own.norm(dim=1, keepdim=True)


class Sample(NamedTuple):
    """Generated tokens, split into their parts."""

    x: torch.Tensor  #: [N, d] the activations (sparse part + planted part + noise)
    sparse: torch.Tensor  #: [N, d] sum_i f_i a_i
    planted: torch.Tensor  #: [N, d] the planted interaction part (strength included)
    pair: torch.Tensor  #: [N] index of the forced pair (planted < n_pairs <= decoy), -1 on tokens without one
    codes: torch.Tensor  #: [N, n_features] the true magnitudes


def ground_truth(spec: SyntheticSettings) -> GroundTruth:
    g = torch.Generator().manual_seed(spec.data_seed)
    features = torch.nn.functional.normalize(torch.randn(spec.n_features, spec.d_model, generator=g), dim=1)
    weights = torch.arange(1, spec.n_features + 1, dtype=torch.float64) ** -spec.zipf_exponent
    firing = (spec.active_mean * weights / weights.sum()).clamp(max=0.5).float()
    firing = firing[torch.randperm(spec.n_features, generator=g)]  # frequency unrelated to the feature index
    if 4 * spec.n_pairs > spec.n_features:
        raise ValueError(f"{2 * spec.n_pairs} disjoint pairs need {4 * spec.n_pairs} features; n_features is "
                         f"{spec.n_features}")
    pairs = torch.randperm(spec.n_features, generator=g)[: 4 * spec.n_pairs].reshape(2 * spec.n_pairs, 2)
    directions = torch.nn.functional.normalize(torch.randn(spec.n_pairs, spec.d_model, generator=g), dim=1)
    return GroundTruth(features, firing, pairs, directions)


def generate(spec: SyntheticSettings, truth: GroundTruth, n: int, strength: float, direction: str,
             seed: int) -> Sample:
    """``n`` tokens with planted interactions of ``strength`` along ``direction`` ('new' | 'span')."""
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(n, spec.n_features, generator=g) < truth.firing
    pair = torch.where(torch.rand(n, generator=g) < spec.pair_fraction,
                       torch.randint(0, 2 * spec.n_pairs, (n,), generator=g), torch.full((n,), -1))
    forced = pair >= 0
    rows = torch.nonzero(forced).squeeze(1)
    active[rows, truth.pairs[pair[forced], 0]] = True
    active[rows, truth.pairs[pair[forced], 1]] = True
    magnitudes = torch.exp(spec.magnitude_sigma * torch.randn(n, spec.n_features, generator=g))
    codes = torch.where(active, magnitudes, torch.zeros(()))
    sparse = codes @ truth.features
    planted = torch.zeros(n, spec.d_model)
    if strength > 0:
        u = truth.directions(direction)
        for p in range(spec.n_pairs):
            i, j = truth.pairs[p].tolist()
            product = codes[:, i] * codes[:, j]  # zero unless both fire (forced or by chance)
            planted += strength * product[:, None] * u[p]
    noise = spec.noise_std * torch.randn(n, spec.d_model, generator=g)
    return Sample(sparse + planted + noise, sparse, planted, pair, codes)


def _total_variance(x: torch.Tensor) -> float:
    return float(((x - x.mean(0)) ** 2).sum())


def write_synthetic_activations(spec: SyntheticSettings, strength: float, direction: str,
                                out_dir: str | Path) -> pd.DataFrame:
    """Stage entry point: one setting's activations (``activations/<split>``, ``activations/normaliser``), its
    ground truth, the test tokens' forced pairs, and the planted variance per split (returned)."""
    truth = ground_truth(spec)
    rows = []
    with atomic_directory(out_dir) as tmp:
        setting = SyntheticSettingFolder(tmp)
        samples = {}
        for number, split in enumerate(SPLITS):
            sample = generate(spec, truth, spec.tokens[split], strength, direction,
                              seed=spec.data_seed * 1000 + 17 * (number + 1))
            write_store_from_tensor(setting.activations.split(split), sample.x, split, HOOK_NAME,
                                    window_length=spec.document_tokens, doc_length=spec.document_tokens)
            samples[split] = sample
            total = _total_variance(sample.x)
            rows.append({"split": split, "strength": strength, "direction": direction, "tokens": sample.x.shape[0],
                         "planted_variance_fraction": _total_variance(sample.planted) / total,
                         "noise_variance_fraction": spec.noise_std**2 * spec.d_model * sample.x.shape[0] / total,
                         "pair_token_fraction": float((sample.pair >= 0).float().mean()),
                         "mean_active": float((sample.codes > 0).sum(1).float().mean())})
        Normaliser.fit([samples["train"].x], "zscore", HOOK_NAME).save(setting.activations.normaliser)
        save_file({"features": truth.features, "firing": truth.firing, "pairs": truth.pairs,
                   "directions": truth.directions(direction).contiguous()}, setting.truth,
                  metadata={"n_planted": str(truth.n_planted), "strength": json.dumps(strength),
                            "direction": direction})
        test_pairs = samples["test"].pair
        write_table(pd.DataFrame({"row": np.arange(len(test_pairs)), "pair": test_pairs.numpy().astype(np.int32)}),
                    setting.test_pairs, SYNTHETIC_TEST_PAIRS)
        variance = pd.DataFrame(rows)
        write_table(variance, setting.variance, SYNTHETIC_VARIANCE, metadata={"spec": asdict(spec)})
    return variance


@torch.no_grad()
def pair_identification(weights_path: str | Path, setting_dir: str | Path) -> pd.DataFrame:
    """Per planted and decoy pair: the mean reduction of squared error that the model's interaction term brings
    on the test tokens carrying that pair (``interaction_gain``: |x - (sae + linear)|^2 - |x - full|^2, in the
    normaliser's space), and the number of those tokens."""
    from featint.models import load_model

    setting = SyntheticSettingFolder(setting_dir)
    model, _ = load_model(weights_path)
    if model.head is None or not model.head.use_interaction:
        raise ValueError(f"{weights_path} has no interaction term to identify pairs with")
    store = ActivationStore(setting.activations.split("test"))
    normaliser = Normaliser.load(setting.activations.normaliser)
    x = normaliser.apply(torch.cat([v for _, v in store.iter_shards()]))
    pair = torch.tensor(pd.read_parquet(setting.test_pairs)["pair"].to_numpy(), dtype=torch.long)
    n_planted = int(load_file(setting.truth)["pairs"].shape[0] // 2)
    gains = torch.zeros(x.shape[0])
    for start in range(0, x.shape[0], 4096):
        rec = model(x[start : start + 4096])
        without = rec.component("sae+linear")
        batch = x[start : start + 4096]
        gains[start : start + 4096] = ((batch - without) ** 2).sum(1) - ((batch - rec.total) ** 2).sum(1)
    rows = []
    for p in range(2 * n_planted):
        carried = pair == p
        rows.append({"pair": p, "planted": p < n_planted, "tokens": int(carried.sum()),
                     "interaction_gain": float(gains[carried].mean()) if carried.any() else float("nan")})
    return pd.DataFrame(rows)


def identification_summary(pairs: pd.DataFrame) -> dict[str, float]:
    """AUC of planted vs decoy pairs by interaction gain (0.5 = no identification, 1 = every planted pair above
    every decoy) and the one-sided Mann-Whitney p value."""
    planted = pairs.loc[pairs["planted"], "interaction_gain"].dropna().to_numpy()
    decoy = pairs.loc[~pairs["planted"], "interaction_gain"].dropna().to_numpy()
    test = scipy_stats.mannwhitneyu(planted, decoy, alternative="greater")
    return {"auc": float(test.statistic / (len(planted) * len(decoy))), "p": float(test.pvalue),
            "planted_gain": float(np.mean(planted)), "decoy_gain": float(np.mean(decoy))}


def power_table(fvu: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per variant, strength and term comparison (model against its control, :func:`featint.kinds.comparisons`)
    whose two kinds were trained: the relative test-FVU gain of the model over the reference
    (:func:`featint.stats.improvement`, 1 - FVU_model / FVU_ref) with its t interval over seeds, and the
    **excess** of that gain over the same variant's null setting (strength 0), paired by seed, with its t
    interval. A term can gain a little without any planted interaction (it also fits the SAE's own nonlinear
    errors), so a strength is ``detected`` when the excess interval lies above zero. ``fvu`` has columns
    variant, strength, kind, seed, fvu; every variant needs strength 0."""
    wide = fvu.pivot_table(index=["variant", "strength", "seed"], columns="kind", values="fvu").reset_index()
    rows = []
    for model, reference, _term in comparisons(fvu["kind"].unique(), baseline=False):
        wide["gain"] = stats.improvement(wide[model], wide[reference])
        null = wide[wide["strength"] == 0].set_index(["variant", "seed"])["gain"]
        for (variant, strength), group in wide.groupby(["variant", "strength"]):
            if variant not in null.index.get_level_values("variant"):
                raise ValueError(f"synthetic variant {variant!r} has no null setting (strength 0) to compare with")
            gain, low, high = stats.t_interval(group["gain"].to_numpy(), level)
            excess_values = group["gain"].to_numpy() - null.loc[variant].reindex(group["seed"]).to_numpy()
            excess, excess_low, excess_high = stats.t_interval(excess_values, level)
            rows.append({"variant": variant, "strength": strength, "model": model, "reference": reference,
                         "gain": gain,
                         "ci_low": low, "ci_high": high, "excess_over_null": excess, "excess_ci_low": excess_low,
                         "excess_ci_high": excess_high, "interval": f"{level:.0%} t interval over seeds",
                         "n_seeds": len(group), "detected": bool(strength > 0 and excess_low > 0)})
    return pd.DataFrame(rows)


def detection_thresholds(power: pd.DataFrame) -> pd.DataFrame:
    """Per variant and comparison: the smallest planted strength detected (NaN when none is), and the gain at the
    null (strength 0) with its interval: what the model's term buys with nothing planted."""
    rows = []
    for (variant, model, reference), group in power.groupby(["variant", "model", "reference"], sort=False):
        planted = group[(group["strength"] > 0) & group["detected"]]
        null = group[group["strength"] == 0].iloc[0]
        rows.append({"variant": variant, "model": model, "reference": reference,
                     "smallest_detected_strength": float(planted["strength"].min()) if len(planted) else float("nan"),
                     "detected_strengths": len(planted), "planted_strengths": int((group["strength"] > 0).sum()),
                     "null_gain": float(null["gain"]), "null_ci_low": float(null["ci_low"]),
                     "null_ci_high": float(null["ci_high"])})
    return pd.DataFrame(rows)


def setting_settings(settings: Settings, variant: SyntheticVariant) -> Settings:
    """The run's settings with the variant's SAE width, k and NFM embedding size."""
    return settings.with_overrides({("sae", "n_features"): variant.width, ("sae", "k"): variant.k,
                                    ("nfm", "embed_dim"): variant.embed}, source=f"synthetic variant {variant.name}")


def find_variant(spec: SyntheticSettings, name: str) -> SyntheticVariant:
    for variant in spec.variants:
        if variant.name == name:
            return variant
    raise ValueError(f"no synthetic variant named {name!r}; expected one of {[v.name for v in spec.variants]}")


class SettingModelsOutputs(NamedTuple):
    """What one planted setting and seed's models job writes, beside the model folders it trains."""

    fvu: str | Path  #: every kind's test FVU (final and SAE component) and parameter count (SYNTHETIC_FVU)
    pairs: str | Path  #: each interaction model's pair identification against the planted pairs (SYNTHETIC_PAIRS)


def run_setting_models(settings: Settings, variant_name: str, strength: float, setting_dir: str | Path, seed: int,
                       models_dir: str | Path, out: SettingModelsOutputs, run: str) -> pd.DataFrame:
    """Stage entry point: train every kind of ``synthetic.kinds`` on one setting for one seed into
    ``models_dir`` (one model folder per kind; the one training loop, the run's fixed LR; ``standard`` first,
    the kinds built on it from its weights), evaluate each on the setting's test split, and identify pairs with
    every model that has an interaction term. Writes the files of ``out``; returns the FVU table."""
    from featint.evaluation import reconstruction_table
    from featint.training import chosen_lr, train_kinds

    assert settings.synthetic is not None
    local = setting_settings(settings, find_variant(settings.synthetic, variant_name))
    models = KindsFolder(str(models_dir))
    activations = str(SyntheticSettingFolder(setting_dir).activations)
    rows = []
    trained = []
    for kind, result in train_kinds(local, settings.synthetic.kinds, seed, activations, models_dir,
                                    lambda name: chosen_lr(local, name, None)):
        trained.append(kind)
        table, _ = reconstruction_table(models.model(kind).weights, activations, run=run)
        fvu = table[(table["token_set"] == "selected") & (table["metric"] == "fvu")].set_index("component")["value"]
        parameters = pd.read_parquet(models.model(kind).parameters)
        rows.append({"variant": variant_name, "strength": strength, "kind": kind, "seed": seed,
                     "fvu": float(fvu[final_component(kind)]),
                     "sae_fvu": float(fvu[SAE_COMPONENT]),
                     "parameters": int(parameters.loc[parameters["component"] == "total", "parameters"].item()),
                     "steps": result.steps})
    frame = pd.DataFrame(rows)
    write_table(frame, out.fvu, SYNTHETIC_FVU)
    identified = [pair_identification(models.model(kind).weights, setting_dir).assign(model=kind)
                  for kind in trained if kind in WITH_INTERACTION]
    pairs = pd.concat(identified, ignore_index=True) if identified else \
        pd.DataFrame(columns=["pair", "planted", "tokens", "interaction_gain", "model"])  # standard alone: none
    write_table(pairs.assign(variant=variant_name, strength=strength, seed=seed), out.pairs, SYNTHETIC_PAIRS)
    return frame


class SyntheticSummaryOutputs(NamedTuple):
    """What the planted control's gather writes."""

    fvu: str | Path  #: every kind's test FVU per setting and seed, in one table (SYNTHETIC_FVU)
    power: str | Path  #: each comparison's gain per variant x strength with its t interval over seeds
    detection: str | Path  #: the smallest planted strength each comparison detects
    identification: str | Path  #: pair identification (AUC) per setting, model and seed
    variance: str | Path  #: the planted interaction's share of the variance per setting and split
    power_figure: str | Path  #: the power curves (PNG)
    identification_figure: str | Path  #: pair identification against the strength (PNG)


def gather(fvu_tables: list[str | Path], pair_tables: list[str | Path], variance_tables: list[str | Path],
           level: float, out: SyntheticSummaryOutputs) -> pd.DataFrame:
    """Stage entry point: the power table (gain of joint over each reference per variant x strength, t interval
    over seeds), the detection thresholds, pair identification (AUC per setting and seed) and the planted
    variance, as the tables and figures of ``out``; returns the detection thresholds."""
    from featint import plots

    fvu = pd.concat([pd.read_parquet(p) for p in fvu_tables], ignore_index=True)
    power = power_table(fvu, level)
    variance = pd.concat([pd.read_parquet(p).assign(setting=Path(p).parent.name) for p in variance_tables],
                         ignore_index=True)
    test_variance = variance[variance["split"] == "test"][["setting", "planted_variance_fraction"]]
    power["setting"] = [variant_setting_name(v, c) for v, c in zip(power["variant"], power["strength"])]
    power = power.merge(test_variance, on="setting", how="left")
    identification = []
    for path in pair_tables:
        for model, pairs in pd.read_parquet(path).groupby("model", sort=False):
            first = pairs.iloc[0]
            identification.append({"variant": first["variant"], "strength": float(first["strength"]),
                                   "model": model, "seed": int(first["seed"]), **identification_summary(pairs)})
    ident = pd.DataFrame(identification).sort_values(["variant", "model", "strength", "seed"], ignore_index=True)
    detection = detection_thresholds(power)
    write_table(fvu, out.fvu, SYNTHETIC_FVU)
    write_table(power, out.power, SYNTHETIC_POWER)
    write_table(detection, out.detection, SYNTHETIC_DETECTION)
    write_table(ident, out.identification, SYNTHETIC_IDENTIFICATION)
    write_table(variance, out.variance, SYNTHETIC_VARIANCE, extra=["setting"])
    plots.synthetic_power(power, out.power_figure)
    plots.synthetic_identification(ident, out.identification_figure)
    return detection


def variant_setting_name(variant: str, strength: float) -> str:
    """The folder name of one setting (variant x strength)."""
    return f"{variant}~c{strength:g}"
