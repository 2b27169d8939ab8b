"""The simulated GPU of ``tests/simulated_cuda.py`` is an instrument: it must raise where CUDA raises (each
mistake the stages made before they ran on it) and stay silent where CUDA accepts the code."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from simulated_cuda import MISMATCH, is_tagged, simulated_cuda


def test_tensors_moved_to_the_device_report_it_and_results_stay_there() -> None:
    with simulated_cuda():
        x = torch.randn(4, 3).to("cuda")
        assert x.device == torch.device("cuda", 0) and x.is_cuda
        assert (x * 2 + 1).device.type == "cuda" and x.sum(0).device.type == "cuda"
        assert x.T.is_cuda and (x @ x.T).is_cuda and x.mT.is_cuda  # attributes that are tensors stay there
        mask = x > 0
        assert (~mask).is_cuda and (mask & ~mask).is_cuda and (-x).is_cuda  # operators (dunders) too
        assert all(row.is_cuda for row in x)
        y = x.clone()
        y += 1
        assert y.is_cuda
        values, indices = x.topk(2, dim=1)
        assert values.is_cuda and indices.is_cuda
        assert x.cpu().device.type == "cpu" and x.is_cuda  # .cpu() copies; x stays where it was
        assert torch.zeros(2, device="cuda").is_cuda and torch.zeros_like(x).is_cuda
        assert (x + torch.tensor(2.0)).is_cuda  # a 0-dim CPU tensor is a scalar operand, as on CUDA
        assert x[torch.tensor([0, 1])].is_cuda  # CPU indices are allowed
        host = torch.empty(4, 3)
        host.copy_(x)  # so is the copy between devices
        assert not host.is_cuda
        assert float(x.sum()) == pytest.approx(float(x.cpu().sum())) and len(x.tolist()) == 4
    assert not torch.ones(1).to("cpu").is_cuda  # outside the simulation nothing is tagged


@pytest.mark.parametrize("mistake", ["add", "embedding", "in_place", "cat", "linear"])
def test_mixing_a_device_tensor_with_a_host_tensor_raises(mistake: str) -> None:
    with simulated_cuda():
        on_device, on_host = torch.ones(3, 2, device="cuda"), torch.ones(3, 2)
        table = torch.nn.Embedding(10, 4).to("cuda")
        steps = {"add": lambda: on_device + on_host,
                 "embedding": lambda: table(torch.tensor([1, 2])),  # the bridge given CPU tokens
                 "in_place": lambda: on_host.sub_(on_device),  # a CPU parameter updated with a CUDA tensor
                 "cat": lambda: torch.cat([on_host, on_device]),
                 "linear": lambda: F.linear(on_host, on_device.t())}
        with pytest.raises(RuntimeError, match=MISMATCH.split(",")[0]):
            steps[mistake]()


def test_numpy_of_a_device_tensor_raises_and_after_cpu_it_works() -> None:
    with simulated_cuda():
        x = torch.arange(3.0, device="cuda")
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            x.numpy()
        with pytest.raises(TypeError, match="cuda:0"):
            np.asarray(x)
        assert x.cpu().numpy().tolist() == [0.0, 1.0, 2.0]


def test_modules_move_with_their_parameters_and_train_on_the_device() -> None:
    with simulated_cuda():
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).to("cuda")
        assert all(p.is_cuda for p in model.parameters())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        loss = model(torch.randn(8, 3).to("cuda")).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        assert all(p.is_cuda for p in model.parameters())
        assert torch.nn.Parameter(torch.zeros(2, device="cuda")).is_cuda


def test_random_draws_need_a_device_generator_and_rng_states_stay_on_the_host() -> None:
    with simulated_cuda():
        generator = torch.Generator().manual_seed(0)
        with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
            torch.randn(3, generator=generator, device="cuda")
        assert torch.randn(3, generator=generator).to("cuda").is_cuda  # drawn on the CPU, then moved
        state = torch.cuda.get_rng_state()
        assert state.dtype == torch.uint8 and not is_tagged(state)
        torch.cuda.set_rng_state(state)
        with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
            torch.cuda.set_rng_state(state.to("cuda"))
        with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
            torch.set_rng_state(torch.get_rng_state().to("cuda"))


def test_a_file_loaded_onto_the_device_puts_every_tensor_there() -> None:
    buffer = io.BytesIO()
    torch.save({"weights": torch.ones(2), "rng": torch.get_rng_state()}, buffer)
    with simulated_cuda():
        buffer.seek(0)
        on_device = torch.load(buffer, map_location="cuda", weights_only=True)
        assert on_device["weights"].is_cuda and on_device["rng"].is_cuda
        buffer.seek(0)
        on_host = torch.load(buffer, map_location="cpu", weights_only=True)
        assert not on_host["rng"].is_cuda


def test_the_simulation_answers_as_a_one_gpu_machine_and_is_undone_on_exit() -> None:
    available = torch.cuda.is_available()
    with simulated_cuda():
        assert torch.cuda.is_available() and torch.cuda.device_count() == 1
        assert torch.cuda.get_device_name() == "Simulated CUDA (CPU)"
        torch.cuda.synchronize()
        assert torch.ones(2).pin_memory().device.type == "cpu"
        assert torch.empty(2, pin_memory=True).shape == (2,)
    assert torch.cuda.is_available() == available
