"""The training loop: data stream, LR schedule, exact resume, NaN stop, and planted-structure recovery."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from simulated_cuda import simulated_cuda

from featint.activations import ActivationStore, write_store_from_tensor
from featint.config import Settings
from featint.evaluation import reconstruction_metrics
from featint.models import build_model
from featint.normaliser import Normaliser
from featint.training import ShuffledBatches, TrainingError, lr_lambda, train

D, F_, K_TOP = 16, 24, 3


def toy_data(n: int, seed: int, interaction_scale: float) -> torch.Tensor:
    """k-sparse combinations of fixed unit atoms, plus f_i f_j w_ij for 12 planted feature pairs."""
    atoms = torch.nn.functional.normalize(torch.randn(F_, D, generator=torch.Generator().manual_seed(7)), dim=1)
    directions = torch.nn.functional.normalize(torch.randn(12, D, generator=torch.Generator().manual_seed(8)), dim=1)
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(F_, generator=g)[:K_TOP] for _ in range(n)])
    f = torch.zeros(n, F_).scatter(1, idx, 0.5 + torch.rand(n, K_TOP, generator=g))
    x = f @ atoms
    for pair in range(12):
        x += interaction_scale * (f[:, 2 * pair] * f[:, 2 * pair + 1])[:, None] * directions[pair]
    return x


def settings(dropout: float = 0.1, **training: object) -> Settings:
    base = {"tokens": 256 * 40, "batch_size": 256, "log_every": 5, "validate_every": 10, "checkpoint_every": 10,
            "validation_tokens": 512, "shuffle_shards": 1}
    base.update(training)
    return Settings.from_dict({"sae": {"n_features": F_, "k": K_TOP, "auxk": {"k_aux": 8, "dead_after_tokens": 2048}},
                               "nfm": {"embed_dim": 16, "truncated_k": 1, "dropout": dropout}, "training": base})


@pytest.fixture()
def toy_store(tmp_path: Path) -> tuple[ActivationStore, Normaliser, torch.Tensor]:
    x = toy_data(6000, 0, 1.0)
    write_store_from_tensor(tmp_path / "train", x, "train", "toy", shard_rows=1000)
    return ActivationStore(tmp_path / "train"), Normaliser.fit([x], "zscore", "toy"), x


def test_batches_cover_the_data_and_restart_anywhere(toy_store) -> None:  # type: ignore[no-untyped-def]
    store, normaliser, x = toy_store
    data = ShuffledBatches(store, normaliser, batch_size=256, shuffle_shards=2, seed=3)
    per_epoch = data.batches_per_epoch(0)
    assert per_epoch == sum(n for _, n in data.epoch_groups(0)) >= 6000 // 256 - 3
    stream = data.iterate(0)
    first_epoch = torch.cat([next(stream).x for _ in range(per_epoch)])
    # every batch row is a distinct normalised training vector
    assert torch.unique(first_epoch, dim=0).shape[0] == first_epoch.shape[0]
    assert torch.isin(first_epoch[:, 0], normaliser.apply(x)[:, 0]).all()
    again = ShuffledBatches(store, normaliser, batch_size=256, shuffle_shards=2, seed=3)
    restarted = again.iterate(per_epoch - 2)
    full = data.iterate(0)
    expected = [next(full).x for _ in range(per_epoch + 3)][per_epoch - 2:]
    for batch in expected:
        assert torch.equal(next(restarted).x, batch)
    other_seed = next(ShuffledBatches(store, normaliser, 256, 2, seed=4).iterate(0)).x
    assert not torch.equal(other_seed, expected[0])


def test_lr_schedule_decays_over_80_percent_of_actual_steps() -> None:
    factor = lr_lambda(total_steps=1000, final_factor=0.1, decay_fraction=0.8)
    assert factor(0) == 1.0
    assert factor(400) == pytest.approx(0.55)
    assert factor(800) == pytest.approx(0.1) and factor(999) == pytest.approx(0.1)


class Killed(Exception):
    """A simulated kill of the training process."""


def kill_after(step: int):  # type: ignore[no-untyped-def]
    """A checkpoint hook that kills the run once the checkpoint of ``step`` is on disk."""
    def hook(done: int) -> None:
        if done >= step:
            raise Killed(f"killed after the checkpoint of step {done}")
    return hook


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("kind", ["joint", "standard"])
def test_resume_equals_uninterrupted(kind: str, device: str, toy_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A killed run resumes to the uninterrupted run's weights and log, on the CPU and on a (simulated) GPU,
    whose checkpoint holds its RNG states on the CPU (``torch.set_rng_state`` refuses them elsewhere)."""
    store, normaliser, x = toy_store
    s = settings()

    def fresh():  # type: ignore[no-untyped-def]
        torch.manual_seed(11)
        return (build_model(kind, D, s.sae, s.nfm).to(device),
                ShuffledBatches(store, normaliser, 256, 1, seed=11, device=device))

    with simulated_cuda() if device == "cuda" else contextlib.nullcontext():
        validation = normaliser.apply(x[:512]).to(device)
        model_a, data_a = fresh()
        log_a = train(model_a, data_a, validation, s.training, s.sae.auxk, 3e-3, tmp_path / "a.pt", name=kind).log
        model_b, data_b = fresh()
        with pytest.raises(Killed):
            train(model_b, data_b, validation, s.training, s.sae.auxk, 3e-3, tmp_path / "b.pt", name=kind,
                  on_checkpoint=kill_after(20))
        saved = torch.load(tmp_path / "b.pt", map_location="cpu", weights_only=True)["rng"]
        assert ("cuda" in saved) == (device == "cuda")
        torch.manual_seed(999)  # a resumed process starts with other RNG state; the checkpoint restores it
        model_c, data_c = fresh()
        log_c = train(model_c, data_c, validation, s.training, s.sae.auxk, 3e-3, tmp_path / "b.pt", name=kind).log
        assert model_c.sae.W_enc.device.type == device
        for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
            assert torch.equal(a.cpu(), c.cpu()), name
    assert log_a.equals(log_c)


def test_nan_loss_stops_with_a_clear_error(tmp_path: Path) -> None:
    x = toy_data(2000, 0, 0.0)
    x[5, 3] = float("nan")
    write_store_from_tensor(tmp_path / "train", x, "train", "toy", shard_rows=2000)
    normaliser = Normaliser.fit([toy_data(100, 1, 0.0)], "zscore", "toy")
    s = settings(tokens=256 * 8)
    model = build_model("standard", D, s.sae, s.nfm)
    data = ShuffledBatches(ActivationStore(tmp_path / "train"), normaliser, 256, 1, seed=0)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step \d+ \(lr 0.003\); lower the learning rate"):
        train(model, data, normaliser.apply(x[100:200]), s.training, s.sae.auxk, 3e-3, tmp_path / "c.pt")


def test_too_few_tokens_for_a_batch(tmp_path: Path) -> None:
    write_store_from_tensor(tmp_path / "train", torch.randn(100, D), "train", "toy")
    with pytest.raises(TrainingError, match="fewer than one batch"):
        ShuffledBatches(ActivationStore(tmp_path / "train"), Normaliser.fit([torch.randn(50, D)], "zscore", "t"),
                        batch_size=256, shuffle_shards=1, seed=0)


@pytest.mark.slow
def test_planted_interactions_are_fit_by_the_interaction_term_only_when_present(tmp_path: Path) -> None:
    """Joint beats the standard SAE and its own no-interaction ablation when x contains f_i f_j terms; on
    purely linear data the interaction term buys nothing beyond noise."""
    s = settings(dropout=0.0, tokens=256 * 1200, log_every=100, validate_every=600, checkpoint_every=100000)
    fvu: dict[tuple[float, str], float] = {}
    for scale in (0.0, 2.0):
        x, test = toy_data(24000, 0, scale), toy_data(4000, 1, scale)
        write_store_from_tensor(tmp_path / f"train{scale}", x, "train", "toy", shard_rows=4096)
        write_store_from_tensor(tmp_path / f"test{scale}", test, "test", "toy", shard_rows=4096)
        normaliser = Normaliser.fit([x], "zscore", "toy")
        for kind in ("standard", "joint", "joint_no_interaction"):
            values = []
            for seed in (0, 1):
                torch.manual_seed(seed)
                model = build_model(kind, D, s.sae, s.nfm)
                data = ShuffledBatches(ActivationStore(tmp_path / f"train{scale}"), normaliser, 256, 1, seed)
                train(model, data, normaliser.apply(test[:512]), s.training, s.sae.auxk, 3e-3,
                      tmp_path / f"{kind}{scale}{seed}.pt", name=kind)
                result = reconstruction_metrics(model, normaliser, ActivationStore(tmp_path / f"test{scale}"),
                                                "selected")
                values.append(result["components"]["sae" if kind == "standard" else "full"]["fvu"])  # type: ignore[index]
            fvu[(scale, kind)] = float(np.mean(values))
    planted_gain = fvu[(2.0, "joint_no_interaction")] - fvu[(2.0, "joint")]
    linear_gain = fvu[(0.0, "joint_no_interaction")] - fvu[(0.0, "joint")]
    assert fvu[(2.0, "joint")] < 0.9 * fvu[(2.0, "standard")], fvu
    assert planted_gain > 0.01, fvu
    assert abs(linear_gain) < 0.5 * planted_gain, fvu


def test_checkpoint_of_another_configuration_is_not_resumed(toy_store, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    store, normaliser, x = toy_store
    s = settings()
    validation = normaliser.apply(x[:512])
    torch.manual_seed(0)
    model = build_model("standard", D, s.sae, s.nfm)
    with pytest.raises(Killed):
        train(model, ShuffledBatches(store, normaliser, 256, 1, seed=0), validation, s.training, s.sae.auxk, 3e-3,
              tmp_path / "c.pt", name="standard", on_checkpoint=kill_after(10))
    torch.manual_seed(0)
    model = build_model("standard", D, s.sae, s.nfm)
    with caplog.at_level("WARNING"):
        result = train(model, ShuffledBatches(store, normaliser, 256, 1, seed=0), validation, s.training,
                       s.sae.auxk, 1e-3, tmp_path / "c.pt", name="standard")
    assert "ignoring checkpoint" in caplog.text
    assert result.log["step"].iloc[0] == 5  # started from step 0, not from the checkpoint's step 10


def _toy_activations(tmp_path: Path) -> Path:
    """A toy activations directory (train / validation splits + normaliser) as the stages read it."""
    x = toy_data(6000, 0, 1.0)
    write_store_from_tensor(tmp_path / "acts" / "train", x[:5000], "train", "toy", shard_rows=1000)
    write_store_from_tensor(tmp_path / "acts" / "validation", x[5000:], "validation", "toy", shard_rows=1000)
    Normaliser.fit([x[:5000]], "zscore", "toy").save(tmp_path / "acts" / "normaliser.safetensors")
    return tmp_path / "acts"


def test_lr_selection_extends_the_grid_past_an_edge_until_the_optimum_is_interior(tmp_path: Path) -> None:
    import pandas as pd

    from featint.training import chosen_lr, run_lr_selection

    acts = _toy_activations(tmp_path)
    # a grid far below the useful range: the best LR is its upper edge, so the grid grows upwards
    s = settings(lr_grid=[1e-5, 3e-5], lr_selection_tokens=256 * 20, lr_grid_factor=10.0, lr_grid_extensions=4,
                 validate_every=20)
    frame = run_lr_selection(s, "standard", acts, tmp_path / "standard.parquet")
    assert list(frame["lr"]) == sorted(frame["lr"]) and frame["lr"].max() > 3e-5
    assert (frame.loc[frame["lr"] > 3e-5, "extension"] > 0).all()
    assert (frame.loc[frame["lr"] <= 3e-5, "extension"] == 0).all()
    assert frame["chosen"].sum() == 1
    assert frame.loc[frame["chosen"], "validation_fvu"].item() == frame["validation_fvu"].min()
    best = frame.index[frame["chosen"]][0]
    assert frame["interior"].iloc[0] == (0 < best < len(frame) - 1)
    assert chosen_lr(s, "standard", tmp_path / "standard.parquet") == frame.loc[frame["chosen"], "lr"].item()
    # a kind sharing another kind's choice reads that kind's table; another kind's table is refused
    pd.read_parquet(tmp_path / "standard.parquet").assign(model="sequential").to_parquet(tmp_path / "seq.parquet")
    assert chosen_lr(s, "sequential_truncated", tmp_path / "seq.parquet") == frame.loc[frame["chosen"], "lr"].item()
    with pytest.raises(TrainingError, match="not the lr-selection table of joint"):
        chosen_lr(s, "joint", tmp_path / "standard.parquet")


def test_lr_selection_stops_extending_when_the_best_is_interior(tmp_path: Path) -> None:
    from featint.training import run_lr_selection

    acts = _toy_activations(tmp_path)
    s = settings(lr_grid=[1e-4, 3e-3, 3.0], lr_selection_tokens=256 * 20, lr_grid_extensions=3, validate_every=20)
    frame = run_lr_selection(s, "standard", acts, tmp_path / "standard.parquet")
    assert len(frame) == 3 and (frame["extension"] == 0).all()  # 3e-3 beats a too-small and a diverging LR
    assert frame.loc[frame["chosen"], "lr"].item() == 3e-3 and frame["interior"].all()


@pytest.mark.parametrize("kind", ["standard", "joint"])
def test_bf16_and_float32_training_agree_step_by_step(kind: str, toy_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The default (bf16 autocast of the encoder product where the CPU has it) against float32 from the same
    seed and batches: every logged training loss within 1% and the final validation FVU within 0.5% (relative),
    the tolerance the default run's quality check states."""
    store, normaliser, x = toy_store
    validation = normaliser.apply(x[:512])
    logs = {}
    for bf16 in (False, True):
        s = settings(dropout=0.0, bf16_autocast=bf16)
        torch.manual_seed(0)
        model = build_model(kind, D, s.sae, s.nfm)
        logs[bf16] = train(model, ShuffledBatches(store, normaliser, 256, 1, seed=0), validation, s.training,
                           s.sae.auxk, 3e-3, tmp_path / f"{kind}-{bf16}.pt", name=f"{kind}-{bf16}").log
    train32, train16 = (logs[b].loc[logs[b]["split"] == "train", "mse"].to_numpy() for b in (False, True))
    assert len(train32) == len(train16) > 3
    np.testing.assert_allclose(train16, train32, rtol=0.01)
    fvu32, fvu16 = (float(logs[b].loc[logs[b]["split"] == "validation", "fvu"].iloc[-1]) for b in (False, True))
    assert fvu16 == pytest.approx(fvu32, rel=0.005)


def test_bf16_autocast_trains_with_float32_master_weights(toy_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The GPU configs' bf16 autocast, run on CPU: the sparse backward under autocast matches the dense
    reference within bf16 tolerance, training keeps float32 weights and a finite, falling loss, and evaluation
    under autocast agrees with float32."""
    from featint.training import evaluate_mse

    store, normaliser, x = toy_store
    s = settings(bf16_autocast=True)
    torch.manual_seed(0)
    model = build_model("joint", D, s.sae, s.nfm)
    batch = normaliser.apply(x[:256])
    grads = []
    for dense, bf16 in ((False, True), (True, True), (True, False)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rec = model.forward_dense(batch) if dense else model(batch)
            loss = ((rec.total.float() - batch) ** 2).mean()
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    sparse_bf16, dense_bf16, reference = grads

    def error(grad: torch.Tensor, name: str) -> float:
        return float((grad - reference[name]).abs().max() / reference[name].abs().max().clamp_min(1e-12))

    for name, grad in sparse_bf16.items():
        # the sparse backward under autocast is as close to the float32 reference as the dense path under
        # autocast is (bf16 rounding compounds through the MLP for the tiny early V gradients)
        assert grad.dtype == torch.float32
        assert error(grad, name) <= 2 * error(dense_bf16[name], name) + 0.02, name
    validation = normaliser.apply(x[:512])
    result = train(model, ShuffledBatches(store, normaliser, 256, 1, seed=0), validation, s.training, s.sae.auxk,
                   3e-3, tmp_path / "bf16.pt", name="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    fvu = result.log.loc[result.log["split"] == "validation", "fvu"].to_numpy()
    assert np.isfinite(fvu).all() and fvu[-1] < fvu[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, fvu_bf16 = evaluate_mse(model, validation)
    assert fvu_bf16 == pytest.approx(evaluate_mse(model, validation)[1], rel=0.05)
