"""Process-level settings every stage applies first: threads, device, seeds, logging."""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from featint.errors import ConfigError

#: Environment variable through which the workflow hands every job its share of the CPUs (see ``common.smk``).
CPU_SHARE_VARIABLE = "FEATINT_CPU_SHARE"


def cpu_share_from_environment() -> float:
    """The share of ``--threads`` a stage uses by default: ``$FEATINT_CPU_SHARE`` when set, else 1."""
    value = os.environ.get(CPU_SHARE_VARIABLE, "")
    try:
        share = float(value) if value else 1.0
    except ValueError:
        raise ValueError(
            f"{CPU_SHARE_VARIABLE}={value!r} is not a number; unset it or give a share in (0, 1].") from None
    if not 0 < share <= 1:
        raise ValueError(f"{CPU_SHARE_VARIABLE}={value!r} must lie in (0, 1].")
    return share


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


def gpu_available() -> bool:
    """Whether this machine has a usable CUDA GPU (what ``model.device: auto`` resolves to)."""
    return torch.cuda.is_available()


def check_device(choice: str) -> None:
    """Stop with one message when ``model.device: cuda`` is asked of a machine without a usable GPU (called at DAG
    start for local runs, and by every stage before it builds anything)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "model.device is 'cuda' but this machine has no usable CUDA GPU (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Set model.device: auto or cpu, "
            "install a CUDA build of torch, or send the jobs to GPU nodes (--profile profiles/slurm).")


def resolve_device(choice: str) -> torch.device:
    """CPU, or the CUDA device this job may use: with several GPUs visible (a multi-GPU node run with
    ``snakemake --resources gpu=G``), the first one no other featint job holds (:func:`claim_gpu`); under SLURM the
    job sees only the GPUs it was given, so that is device 0. On CUDA, deterministic kernels are asked for
    (:func:`deterministic_cuda`)."""
    check_device(choice)
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        deterministic_cuda()
        count = torch.cuda.device_count()
        if count <= 1:
            return torch.device("cuda")
        index = claim_gpu(count)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def deterministic_cuda() -> None:
    """Deterministic kernels wherever torch has them (``warn_only``: an op without one warns instead of
    stopping), and cuBLAS's fixed-workspace mode, which its determinism needs (read when cuBLAS starts, so this
    runs before the first GPU product)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


#: (GPU index, lock fd) this process holds; the lock is released when the process exits.
_GPU_CLAIM: tuple[int, int] | None = None


def gpu_lock_dir() -> Path:
    """Where GPU locks live: ``FEATINT_GPU_LOCK_DIR``, else a per-user folder in ``/tmp``, which every job on a
    node shares (``TMPDIR`` is per job under SLURM, so locks there would not see each other)."""
    return Path(os.environ.get("FEATINT_GPU_LOCK_DIR", f"/tmp/featint-gpu-locks-{os.getuid()}"))


def gpu_keys(n_devices: int) -> list[str]:
    """A name per visible GPU for its lock: its UUID, the same whichever index ``CUDA_VISIBLE_DEVICES`` gives it
    in each job (two jobs of a node that each see "GPU 0" hold different GPUs); the index where no UUID is
    known."""
    keys = []
    for index in range(n_devices):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None) if torch.cuda.is_available() else None
        keys.append(str(uuid) if uuid else f"index-{index}")
    return keys


def try_claim_slot(keys: list[str], lock_dir: Path) -> tuple[int, int] | None:
    """(index, open lock fd) of the first GPU of ``keys`` no other open lock holds, or None if all are held.
    ``flock`` locks vanish with their process, so a killed job frees its GPU."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index, key in enumerate(keys):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        fd = os.open(lock_dir / f"gpu-{safe}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return index, fd
    return None


def claim_gpu(n_devices: int, lock_dir: Path | None = None, poll_seconds: float = 5.0,
              keys: list[str] | None = None) -> int:
    """The index of a GPU for this process, held until it exits (locks named by :func:`gpu_keys` unless
    ``keys`` are given). Waits (logging once) while every GPU is held, which happens only when more GPU jobs run
    than ``--resources gpu=G`` allows for."""
    global _GPU_CLAIM
    if _GPU_CLAIM is not None:  # one GPU per process, however often the device is resolved
        return _GPU_CLAIM[0]
    lock_dir = lock_dir or gpu_lock_dir()
    keys = keys if keys is not None else gpu_keys(n_devices)
    waited = False
    while True:
        claimed = try_claim_slot(keys, lock_dir)
        if claimed is not None:
            _GPU_CLAIM = claimed
            return claimed[0]
        if not waited:
            logging.getLogger("featint").warning(
                "all %d GPUs are held by other featint jobs; waiting (run snakemake with --resources gpu=%d)",
                n_devices, n_devices)
            waited = True
        time.sleep(poll_seconds)


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 natively (so autocast speeds the encoder product up instead of
    emulating it), and why: a CUDA GPU that reports bf16 support, or a CPU whose flags (``/proc/cpuinfo``) list
    ``avx512_bf16`` or ``amx_bf16``. On this project's 2-core EPYC the bf16 product of the default step is
    3.6-4x faster than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        return ok, f"CUDA device {'supports' if ok else 'does not support'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 detection for device type {device.type!r}"
    try:
        flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
    except OSError:
        return False, "CPU flags unreadable (/proc/cpuinfo), bf16 assumed emulated"
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return (True, f"CPU flags list {', '.join(found)}") if found else (False, "CPU lacks avx512_bf16 and amx_bf16")


def resolve_bf16(choice: bool | str, device: torch.device | str) -> bool:
    """``training.bf16_autocast`` for a job on ``device``: true / false as given, ``auto`` by :func:`native_bf16`.
    Every job that must agree with a training step (the code cache, LR selection) resolves it the same way on
    its own device."""
    if isinstance(choice, bool):
        return choice
    if choice != "auto":
        raise ConfigError(f"training.bf16_autocast must be true, false or auto, not {choice!r}")
    return native_bf16(device)[0]


def step_autocast(device: torch.device | str, bf16: bool) -> torch.autocast:
    """The autocast a training step runs under (``training.bf16_autocast``); everything that must reproduce a
    step's codes (the code cache) enters the same one."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


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
