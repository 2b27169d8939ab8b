"""Run the GPU smoke configuration on a CUDA machine and tabulate what it measured.

    python benchmarks/gpu_smoke.py [--cores 16] [--gpus 1] [--skip-run]

Runs ``snakemake --configfile config/gpu_smoke.yaml`` (one job per GPU: ``--resources gpu=<gpus>``), then reads
the per-rule ``benchmark:`` files, the run's logs and its outputs into one table: extraction and training
tokens/s, behaviour seconds per model, the peak GPU memory of every job (logged by each stage on CUDA). Writes
``benchmarks/results/gpu_smoke/summary.{parquet,md}``. Needs a GPU; not a test, never part of CI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PEAK = re.compile(r"peak GPU memory (\d+) MiB on (.+)$")


def seconds(path: Path) -> float:
    return float(pd.read_csv(path, sep="\t")["s"].iloc[0])


def peak_memory(log: Path) -> tuple[float, str]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        match = PEAK.search(line)
        if match:
            return float(match.group(1)), match.group(2).strip()
    return float("nan"), ""


def table(root: Path, run: str) -> pd.DataFrame:
    """One row per extraction, training and behaviour job of ``run`` under ``root``."""
    bench, logs, results = root / "benchmarks" / "results" / run, root / "logs" / run, root / "results" / run
    rows = []
    summary = pd.read_parquet(results / "activations" / "summary.parquet").set_index("split")
    for split in summary.index:
        wall = seconds(bench / f"extract_{split}.tsv")
        tokens = float(summary.loc[split, "tokens_stored"])
        mib, gpu = peak_memory(logs / f"extract_{split}.log")
        rows.append({"job": f"extract {split}", "seconds": wall, "tokens_per_s": tokens / wall, "peak_gpu_mib": mib,
                     "gpu": gpu})
    for path in sorted(bench.glob("train_*_seed~*.tsv")):
        group, rest = path.stem.removeprefix("train_").split("_", 1)
        kind, seed = rest.rsplit("_seed~", 1)
        log = pd.read_parquet(results / group / kind / f"seed~{seed}" / "train_log.parquet")
        wall = seconds(path)
        mib, gpu = peak_memory(logs / f"{path.stem}.log")
        rows.append({"job": f"train {group} {kind} seed {seed}", "seconds": wall,
                     "tokens_per_s": float(log["tokens"].max()) / wall, "peak_gpu_mib": mib, "gpu": gpu})
    for path in sorted(bench.glob("behaviour_*.tsv")):
        mib, gpu = peak_memory(logs / f"{path.stem}.log")
        rows.append({"job": path.stem.replace("_", " ", 1), "seconds": seconds(path), "tokens_per_s": float("nan"),
                     "peak_gpu_mib": mib, "gpu": gpu})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--skip-run", action="store_true", help="only tabulate an existing run")
    parser.add_argument("--run", default="gpu_smoke", help="run to tabulate (with --skip-run: any run)")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root holding the run")
    args = parser.parse_args()
    if not args.skip_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_smoke needs a CUDA GPU (config/gpu_smoke.yaml sets model.device: cuda).")
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--resources",
                        f"gpu={args.gpus}", "--configfile", "config/gpu_smoke.yaml"], cwd=args.root, check=True)
    frame = table(args.root, args.run)
    out = args.root / "benchmarks" / "results" / args.run
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "summary.parquet", index=False)
    text = frame.to_markdown(index=False, floatfmt=".4g")
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
