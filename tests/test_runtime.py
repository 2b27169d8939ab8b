"""Process settings: one GPU per job on a multi-GPU node (the assignment logic, on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featint.runtime import claim_gpu, try_claim_slot


def test_each_job_claims_a_different_gpu_and_a_finished_job_frees_its_own(tmp_path: Path) -> None:
    held = [try_claim_slot(3, tmp_path) for _ in range(3)]  # three jobs on a 3-GPU node
    assert [slot for slot, _ in held] == [0, 1, 2]  # type: ignore[misc]
    assert try_claim_slot(3, tmp_path) is None  # a fourth job finds every GPU held
    os.close(held[1][1])  # type: ignore[index]  # the job on GPU 1 ends
    again = try_claim_slot(3, tmp_path)
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
            print(claim_gpu(2, Path({str(tmp_path)!r})), flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        slot, fd = try_claim_slot(2, tmp_path)  # type: ignore[misc]
        assert slot == 1
        os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    assert claim_gpu(2, tmp_path, poll_seconds=0.01) == 0


def test_cpu_share_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workflow hands each job its CPU share through FEATINT_CPU_SHARE (so --cores never reruns a job); the
    stages read it as the default of --cpu-share, 1 when unset, and refuse nonsense with the variable's name."""
    from featint.cli import build_parser
    from featint.runtime import CPU_SHARE_VARIABLE, cpu_share_from_environment

    monkeypatch.delenv(CPU_SHARE_VARIABLE, raising=False)
    assert cpu_share_from_environment() == 1.0
    monkeypatch.setenv(CPU_SHARE_VARIABLE, "0.25")
    assert cpu_share_from_environment() == 0.25
    args = build_parser().parse_args(["evaluate", "--weights", "w", "--activations", "a", "--run", "r", "--out", "o"])
    assert args.cpu_share == 0.25
    for bad in ("abc", "0", "1.5"):
        monkeypatch.setenv(CPU_SHARE_VARIABLE, bad)
        with pytest.raises(ValueError, match=CPU_SHARE_VARIABLE):
            cpu_share_from_environment()
