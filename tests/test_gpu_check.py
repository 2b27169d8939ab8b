"""The device check's CPU part (``benchmarks/gpu_check.py --small``), on the CPU and on the simulated GPU, so
the script a GPU lease runs has run through every branch but the real device's speed before it gets one."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pandas as pd
import pytest
from simulated_cuda import simulated_cuda

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check

CHECKS = {"step: sparse vs dense gradients", "step: sparse kernels", "step: dense kernels",
          "step: dense / sparse time", "loop: two identical runs", "loop: killed and resumed",
          "continuation: float16 direct vs bridge"}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_device_check_passes_its_cpu_part(device: str, tmp_path: Path) -> None:
    with simulated_cuda() if device == "cuda" else contextlib.nullcontext():
        status = gpu_check.main(["--device", device, "--small", "--steps", "8", "--repeats", "2",
                                 "--out", str(tmp_path)])
    table = pd.read_parquet(tmp_path / "summary.parquet")
    assert status == 0, table[table["status"] == "fail"].to_string()
    assert CHECKS <= set(table["check"])
    assert set(table["status"]) <= {"pass", "info"}
    if device == "cuda":  # the GPU-only row: peak memory against featint.plan (0 on the simulated device)
        assert "loop: peak memory / plan" in set(table["check"])
    assert (tmp_path / "summary.md").read_text().count("\n") == len(table) + 2


def test_a_check_that_crashes_becomes_a_failing_row() -> None:
    def broken() -> list[dict]:
        raise RuntimeError("no such kernel")

    rows = gpu_check.guarded("step", broken)
    assert rows[0]["status"] == "fail" and "no such kernel" in rows[0]["detail"]
