"""What every benchmark measured, kept for the summary: each script records its ratios (with their goals and
shapes) into ``benchmarks/results/bench/<script>.json``; ``summary.py`` turns them into
``benchmarks/results/summary.md``. Nothing here gates on time."""

from __future__ import annotations

import json
import operator
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench"

_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Measurement:
    """One number a benchmark measured."""

    quantity: str  #: what it is, e.g. "NFM fwd+bwd, dense / sparse"
    value: float  #: the measured value
    unit: str  #: "x" for ratios, "tokens/s", "ms", ...
    goal: str = ""  #: e.g. ">= 20" (empty: reported, not judged)
    shapes: str = ""  #: the shapes it was measured at
    note: str = ""  #: how it was measured, or why it misses its goal

    @property
    def meets(self) -> bool | None:
        """Whether the value meets its goal (None without a goal)."""
        if not self.goal:
            return None
        op, threshold = self.goal.split()
        return bool(_COMPARE[op](self.value, float(threshold)))


@dataclass
class Recorder:
    """Collects one script's measurements, prints each as it comes and writes them at the end."""

    benchmark: str  #: the script's name
    threads: int  #: torch intra-op threads it ran with
    measurements: list[Measurement] = field(default_factory=list)

    def add(self, quantity: str, value: float, unit: str, goal: str = "", shapes: str = "", note: str = "") -> None:
        measured = Measurement(quantity, float(value), unit, goal, shapes, note)
        self.measurements.append(measured)
        verdict = "" if measured.meets is None else (" (meets " if measured.meets else " (misses ") + goal + ")"
        print(f"{quantity}: {value:,.3g} {unit}{verdict}" + (f" [{shapes}]" if shapes else ""))

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.benchmark}.json"
        path.write_text(json.dumps({
            "benchmark": self.benchmark, "threads": self.threads, "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu_name(),
            "measurements": [asdict(m) | {"meets": m.meets} for m in self.measurements]}, indent=2) + "\n")
        return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
