"""Process-level settings every stage applies first: threads, device, seeds, logging."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def set_threads(requested: int) -> int:
    """Use ``requested`` intra-op threads, capped at the CPUs this process may run on.

    Snakemake passes a rule's ``threads`` (already capped at ``--cores``); ``--cores 8`` on a 2-core box
    would oversubscribe without the cap. Returns the number of threads set.
    """
    threads = max(1, min(int(requested), available_cpus()))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Offline by construction: never let a library reach for a hub during a stage unless asked to.
    for noisy in ("transformers", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
