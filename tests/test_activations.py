from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_extraction_settings

from featint.activations import ActivationStore, ShardWriter, extract_split, fit_normaliser
from featint.errors import ModelSourceError, ShardError, SplitError
from featint.normaliser import Normaliser


def test_shard_writer_round_trip(tmp_path: Path) -> None:
    vectors = torch.randn(130, 8)
    writer = ShardWriter(tmp_path, shard_rows=50, dtype="float32")
    writer.add(vectors[:70], np.zeros(70, dtype=np.int32))
    writer.add(vectors[70:], np.ones(60, dtype=np.int32))
    manifest = writer.close()
    assert list(manifest["rows"]) == [50, 50, 30]
    assert list(manifest["first_row"]) == [0, 50, 100]
    assert manifest["doc_ids"].iloc[1] == [0, 1]
    from safetensors.torch import load_file

    back = torch.cat([load_file(str(tmp_path / f))["activations"] for f in manifest["file"]])
    assert torch.equal(back, vectors)


def extract(settings, split: str, documents: Path, lm: Path, out: Path, train: Path | None = None):  # type: ignore[no-untyped-def]
    return extract_split(split=split, documents_path=documents, model_directory=lm, out_dir=out,
                         model=settings.model, hook=settings.hook, extraction=settings.extraction, train_dir=train)


@pytest.mark.slow
def test_extraction_reads_back_the_models_residual(tmp_path: Path, documents_path: Path, embedded_lm_dir: Path,
                                                   bridge) -> None:  # type: ignore[no-untyped-def]
    settings = tiny_extraction_settings()
    meta = extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "train")
    store = ActivationStore(tmp_path / "train")
    tokens = store.tokens()
    assert meta.hook_name == "blocks.3.hook_resid_pre" and meta.d_model == 576
    assert len(tokens) == meta.n_rows == meta.n_windows * 16 and meta.n_rows % 50 != 0  # last shard partial
    assert (tokens.loc[tokens["position"] == 0, "token_id"] == bridge.tokenizer.bos_token_id).all()
    assert tokens["doc_id"].isin([0, 1]).all()  # train documents only
    # Shards hold exactly what the model computes at the hook (HF hidden_states[3]) for those token windows.
    windows = torch.tensor(tokens["token_id"].to_numpy().reshape(meta.n_windows, 16), dtype=torch.long)
    with torch.no_grad():
        hidden = bridge.original_model(windows, output_hidden_states=True).hidden_states[3]
    stored = torch.cat([v for _, v in store.iter_shards()])
    torch.testing.assert_close(stored, hidden.reshape(-1, 576), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tokens["norm"].to_numpy(), stored.norm(dim=1).numpy(), rtol=1e-5)
    # Default selection: position 0 and outliers are stored but not selected.
    assert not tokens.loc[tokens["is_position_zero"], "selected"].any()
    assert not tokens.loc[tokens["is_outlier"], "selected"].any()
    assert tokens.loc[~tokens["is_position_zero"] & ~tokens["is_outlier"], "selected"].all()
    median = np.median(tokens.loc[~tokens["is_position_zero"], "norm"])
    assert meta.outlier_threshold == pytest.approx(10 * median, rel=1e-6)
    # Masked streaming returns the selected rows only.
    rows, vectors = zip(*store.iter_shards(store.selected_mask()))
    assert np.array_equal(np.concatenate(rows), np.flatnonzero(tokens["selected"]))
    assert torch.equal(torch.cat(vectors), stored[torch.from_numpy(tokens["selected"].to_numpy())])

    # Validation uses the train split's threshold.
    val_meta = extract(settings, "validation", documents_path, embedded_lm_dir, tmp_path / "validation",
                       train=tmp_path / "train")
    assert val_meta.outlier_threshold == meta.outlier_threshold
    assert ActivationStore(tmp_path / "validation").tokens()["doc_id"].eq(2).all()

    # The normaliser is fitted on selected train tokens only.
    normaliser = fit_normaliser(tmp_path / "train", "zscore", 1e-6, tmp_path / "normaliser.safetensors")
    selected = stored[torch.from_numpy(tokens["selected"].to_numpy())].double()
    torch.testing.assert_close(normaliser.mean.double(), selected.mean(0), rtol=1e-4, atol=1e-4)
    assert Normaliser.load(tmp_path / "normaliser.safetensors").n_tokens == int(tokens["selected"].sum())


@pytest.mark.slow
def test_extraction_is_deterministic(tmp_path: Path, documents_path: Path, embedded_lm_dir: Path) -> None:
    settings = tiny_extraction_settings()
    extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "a")
    extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "b")
    a, b = ActivationStore(tmp_path / "a"), ActivationStore(tmp_path / "b")
    assert list(a.manifest["sha256"]) == list(b.manifest["sha256"])
    pd.testing.assert_frame_equal(a.tokens(), b.tokens())


@pytest.mark.slow
def test_corrupt_and_truncated_shards_are_detected(tmp_path: Path, documents_path: Path,
                                                    embedded_lm_dir: Path) -> None:
    settings = tiny_extraction_settings()
    extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "train")
    store = ActivationStore(tmp_path / "train")
    shard = tmp_path / "train" / store.manifest["file"].iloc[1]
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF  # same size, one flipped byte
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-00001.safetensors fails its sha256 checksum; delete"):
        list(store.iter_shards())
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ShardError, match=r"shard-00001.safetensors is truncated"):
        store.read_shard(1)
    shard.unlink()
    with pytest.raises(ShardError, match="is missing"):
        store.read_shard(1)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="manifest.parquet does not exist"):
        ActivationStore(tmp_path / "nowhere")


@pytest.mark.slow
def test_layer_out_of_range(tmp_path: Path, documents_path: Path, embedded_lm_dir: Path) -> None:
    from featint.config import Settings

    settings = Settings.from_dict({"hook": {"layer": 30}})
    with pytest.raises(ModelSourceError, match=r"hook.layer=30 is out of range .* 30 blocks"):
        extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "train")
    assert not (tmp_path / "train").exists()


@pytest.mark.slow
def test_split_with_zero_tokens(tmp_path: Path, documents_path: Path, embedded_lm_dir: Path) -> None:
    settings = tiny_extraction_settings(context_length=4096)
    with pytest.raises(SplitError, match="split 'train' yields zero tokens"):
        extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "train")
    assert not (tmp_path / "train").exists()
    assert not list(tmp_path.glob("train.partial-*"))


@pytest.mark.slow
def test_token_budget_is_respected(tmp_path: Path, documents_path: Path, embedded_lm_dir: Path) -> None:
    settings = tiny_extraction_settings(max_tokens={"train": 80, "validation": None, "test": None})
    meta = extract(settings, "train", documents_path, embedded_lm_dir, tmp_path / "train")
    assert meta.n_rows == 80 and meta.n_windows == 5


def test_token_selection_known_answer(tmp_path: Path) -> None:
    """Two windows of 4 rows: position 0 never selected nor an outlier; the train split's threshold is
    outlier_norm_factor x the median of its other rows; validation reads the train split's threshold."""
    from featint.activations import select_tokens
    from featint.config import Settings

    norms = np.array([100.0, 1.0, 2.0, 3.0, 100.0, 2.0, 50.0, 2.0], dtype=np.float32)
    extraction = Settings.from_dict({"extraction": {"outlier_norm_factor": 10.0}}).extraction
    chosen = select_tokens(norms, 4, "train", extraction, None)
    assert chosen.median_norm == 2.0 and chosen.threshold == 20.0
    assert chosen.is_position_zero.tolist() == [True, False, False, False] * 2
    assert chosen.is_outlier.tolist() == [False] * 6 + [True, False]
    assert chosen.selected.tolist() == [False, True, True, True, False, True, False, True]
    keep_outliers = Settings.from_dict({"extraction": {"outlier_norm_factor": 10.0,
                                                       "exclude_outliers": False}}).extraction
    assert select_tokens(norms, 4, "train", keep_outliers, None).selected.sum() == 6
