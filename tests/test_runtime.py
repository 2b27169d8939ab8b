"""Process settings: one GPU per job on a multi-GPU node (the assignment logic, on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from featint.runtime import claim_gpu, try_claim_slot


def test_each_job_claims_a_different_gpu_and_a_finished_job_frees_its_own(tmp_path: Path) -> None:
    gpus = ["GPU-a", "GPU-b", "GPU-c"]
    held = [try_claim_slot(gpus, tmp_path) for _ in range(3)]  # three jobs on a 3-GPU node
    assert [slot for slot, _ in held] == [0, 1, 2]  # type: ignore[misc]
    assert try_claim_slot(gpus, tmp_path) is None  # a fourth job finds every GPU held
    os.close(held[1][1])  # type: ignore[index]  # the job on GPU 1 ends
    again = try_claim_slot(gpus, tmp_path)
    assert again is not None and again[0] == 1
    for _, fd in (held[0], held[2], again):  # type: ignore[misc]
        os.close(fd)


def test_a_killed_job_releases_its_gpu(tmp_path: Path) -> None:
    """The lock is a process's flock: another process holding GPU 0 makes this one take GPU 1; once that
    process is gone, GPU 0 is free again."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from featint.runtime import claim_gpu
            print(claim_gpu(2, Path({str(tmp_path)!r}), keys=["GPU-a", "GPU-b"]), flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        slot, fd = try_claim_slot(["GPU-a", "GPU-b"], tmp_path)  # type: ignore[misc]
        assert slot == 1
        os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    assert claim_gpu(2, tmp_path, poll_seconds=0.01, keys=["GPU-a", "GPU-b"]) == 0


def test_jobs_that_each_see_their_gpu_as_device_0_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """Under SLURM every job sees its own GPU as index 0; the locks are named by UUID, so two jobs on one node
    (one shared lock folder) both get their GPU at once, and a second job on the same GPU does not."""
    first = try_claim_slot(["GPU-1111"], tmp_path)
    second = try_claim_slot(["GPU-2222"], tmp_path)
    assert first is not None and second is not None and first[0] == second[0] == 0
    assert try_claim_slot(["GPU-1111"], tmp_path) is None
    os.close(first[1])
    os.close(second[1])


def test_cuda_asked_of_a_machine_without_a_gpu_stops_with_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from featint.errors import ConfigError
    from featint.runtime import check_device, resolve_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="model.device is 'cuda' but this machine has no usable CUDA GPU"):
        resolve_device("cuda")
    check_device("auto")  # auto and cpu never stop
    assert resolve_device("auto").type == "cpu"


def test_the_simulated_gpu_is_taken_and_asks_for_deterministic_kernels() -> None:
    from simulated_cuda import simulated_cuda

    from featint.runtime import resolve_device

    before = torch.are_deterministic_algorithms_enabled()
    try:
        with simulated_cuda():
            assert resolve_device("auto") == torch.device("cuda")
            assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_cpu_share_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workflow hands each job its CPU share through FEATINT_CPU_SHARE (so --cores never reruns a job); the
    stages read it as the default of --cpu-share, 1 when unset, and refuse nonsense with the variable's name."""
    from featint.cli import build_parser
    from featint.runtime import CPU_SHARE_VARIABLE, cpu_share_from_environment

    monkeypatch.delenv(CPU_SHARE_VARIABLE, raising=False)
    assert cpu_share_from_environment() == 1.0
    monkeypatch.setenv(CPU_SHARE_VARIABLE, "0.25")
    assert cpu_share_from_environment() == 0.25
    args = build_parser().parse_args(["evaluate", "--config-json", "{}", "--weights", "w", "--activations", "a",
                                      "--run", "r", "--out", "o"])
    assert args.cpu_share == 0.25
    for bad in ("abc", "0", "1.5"):
        monkeypatch.setenv(CPU_SHARE_VARIABLE, bad)
        with pytest.raises(ValueError, match=CPU_SHARE_VARIABLE):
            cpu_share_from_environment()


def test_bf16_autocast_resolves_true_false_and_auto_by_the_device(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """true / false are kept; auto follows the CPU's flags (avx512_bf16 or amx_bf16) and says why; anything
    else stops with the key's name."""
    from featint import runtime
    from featint.errors import ConfigError

    assert runtime.resolve_bf16(True, "cpu") is True and runtime.resolve_bf16(False, "cpu") is False
    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    real_path = runtime.Path
    for cpuinfo, expected in ((with_bf16, True), (without, False), (tmp_path / "missing", False)):
        monkeypatch.setattr(runtime, "Path", lambda p, _c=cpuinfo: _c if p == "/proc/cpuinfo" else real_path(p))
        native, why = runtime.native_bf16("cpu")
        assert native is expected and why
        assert runtime.resolve_bf16("auto", "cpu") is expected
    assert "avx512_bf16" in runtime.native_bf16.__doc__
    with pytest.raises(ConfigError, match="training.bf16_autocast must be true, false or auto"):
        runtime.resolve_bf16("sometimes", "cpu")
