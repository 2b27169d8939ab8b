"""SAEBench's core eval output: each metric against a direct computation on the same tokens, the scores from
known behaviour numbers, and the file read back by SAEBench's own ``CoreEvalOutput`` in a side environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_saelens import _side_python

from featint.activations import write_store_from_tensor
from featint.config import Settings
from featint.errors import FeatintError
from featint.models import FeatureModel, ThresholdSAE, build_model, save_model
from featint.normaliser import Normaliser
from featint.saebench import FEATURE_METRICS, SAEBENCH_VERSION, core_eval, max_cosine_similarity

D, F_ = 16, 64


def _behaviour_summary(path: Path, kind: str, condition: str = "sae") -> Path:
    """A gathered behaviour summary with known point estimates (clean CE 2, zero-ablation CE 10 and KL 8, the
    model's CE 4 and KL 2) and a paper-test row that must be ignored."""
    rows = [("reference", -1, "clean", "mean_ce", 2.0), ("reference", -1, "clean", "mean_kl", 0.0),
            ("reference", -1, "zero_ablation", "mean_ce", 10.0), ("reference", -1, "zero_ablation", "mean_kl", 8.0),
            (kind, 0, condition, "mean_ce", 4.0), (kind, 0, condition, "mean_kl", 2.0)]
    frame = pd.DataFrame([{"model": m, "seed": s, "condition": c, "metric": metric, "estimate": v,
                           "method": "document_window_bootstrap", "n_tokens": 96} for m, s, c, metric, v in rows])
    paper = frame.iloc[[5]].assign(method="paper_unpaired_t", estimate=99.0)
    pd.concat([frame, paper]).astype({"seed": "Int32"}).to_parquet(path)
    return path


def _run(tmp_path: Path, threshold: bool = False) -> tuple[Settings, Path, Path, torch.Tensor, FeatureModel]:
    """A test split of raw activations in windows of 8 tokens, the run's normaliser and a trained-looking
    SAE-only model (a TopK one, or a JumpReLU one)."""
    torch.manual_seed(0)
    raw = torch.randn(400, D) * torch.linspace(0.5, 2.0, D) + 1.5
    acts = tmp_path / "acts"
    write_store_from_tensor(acts / "test", raw, "test", "blocks.3.hook_resid_pre", window_length=8, doc_length=40)
    normaliser = Normaliser.fit([raw], "zscore", "blocks.3.hook_resid_pre")
    normaliser.save(acts / "normaliser.safetensors")
    settings = Settings.from_dict({"sae": {"n_features": F_, "k": 6}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    if threshold:
        sae = ThresholdSAE(D, F_, "jumprelu")
        with torch.no_grad():
            sae.threshold.uniform_(0.1, 0.5)
        model = FeatureModel("standard", sae)
    else:
        model = build_model("standard", D, settings.sae, settings.nfm)
    with torch.no_grad():
        model.sae.b_enc.normal_(std=0.1)
        model.sae.b_dec.normal_(std=0.2)
    save_model(model, tmp_path / "weights.safetensors", {"hook_name": normaliser.hook_name, "seed": 0})
    return settings, acts, tmp_path / "weights.safetensors", raw, model


@pytest.mark.parametrize("threshold", [False, True], ids=["topk", "jumprelu"])
def test_core_metrics_equal_a_direct_computation_on_the_same_tokens(threshold: bool, tmp_path: Path) -> None:
    settings, acts, weights, raw, model = _run(tmp_path, threshold)
    out = core_eval(settings, weights, acts, _behaviour_summary(tmp_path / "b.parquet", "standard"), "toy",
                    tmp_path / "core.json")
    assert json.loads((tmp_path / "core.json").read_text()) == json.loads(json.dumps(out))
    normaliser = Normaliser.load(acts / "normaliser.safetensors")
    with torch.no_grad():
        rec = model(normaliser.apply(raw))
    x, x_hat = raw.double(), normaliser.invert(rec.total).double()
    f = rec.code.dense(F_).double()
    m = out["eval_result_metrics"]
    quality, shrinkage, sparsity = m["reconstruction_quality"], m["shrinkage"], m["sparsity"]
    residual = (x - x_hat).pow(2).sum(1)
    assert quality["explained_variance"] == pytest.approx(float(1 - residual.sum() / (x - x.mean(0)).pow(2).sum()),
                                                          rel=1e-9)
    assert quality["explained_variance_legacy"] == pytest.approx(
        float((1 - residual / (x - x.mean(0)).pow(2).sum(1)).mean()), rel=1e-9)
    assert quality["mse"] == pytest.approx(float(residual.mean()), rel=1e-9)
    assert quality["cossim"] == pytest.approx(float(torch.cosine_similarity(x, x_hat, dim=1).mean()), rel=1e-9)
    assert shrinkage["l2_ratio"] == pytest.approx(float((x_hat.norm(dim=1) / x.norm(dim=1)).mean()), rel=1e-9)
    assert shrinkage["relative_reconstruction_bias"] == pytest.approx(
        float(x_hat.pow(2).sum(1).mean() / (x * x_hat).sum(1).mean()), rel=1e-9)
    assert sparsity["l0"] == pytest.approx(float((f > 0).sum(1).double().mean()))
    assert sparsity["l1"] == pytest.approx(float(f.sum(1).mean()), rel=1e-9)
    density = (f > 0).double().mean(0)
    details = out["eval_result_details"]
    assert [d["index"] for d in details] == list(range(F_)) and list(details[0])[1:] == list(FEATURE_METRICS)
    assert [d["feature_density"] for d in details] == pytest.approx(density.tolist(), abs=1e-9)
    per_window = (f > 0).double().reshape(50, 8, F_).sum(1)  # tokens per window (prompt) that fire each feature
    windows_fired = (per_window > 0).sum(0)
    expected = torch.where(windows_fired > 0, per_window.sum(0) / windows_fired.clamp_min(1), 0)
    assert [d["consistent_activation_heuristic"] for d in details] == pytest.approx(expected.tolist(), abs=1e-9)
    assert m["misc_metrics"]["frac_alive"] == pytest.approx(float((density > 0).double().mean()))
    assert m["token_stats"] == {"total_tokens_eval_reconstruction": 96, "total_tokens_eval_sparsity_variance": 400}
    # KL and CE: the behaviour stage's estimates against zero-ablation, SAEBench's scores
    assert m["model_performance_preservation"] == {"ce_loss_score": 0.75, "ce_loss_with_ablation": 10.0,
                                                   "ce_loss_with_sae": 4.0, "ce_loss_without_sae": 2.0}
    assert m["model_behavior_preservation"] == {"kl_div_score": 0.75, "kl_div_with_ablation": 8.0,
                                                "kl_div_with_sae": 2.0}
    assert out["sae_cfg_dict"]["architecture"] == ("jumprelu" if threshold else "topk")
    assert out["eval_type_id"] == "core" and out["sae_bench_commit_hash"].startswith("not SAEBench")


def test_max_cosine_similarity_is_each_rows_nearest_other_row() -> None:
    torch.manual_seed(1)
    vectors = torch.randn(300, 8)
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    sims = unit @ unit.T
    sims.fill_diagonal_(float("-inf"))
    torch.testing.assert_close(max_cosine_similarity(vectors, chunk=64), sims.max(1).values)


def test_a_model_with_a_head_or_without_its_behaviour_stops_with_the_fix(tmp_path: Path) -> None:
    settings, acts, weights, _, _ = _run(tmp_path)
    with pytest.raises(FeatintError, match="rerun gather_behaviour"):
        core_eval(settings, weights, acts, _behaviour_summary(tmp_path / "b.parquet", "joint", "full"), "toy",
                  tmp_path / "core.json")
    save_model(build_model("joint", D, settings.sae, settings.nfm), tmp_path / "joint.safetensors", {"seed": 0})
    with pytest.raises(FeatintError, match="core eval is for SAEs alone"):
        core_eval(settings, tmp_path / "joint.safetensors", acts, tmp_path / "b.parquet", "toy", tmp_path / "j.json")
    assert not (tmp_path / "core.json").exists() and not (tmp_path / "j.json").exists()


SAEBENCH_ENV = Path(os.environ.get("FEATINT_SAEBENCH_ENV",
                                   Path.home() / ".cache" / "featint" / f"sae-bench-{SAEBENCH_VERSION}"))
VALIDATE_WITH_SAEBENCH = """
import json, sys
from pydantic import TypeAdapter
from sae_bench.evals.core.eval_output import CoreEvalOutput
data = json.load(open(sys.argv[1]))
parsed = TypeAdapter(CoreEvalOutput).validate_python(data)
print(parsed.to_json(indent=None))
"""


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [False, True], ids=["topk", "jumprelu"])
def test_saebench_own_output_class_reads_the_file_back_unchanged(threshold: bool, tmp_path: Path) -> None:
    """SAEBench's ``CoreEvalOutput`` (sae-bench :data:`SAEBENCH_VERSION` with its pydantic, in a side
    environment: its other dependencies pull CUDA wheels and nothing here needs them) validates the file and
    writes it back with its own ``to_json``: every field present, typed as it declares, nothing extra (it
    would drop an unknown field)."""
    settings, acts, weights, _, _ = _run(tmp_path, threshold)
    core_eval(settings, weights, acts, _behaviour_summary(tmp_path / "b.parquet", "standard"), "toy",
              tmp_path / "core.json")
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_WITH_SAEBENCH)
    python = _side_python(SAEBENCH_ENV, f"sae-bench=={SAEBENCH_VERSION}", base=("pydantic>=2.9.2",), no_deps=True)
    done = subprocess.run([str(python), str(script), str(tmp_path / "core.json")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == json.loads((tmp_path / "core.json").read_text())
