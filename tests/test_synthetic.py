"""The planted-interaction generator's known answers, the power statistics, and a tiny positive-control DAG."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from featint.activations import ActivationStore
from featint.config import Settings
from featint.kinds import WITH_INTERACTION, comparisons
from featint.normaliser import Normaliser
from featint.synthetic import (
    detection_thresholds,
    generate,
    ground_truth,
    identification_summary,
    power_table,
    write_synthetic_activations,
)

REPO = Path(__file__).resolve().parents[1]


def spec(**overrides: object):  # type: ignore[no-untyped-def]
    section = {"d_model": 32, "n_features": 96, "active_mean": 4.0, "n_pairs": 8, "pair_fraction": 0.5,
               "noise_std": 0.05, "magnitude_sigma": 0.4, "tokens": {"train": 4096, "validation": 1024, "test": 2048}}
    section.update(overrides)
    return Settings.from_dict({"synthetic": section}).synthetic


def test_ground_truth_plants_disjoint_pairs_of_unit_features() -> None:
    s = spec()
    truth = ground_truth(s)
    assert torch.allclose(truth.features.norm(dim=1), torch.ones(s.n_features))
    assert truth.pairs.shape == (2 * s.n_pairs, 2) and truth.pairs.unique().numel() == 4 * s.n_pairs
    assert truth.firing.max() <= 0.5 and truth.firing.sum() == pytest.approx(s.active_mean, rel=1e-5)
    span = truth.directions("span")
    own = truth.features[truth.pairs[: s.n_pairs]]  # [n_pairs, 2, d]
    # a span direction is the unit sum of the pair's own features
    assert torch.allclose(span, torch.nn.functional.normalize(own.sum(1), dim=1))
    assert torch.equal(ground_truth(s).pairs, truth.pairs)  # a function of data_seed only


def test_the_planted_term_is_c_fi_fj_u_on_co_active_planted_pairs_only() -> None:
    s = spec()
    truth = ground_truth(s)
    sample = generate(s, truth, 4096, strength=1.5, direction="new", seed=3)
    expected = torch.zeros_like(sample.planted)
    for p in range(s.n_pairs):
        i, j = truth.pairs[p].tolist()
        expected += 1.5 * (sample.codes[:, i] * sample.codes[:, j])[:, None] * truth.new_directions[p]
    assert torch.allclose(sample.planted, expected, atol=1e-5)
    # decoy tokens carry no planted term unless a planted pair co-fires by chance
    decoy = sample.pair >= s.n_pairs
    assert (sample.planted[decoy].norm(dim=1) == 0).float().mean() > 0.9
    # forced pairs are active; x is the sum of its parts plus noise of the configured size
    forced = torch.nonzero(sample.pair >= 0).squeeze(1)
    pairs = truth.pairs[sample.pair[forced]]
    assert (sample.codes[forced, pairs[:, 0]] > 0).all() and (sample.codes[forced, pairs[:, 1]] > 0).all()
    noise = sample.x - sample.sparse - sample.planted
    assert noise.std().item() == pytest.approx(s.noise_std, rel=0.05)
    assert torch.equal(generate(s, truth, 4096, 0.0, "new", seed=3).planted, torch.zeros_like(sample.planted))


def test_planted_energy_matches_its_closed_form() -> None:
    """E|planted|^2 per token = c^2 E[f^2]^2 sum_p P(i, j both active), E[f^2] = exp(2 sigma^2) for log-normal
    magnitudes, P = q + (1 - q) p_i p_j with q = pair_fraction / (2 n_pairs) the chance the pair is forced."""
    s = spec(noise_std=0.0)
    truth = ground_truth(s)
    c, n = 2.0, 200_000
    sample = generate(s, truth, n, strength=c, direction="new", seed=5)
    q = s.pair_fraction / (2 * s.n_pairs)
    p_i, p_j = truth.firing[truth.pairs[: s.n_pairs, 0]], truth.firing[truth.pairs[: s.n_pairs, 1]]
    both = q + (1 - q) * p_i * p_j
    expected = c**2 * math.exp(2 * s.magnitude_sigma**2) ** 2 * float(both.sum())
    assert float(sample.planted.square().sum(1).mean()) == pytest.approx(expected, rel=0.03)
    # the background activity: active_mean on average, plus the forced pair where its features were idle
    assert float((sample.codes > 0).sum(1).float().mean()) == pytest.approx(
        s.active_mean + s.pair_fraction * 2, rel=0.05)


def test_written_setting_holds_stores_normaliser_and_variance(tmp_path: Path) -> None:
    s = spec()
    null = write_synthetic_activations(s, 0.0, "new", tmp_path / "null")
    strong = write_synthetic_activations(s, 2.0, "span", tmp_path / "strong")
    assert (null["planted_variance_fraction"] == 0).all()
    assert strong.set_index("split").loc["train", "planted_variance_fraction"] > 0.05
    store = ActivationStore(tmp_path / "strong" / "activations" / "test")
    assert store.n_rows == 2048 and store.meta.d_model == 32 and store.meta.n_documents == 2048 // 128
    assert store.tokens()["doc_id"].nunique() == 16
    normaliser = Normaliser.load(tmp_path / "strong" / "activations" / "normaliser.safetensors")
    assert normaliser.hook_name == store.meta.hook_name
    pairs = pd.read_parquet(tmp_path / "strong" / "test_pairs.parquet")
    assert len(pairs) == 2048 and pairs["pair"].between(-1, 2 * s.n_pairs - 1).all()


def _fvu_rows(rng: np.random.Generator, effects: dict[float, float], seeds: int,
              null_gain: float = 0.0) -> pd.DataFrame:
    """Test FVUs of the three kinds; joint gains ``null_gain`` everywhere plus ``effects[strength]``."""
    rows = []
    for strength, effect in effects.items():
        for seed in range(seeds):
            base = 0.2 + rng.normal(scale=0.002)
            joint = base * (1 - null_gain - effect) + rng.normal(scale=0.0005)
            rows += [{"variant": "v", "strength": strength, "seed": seed, "kind": "joint_no_interaction", "fvu": base},
                     {"variant": "v", "strength": strength, "seed": seed, "kind": "param_matched", "fvu": base},
                     {"variant": "v", "strength": strength, "seed": seed, "kind": "joint", "fvu": joint}]
    return pd.DataFrame(rows)


def test_power_table_detects_a_planted_gain_over_the_null_gain() -> None:
    rng = np.random.default_rng(0)
    # the interaction term gains 1% with nothing planted: a planted strength counts only by its excess
    fvu = _fvu_rows(rng, {0.0: 0.0, 1.0: 0.0, 2.0: 0.05}, seeds=4, null_gain=0.01)
    power = power_table(fvu, 0.95).set_index(["strength", "reference"])
    assert power.loc[(0.0, "joint_no_interaction"), "ci_low"] > 0  # the null gain itself is real
    assert not power.loc[(0.0, "joint_no_interaction"), "detected"]
    assert not power.loc[(1.0, "joint_no_interaction"), "detected"]  # gains, but no more than the null
    assert power.loc[(2.0, "joint_no_interaction"), "detected"]
    assert power.loc[(2.0, "joint_no_interaction"), "excess_over_null"] == pytest.approx(0.05, abs=0.01)
    assert set(power.reset_index()["model"]) == {"joint"}  # only the comparisons whose kinds were trained
    detection = detection_thresholds(power.reset_index()).set_index("reference")
    assert detection.loc["param_matched", "smallest_detected_strength"] == 2.0
    assert detection.loc["param_matched", "null_gain"] == pytest.approx(0.01, abs=0.005)
    with pytest.raises(ValueError, match="no null setting"):
        power_table(fvu[fvu["strength"] > 0], 0.95)


def test_detection_holds_its_level_when_nothing_is_planted() -> None:
    """Calibration: a planted strength with no effect beyond the null is called detected in about 2.5% of
    draws (one-sided at a 95% two-sided interval), over 400 draws of 3 seeds."""
    rng = np.random.default_rng(1)
    calls = [power_table(_fvu_rows(rng, {0.0: 0.0, 1.0: 0.0}, seeds=3, null_gain=0.01), 0.95)
             .query("strength == 1.0 and reference == 'joint_no_interaction'")["detected"].item()
             for _ in range(400)]
    assert np.mean(calls) <= 0.05


def test_identification_auc_orders_planted_above_decoys() -> None:
    pairs = pd.DataFrame({"pair": range(8), "planted": [True] * 4 + [False] * 4,
                          "interaction_gain": [5.0, 6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 3.0]})
    summary = identification_summary(pairs)
    assert summary["auc"] == 1.0 and summary["p"] < 0.05
    assert identification_summary(pairs.assign(planted=[True, False] * 4))["auc"] == pytest.approx(0.5, abs=0.3)


def test_synthetic_dag_reports_power_and_identification(tmp_path: Path) -> None:
    """The positive control end to end on a tiny config: the LM never runs; every table, figure and the
    detection thresholds are written."""
    work = tmp_path / "work"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".git", ".venv", "results", "logs", ".snakemake",
                                                              "benchmarks"))
    config = yaml.safe_load((REPO / "config" / "synthetic.yaml").read_text())
    config["run"] = "synthetic_tiny"
    config["sae"]["auxk"]["k_aux"] = 16
    config["training"].update({"seeds": [0, 1], "tokens": 16384, "batch_size": 512, "validate_every": 8,
                               "checkpoint_every": 16, "validation_tokens": 1024})
    # every code-based head of config/synthetic_rivals.yaml, at tiny sizes
    config["synthetic"]["kinds"] = yaml.safe_load((REPO / "config" / "synthetic_rivals.yaml").read_text())[
        "synthetic"]["kinds"]
    config["synthetic"].update({"d_model": 16, "n_features": 48, "active_mean": 3.0, "n_pairs": 6,
                                "document_tokens": 64, "tokens": {"train": 8192, "validation": 1024, "test": 2048},
                                "strengths": [0.0, 3.0],
                                "variants": [{"name": "small", "width": 64, "k": 6, "embed": 4, "direction": "new"}]})
    config["integration"].update({"min_tokens": 10, "min_documents": 3})
    (work / "config" / "synthetic_tiny.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile",
                             "config/synthetic_tiny.yaml"], cwd=work, env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = work / "results" / "synthetic_tiny" / "synthetic" / "summary"
    power = pd.read_parquet(summary / "power.parquet")
    trained = set(config["synthetic"]["kinds"])
    expected = {(c.model, c.reference) for c in comparisons(trained, baseline=False)}
    assert set(zip(power["model"], power["reference"])) == expected and (power["n_seeds"] == 2).all()
    assert not power.loc[power["strength"] == 0, "detected"].any()
    assert (power.loc[power["strength"] == 0, "excess_over_null"] == 0).all()
    detection = pd.read_parquet(summary / "detection.parquet")
    assert set(zip(detection["model"], detection["reference"])) == expected
    assert power.set_index("strength").loc[3.0, "planted_variance_fraction"].min() > 0.05
    ident = pd.read_parquet(summary / "identification.parquet")
    with_interaction = trained & set(WITH_INTERACTION)
    assert set(ident["model"]) == with_interaction and len(ident) == 2 * 2 * len(with_interaction)
    assert ident["auc"].between(0, 1).all()
    assert (summary / "figures" / "power.png").stat().st_size > 10_000
    tested = pd.read_parquet(summary / "integration_power.parquet")  # the pair product test on the standard SAE
    assert set(tested["strength"]) == {0.0, 3.0} and set(tested["target"]) == {"activation", "residual"}
    assert set(tested["data"]) == {"data", "surrogate"} and (tested["pairs_tested"] > 0).all()
    assert tested["power"].between(0, 1).all() and tested["decoy_flagged_share"].between(0, 1).all()
    assert (summary / "figures" / "integration_power.png").stat().st_size > 10_000
    assert not (work / "results" / "synthetic_tiny" / "activations").exists()  # no LM extraction
