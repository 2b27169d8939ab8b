"""Cached codes of the frozen standard SAE: the frozen-encoder kinds train on them exactly as on re-encoding."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_training import _toy_activations
from test_training import settings as bf16_settings

from featint.activations import ActivationStore
from featint.codes import CodeCache, write_code_cache
from featint.errors import ShardError
from featint.models import load_model
from featint.normaliser import Normaliser
from featint.training import TrainOutputs, run_train

into = TrainOutputs.in_folder


def settings(**training: object):  # type: ignore[no-untyped-def]
    """The toy settings in float32 unless asked (the default, auto, would be bf16 on a CPU that has it): the
    fixture's cache is a float32 one, and the bf16 test below asks for bf16 explicitly."""
    return bf16_settings(**{"bf16_autocast": False, **training})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Toy activations, a trained standard SAE and its code cache."""
    root = tmp_path_factory.mktemp("codes")
    acts = _toy_activations(root)
    run_train(settings(), "standard", 0, acts, into(root / "standard"), 3e-3)
    weights = root / "standard" / "weights.safetensors"
    write_code_cache(weights, acts, root / "codes", settings().training.batch_size)
    return acts, weights, root / "codes"


def test_the_cache_holds_the_standard_sae_codes_of_every_train_token(trained: tuple[Path, Path, Path]) -> None:
    acts, weights, codes_dir = trained
    cache = CodeCache(codes_dir)
    store = ActivationStore(acts / "train")
    model, _ = load_model(weights)
    normaliser = Normaliser.load(acts / "normaliser.safetensors")
    assert cache.meta.n_rows == 5000 and cache.meta.k == model.sae.k
    for shard in range(len(store.manifest)):  # 1,000 rows per shard: the last chunk of each is padded
        _, vectors = store.read_shard_rows(shard, store.selected_mask())
        code = cache.read_shard(shard)
        with torch.no_grad():
            expected = model.sae.encode(normaliser.apply(vectors))[0]
        assert torch.equal(code.indices.sort(1).values, expected.indices.sort(1).values)
        assert torch.allclose(code.values.sort(1).values, expected.values.sort(1).values, atol=1e-6)


@pytest.mark.parametrize("kind", ["sequential", "standard_refit", "sequential_truncated"])
def test_training_on_cached_codes_equals_training_on_re_encoded_codes(kind: str, trained: tuple[Path, Path, Path],
                                                                        tmp_path: Path) -> None:
    acts, weights, codes_dir = trained
    s = settings()
    cached = run_train(s, kind, 1, acts, into(tmp_path / "cached"), 3e-3, standard_weights=weights, codes_dir=codes_dir)
    encoded = run_train(s, kind, 1, acts, into(tmp_path / "encoded"), 3e-3, standard_weights=weights)
    a, _ = load_model(tmp_path / "cached" / "weights.safetensors")
    b, _ = load_model(tmp_path / "encoded" / "weights.safetensors")
    for (name, left), (_, right) in zip(a.state_dict().items(), b.state_dict().items()):
        if kind == "sequential":
            assert torch.equal(left, right), name  # bit-identical
        else:
            # sequential_truncated: the top truncated_k of the cached codes, the same features and values summed
            # in another order; standard_refit: its encoder folds b_dec into b_enc (so training b_dec cannot move
            # the codes) and computes the standard SAE's pre-activations with other rounding
            assert torch.allclose(left, right, atol=1e-5), name
    columns = ["step", "split", "fvu"]
    pd.testing.assert_frame_equal(cached.log[columns], encoded.log[columns], check_exact=kind == "sequential",
                                  atol=1e-5)


def test_a_cache_of_another_sae_or_a_corrupt_shard_stops_with_the_fix(trained: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    acts, weights, codes_dir = trained
    other = tmp_path / "other"
    run_train(settings(), "standard", 5, acts, into(other), 3e-3)
    with pytest.raises(ShardError, match="computed by another SAE.*rerun the workflow"):
        run_train(settings(), "sequential", 5, acts, into(tmp_path / "seq"), 3e-3,
                  standard_weights=other / "weights.safetensors", codes_dir=codes_dir)
    copy = tmp_path / "copy"
    write_code_cache(weights, acts, copy, settings().training.batch_size)
    shard = sorted(copy.glob("codes-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ShardError, match="corrupt"):
        CodeCache(copy).read_shard(1)
    with pytest.raises(ShardError, match="never written"):
        CodeCache(tmp_path / "missing")


def test_under_bf16_autocast_the_cache_is_encoded_as_training_encodes(trained: tuple[Path, Path, Path],
                                                                      tmp_path: Path) -> None:
    """With ``training.bf16_autocast`` the step re-encodes in bfloat16; the cache is encoded under the same
    autocast, so training on it stays bit-identical to re-encoding, and a float32 cache is refused."""
    acts, weights, codes_dir = trained
    s = settings(bf16_autocast=True)
    with pytest.raises(ShardError, match="bf16 autocast off, but training.bf16_autocast is True"):
        run_train(s, "sequential", 1, acts, into(tmp_path / "refused"), 3e-3, standard_weights=weights,
                  codes_dir=codes_dir)
    bf16_codes = tmp_path / "codes_bf16"
    write_code_cache(weights, acts, bf16_codes, s.training.batch_size, bf16_autocast=True)
    assert CodeCache(bf16_codes).meta.bf16_autocast
    cached = run_train(s, "sequential", 1, acts, into(tmp_path / "cached"), 3e-3, standard_weights=weights,
                       codes_dir=bf16_codes)
    encoded = run_train(s, "sequential", 1, acts, into(tmp_path / "encoded"), 3e-3, standard_weights=weights)
    a, _ = load_model(tmp_path / "cached" / "weights.safetensors")
    b, _ = load_model(tmp_path / "encoded" / "weights.safetensors")
    for (name, left), (_, right) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(left, right), name
    pd.testing.assert_frame_equal(cached.log, encoded.log)


def test_train_kinds_trains_standard_first_and_caches_its_codes_once(tmp_path: Path) -> None:
    """The one "standard first" helper: the kinds built on it come after ``standard`` whatever the order asked,
    read its codes from one cache when asked to, and give the same weights as training each on re-encoded
    codes; a kind built on ``standard`` without it is refused."""
    from featint.training import train_kinds

    acts = _toy_activations(tmp_path)
    s = settings()
    order = [kind for kind, _ in train_kinds(s, ["sequential", "standard", "sequential"], 0, acts, tmp_path / "a",
                                             lambda name: 3e-3, cache_codes=True)]
    assert order == ["standard", "sequential"]
    assert CodeCache(tmp_path / "a" / "standard" / "codes").meta.n_rows == 5000
    for _ in train_kinds(s, ["standard", "sequential"], 0, acts, tmp_path / "b", lambda name: 3e-3):
        pass
    assert not (tmp_path / "b" / "standard" / "codes").exists()
    cached, _ = load_model(tmp_path / "a" / "sequential" / "weights.safetensors")
    encoded, _ = load_model(tmp_path / "b" / "sequential" / "weights.safetensors")
    for (name, left), (_, right) in zip(cached.state_dict().items(), encoded.state_dict().items()):
        assert torch.equal(left, right), name
    with pytest.raises(ValueError, match="train 'standard' with them"):
        next(train_kinds(s, ["sequential"], 0, acts, tmp_path / "c", lambda name: 3e-3))


def test_a_threshold_sae_caches_every_active_latent_and_trains_as_on_re_encoding(trained: tuple[Path, Path, Path],
                                                                                  tmp_path: Path) -> None:
    """An imported JumpReLU SAE (the trained standard SAE's weights behind per-latent thresholds): every shard's
    codes are padded to the most active latents on any train token, hold exactly the SAE's activations, and the
    sequential kind trains on them as on re-encoded codes (padding adds exact zeros to every sum)."""
    from featint.models import FeatureModel, ThresholdSAE, save_model

    acts, weights, _ = trained
    topk, _ = load_model(weights)
    sae = ThresholdSAE(topk.sae.d_model, topk.sae.n_features, "jumprelu")
    sae.load_state_dict({**topk.sae.state_dict(), "threshold": torch.linspace(0.5, 1.5, sae.n_features)})
    save_model(FeatureModel("standard", sae), tmp_path / "jumprelu.safetensors", {"hook_name": "toy"})
    s = settings()
    meta = write_code_cache(tmp_path / "jumprelu.safetensors", acts, tmp_path / "codes", s.training.batch_size)
    cache = CodeCache(tmp_path / "codes")
    store = ActivationStore(acts / "train")
    normaliser = Normaliser.load(acts / "normaliser.safetensors")
    l0_max = 0
    for shard in range(len(store.manifest)):
        _, vectors = store.read_shard_rows(shard, store.selected_mask())
        code = cache.read_shard(shard)
        with torch.no_grad():
            dense = sae.activations(normaliser.apply(vectors))
        assert code.width == meta.k and torch.equal(code.dense(sae.n_features), dense)
        l0_max = max(l0_max, int((dense > 0).sum(1).max()))
    assert meta.k == l0_max and meta.activation == "jumprelu"
    cache.check(tmp_path / "jumprelu.safetensors", store, k=s.sae.k)  # holds every active latent: any k is covered
    cached = run_train(s, "sequential", 1, acts, into(tmp_path / "cached"), 3e-3,
                       standard_weights=tmp_path / "jumprelu.safetensors", codes_dir=tmp_path / "codes")
    encoded = run_train(s, "sequential", 1, acts, into(tmp_path / "encoded"), 3e-3,
                        standard_weights=tmp_path / "jumprelu.safetensors")
    a, _ = load_model(tmp_path / "cached" / "weights.safetensors")
    b, _ = load_model(tmp_path / "encoded" / "weights.safetensors")
    for (name, left), (_, right) in zip(a.state_dict().items(), b.state_dict().items()):
        # the forward is bit-identical; the table gradients of the wider cached batches accumulate in another order
        assert torch.allclose(left, right, atol=1e-6), name
    pd.testing.assert_frame_equal(cached.log[["step", "split", "fvu"]], encoded.log[["step", "split", "fvu"]],
                                  check_exact=False, atol=1e-6)
