"""Reconstruction metrics: streaming equals direct computation; definitions on known cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from featint.activations import ActivationStore, write_store_from_tensor
from featint.evaluation import MetricsOutputs, _Accumulator, gather, reconstruction_metrics, run_evaluate
from featint.layout import MetricsFolder
from featint.models import NFM, FeatureModel, TopKSAE, save_model
from featint.normaliser import Normaliser

D, F_, K_TOP = 12, 40, 4


def test_fvu_and_paper_variance_explained_on_known_residuals() -> None:
    torch.manual_seed(0)
    x = torch.randn(500, D) * 3 + 1
    acc = _Accumulator(D)
    acc.add_inputs(x, x)
    acc.add_residual("perfect", torch.zeros_like(x), torch.zeros_like(x))
    acc.add_residual("mean", x - x.mean(0), x - x.mean(0))
    offset = torch.full_like(x, 0.5)
    acc.add_residual("offset", offset, offset)
    m = acc.metrics()
    assert m["perfect"]["fvu"] == 0 and m["perfect"]["variance_explained_paper"] == 1
    assert m["mean"]["fvu"] == pytest.approx(1.0)
    assert m["mean"]["variance_explained_paper"] == pytest.approx(0.0, abs=1e-8)
    # a constant offset is an error for FVU but not for the paper's centred definition
    assert m["offset"]["fvu"] > 0.01 and m["offset"]["variance_explained_paper"] == pytest.approx(1.0)
    assert m["offset"]["mse"] == pytest.approx(0.25)


def model_and_data(tmp_path: Path) -> tuple[FeatureModel, Normaliser, ActivationStore, torch.Tensor]:
    torch.manual_seed(1)
    model = FeatureModel("joint", TopKSAE(D, F_, K_TOP), NFM(F_, D, 6, dropout=0.0)).eval()
    raw = torch.randn(3000, D) * 4 + 2
    write_store_from_tensor(tmp_path / "test", raw, "test", "toy-hook", shard_rows=700)
    normaliser = Normaliser.fit([raw], "zscore", "toy-hook")
    return model, normaliser, ActivationStore(tmp_path / "test"), raw


def test_streamed_metrics_equal_direct_computation(tmp_path: Path) -> None:
    model, normaliser, store, raw = model_and_data(tmp_path)
    result = reconstruction_metrics(model, normaliser, store, "selected", chunk=256)
    x = normaliser.apply(raw).double()
    with torch.no_grad():
        rec = model(x.float())
    for component in ("sae", "sae+linear", "sae+interaction", "full"):
        x_hat = rec.component(component).double()
        fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        raw_hat = normaliser.invert(x_hat.float()).double()
        fvu_raw = ((raw.double() - raw_hat) ** 2).sum() / ((raw.double() - raw.double().mean(0)) ** 2).sum()
        got = result["components"][component]  # type: ignore[index]
        assert got["fvu"] == pytest.approx(fvu.item(), rel=1e-6)
        assert got["fvu_raw"] == pytest.approx(fvu_raw.item(), rel=1e-5)
    assert result["l0"] == pytest.approx(float((rec.code.values > 0).sum(1).float().mean()))
    lin, inter = rec.linear.abs().mean().item(), rec.interaction.abs().mean().item()  # type: ignore[union-attr]
    assert result["linear_share"] == pytest.approx(lin / (lin + inter), rel=1e-5)
    full, sae = result["components"]["full"]["mse"], result["components"]["sae"]["mse"]  # type: ignore[index]
    assert result["improvement_mse"]["own_sae"] == pytest.approx(1 - full / sae)


def test_evaluate_refuses_a_model_from_another_hook(tmp_path: Path) -> None:
    model, normaliser, _, _ = model_and_data(tmp_path)
    normaliser.save(tmp_path / "normaliser.safetensors")
    save_model(model, tmp_path / "w.safetensors", {"hook_name": "blocks.3.hook_resid_pre", "seed": 0})
    from featint.errors import ShardError

    with pytest.raises(ShardError, match="was trained at blocks.3.hook_resid_pre"):
        run_evaluate(tmp_path / "w.safetensors", tmp_path, tmp_path / "out.parquet", run="t")


def test_gather_adds_improvement_over_the_standard_sae(tmp_path: Path) -> None:
    from featint.config import EvaluationSettings

    rows, docs = [], []
    for model, component, value in (("standard", "sae", 0.4), ("joint", "full", 0.3), ("joint", "sae", 0.5)):
        for seed in (0, 1):
            for metric in ("mse", "fvu"):
                rows.append({"run": "r", "model": model, "seed": seed, "split": "test", "token_set": "selected",
                             "component": component, "metric": metric, "reference": None,
                             "value": value + 0.01 * seed})
            for doc in range(6):  # per-document sums whose totals give the same FVU
                sst = 10.0 + doc
                docs.append({"run": "r", "model": model, "seed": seed, "split": "test", "token_set": "selected",
                             "component": component, "doc_id": doc, "tokens": 100, "sse": (value + 0.01 * seed) * sst
                             * (1 + 0.05 * (doc % 2 - 0.5)), "sst": sst, "sse_raw": 1.0, "sst_raw": 2.0})
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    pd.DataFrame(docs).to_parquet(tmp_path / "d.parquet")
    params = pd.DataFrame({"model": ["joint"], "seed": [0], "component": ["total"], "parameters": [10],
                           "share": [1.0], "trainable": [10]})
    params.to_parquet(tmp_path / "p.parquet")
    out = MetricsOutputs.in_folder(MetricsFolder(tmp_path))
    summary = gather([tmp_path / "m.parquet"], [tmp_path / "d.parquet"], [tmp_path / "p.parquet"], out,
                     EvaluationSettings(bootstrap=300, ci_level=0.95), seed=0)
    improvement = summary[(summary["metric"] == "improvement_mse") & (summary["reference"] == "standard")
                          & (summary["model"] == "joint")]
    expected = np.mean([1 - 0.3 / 0.4, 1 - 0.31 / 0.41])
    row = improvement.iloc[0]
    assert row["mean"] == pytest.approx(expected) and row["n_seeds"] == 2
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["ci_high"] - row["ci_low"] > 0
    assert "bootstrap over test documents" in row["interval"]
    assert (summary["n_documents"] == 6).all() and (summary["n_tokens"] == 600).all()
    assert Path(out.figure).stat().st_size > 5000


def test_per_document_sums_add_up_to_the_split_metrics(tmp_path: Path) -> None:
    from featint.evaluation import reconstruction_metrics_by_set

    model, normaliser, store, _ = model_and_data(tmp_path)
    tokens = pd.read_parquet(tmp_path / "test" / "tokens.parquet")
    tokens["doc_id"] = (tokens["row"] // 700).astype("int32")  # five documents of unequal sizes
    tokens.to_parquet(tmp_path / "test" / "tokens.parquet")
    store = ActivationStore(tmp_path / "test")
    documents: dict[str, pd.DataFrame] = {}
    result = reconstruction_metrics_by_set(model, normaliser, store, chunk=512, documents=documents)
    for token_set, frame in documents.items():
        assert set(frame["doc_id"]) == set(range(5))
        for component, rows in frame.groupby("component"):
            expected = result[token_set]["components"][component]  # type: ignore[index]
            assert rows["sse"].sum() / rows["sst"].sum() == pytest.approx(expected["fvu"], rel=1e-9)
            assert rows["sse_raw"].sum() / rows["sst_raw"].sum() == pytest.approx(expected["fvu_raw"], rel=1e-9)
            assert rows["tokens"].sum() == result[token_set]["tokens"]


def test_one_pass_over_several_token_sets_equals_separate_passes(tmp_path: Path) -> None:
    from featint.evaluation import reconstruction_metrics_by_set

    model, normaliser, store, _ = model_and_data(tmp_path)
    tokens = pd.read_parquet(tmp_path / "test" / "tokens.parquet")
    tokens.loc[:99, "is_outlier"] = True
    tokens.loc[:99, "selected"] = False
    tokens.to_parquet(tmp_path / "test" / "tokens.parquet")
    store = ActivationStore(tmp_path / "test")
    both = reconstruction_metrics_by_set(model, normaliser, store, chunk=512)
    assert both["selected"]["tokens"] == 2900 and both["with_outliers"]["tokens"] == 3000
    for token_set in ("selected", "with_outliers"):
        alone = reconstruction_metrics(model, normaliser, store, token_set, chunk=512)
        assert alone["components"]["full"]["fvu"] == pytest.approx(both[token_set]["components"]["full"]["fvu"])  # type: ignore[index]
        assert alone["l0"] == pytest.approx(both[token_set]["l0"])
