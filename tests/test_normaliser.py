from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featint.errors import ShardError
from featint.normaliser import Normaliser


def sample(n: int = 4000, d: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.1, 30, d) + torch.linspace(-5, 50, d)


def test_zscore_matches_numpy_and_round_trips() -> None:
    x = sample()
    norm = Normaliser.fit(x.split(333), kind="zscore", hook_name="h")
    xn = x.double().numpy()
    np.testing.assert_allclose(norm.mean.numpy(), xn.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(1 / norm.scale.numpy(), xn.std(0, ddof=1), rtol=1e-5)
    z = norm.apply(x)
    assert torch.allclose(z.mean(0), torch.zeros(24), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(24), atol=1e-4)
    assert torch.allclose(norm.invert(z), x, rtol=1e-5, atol=1e-4)


def test_scalar_gives_sqrt_d_mean_norm() -> None:
    x = sample()
    norm = Normaliser.fit([x], kind="scalar", hook_name="h")
    assert torch.equal(norm.mean, torch.zeros(24))
    np.testing.assert_allclose(norm.raw_mean.numpy(), x.double().mean(0).numpy(), rtol=1e-5, atol=1e-5)
    assert norm.apply(x).norm(dim=1).mean().item() == pytest.approx(24**0.5, rel=1e-5)
    assert torch.allclose(norm.invert(norm.apply(x)), x, rtol=1e-5, atol=1e-4)


def test_constant_dimension_is_floored() -> None:
    x = sample()
    x[:, 3] = 7.0
    norm = Normaliser.fit([x], kind="zscore", hook_name="h", min_std=1e-3)
    assert torch.isfinite(norm.apply(x)).all()
    assert norm.scale[3].item() == pytest.approx(1e3)


def test_save_load_identical(tmp_path: Path) -> None:
    norm = Normaliser.fit([sample()], kind="zscore", hook_name="blocks.3.hook_resid_pre")
    norm.save(tmp_path / "n.safetensors")
    loaded = Normaliser.load(tmp_path / "n.safetensors")
    assert loaded.kind == "zscore" and loaded.hook_name == "blocks.3.hook_resid_pre"
    assert loaded.n_tokens == 4000
    assert torch.equal(loaded.mean, norm.mean) and torch.equal(loaded.scale, norm.scale)
    assert torch.equal(loaded.raw_mean, norm.raw_mean)


def test_scalar_file_without_raw_mean_asks_for_a_refit(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    norm = Normaliser.fit([sample()], kind="scalar", hook_name="h")
    save_file({"mean": norm.mean, "scale": norm.scale}, str(tmp_path / "old.safetensors"),
              metadata={"kind": "scalar", "n_tokens": "4000", "hook_name": "h"})
    with pytest.raises(ShardError, match="fit_normaliser"):
        Normaliser.load(tmp_path / "old.safetensors")


def test_empty_selection_is_an_error() -> None:
    with pytest.raises(ShardError, match="empty"):
        Normaliser.fit([torch.zeros(0, 5)], kind="zscore", hook_name="h")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="fit_normaliser"):
        Normaliser.load(tmp_path / "absent.safetensors")
