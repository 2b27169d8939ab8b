"""The device check: what a GPU lease must show, in one run of about ten minutes, as one table.

    python benchmarks/gpu_check.py --device cuda --dag --out benchmarks/results/gpu_check    (on a GPU)
    python benchmarks/gpu_check.py --device cpu --small                                      (its CPU part)

``benchmarks/gpu_check.sh`` wraps it for a lent GPU machine (carried wheels, PYTHONPATH). Checks, each a row of
``summary.{parquet,md}`` with a status (pass / fail / info / skipped):

1. ``versions``: torch, its CUDA, transformers, transformer-lens, snakemake, the device's name and memory.
2. ``step``: one SAE + NFM (joint) training step at the paper's shapes (d 3200, F 50,000, k 1,024, NFM K 300,
   batch 1,024; ``--small``: d 64, F 512, k 16) under bf16 autocast, with the sparse and the dense kernels
   (``training.kernels``): their gradients equal within the autocast test's tolerance, both timed (CUDA
   synchronised), the faster one named (what ``featint.models.KERNELS_BY_DEVICE`` should say for the device).
3. ``loop``: the real training loop (``featint.training.train``) on random activations at those shapes: its
   peak device memory against ``featint.plan``'s estimate, two identical runs compared bit for bit, and a run
   killed at its first checkpoint and resumed compared with the uninterrupted one.
4. ``continuation``: a small random Llama (its tokenizer trained here) in float16 on the device: the direct
   continuation after the hook against the bridge's, within ``featint.splice.CONTINUATION_TOLERANCE``.
5. ``dag`` (``--dag``): the tiny config's DAG on that LM and a text-file corpus, every job on the device
   (``--keep-going``), each failed job listed with the end of its log.

Exit status 1 when a check fails. Not a test and never part of CI; the tests run its CPU part
(``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]

#: (d, F, k, NFM K, batch): the paper's shapes, and small ones for the CPU.
PAPER_SHAPES = (3200, 50_000, 1024, 300, 1024)
SMALL_SHAPES = (64, 512, 16, 8, 256)
#: bf16 autocast rounding between two computations of one gradient (the kernels test's tolerance)
AUTOCAST_TOLERANCE = 2e-2


def row(check: str, status: str, value: float | None = None, unit: str = "", detail: str = "") -> Row:
    return {"check": check, "status": status, "value": float("nan") if value is None else float(value),
            "unit": unit, "detail": detail}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------
# 1. versions


def versions(device: torch.device) -> list[Row]:
    rows = [row("versions: torch", "info", detail=f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")]
    for package in ("transformers", "transformer-lens", "snakemake", "featint"):
        try:
            found = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found = "not installed"
        rows.append(row(f"versions: {package}", "info", detail=found))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rows.append(row("versions: device", "info", props.total_memory / 2**30, "GiB",
                        f"{torch.cuda.get_device_name(device)}, compute {props.major}.{props.minor}"))
    else:
        rows.append(row("versions: device", "info", detail=f"CPU, {torch.get_num_threads()} threads"))
    return rows


# ---------------------------------------------------------------------------------------------------------
# 2. one step, sparse against dense kernels


def settings_for(shapes: tuple[int, int, int, int, int], steps: int, checkpoint_every: int,
                 kernels: str = "auto", dropout: float = 0.15) -> Any:
    from featint.config import Settings

    _, n_features, k, embed, batch = shapes
    return Settings.from_dict({
        "sae": {"n_features": n_features, "k": k, "auxk": {"k_aux": min(2 * k, n_features // 2),
                                                           "dead_after_tokens": batch * max(1, steps // 2)}},
        "nfm": {"embed_dim": embed, "truncated_k": max(1, k // 4), "dropout": dropout},
        "training": {"tokens": steps * batch, "batch_size": batch, "bf16_autocast": True, "kernels": kernels,
                     "checkpoint_every": checkpoint_every, "validate_every": checkpoint_every,
                     "log_every": checkpoint_every, "validation_tokens": min(4 * batch, 8192), "shuffle_shards": 1,
                     "lr": 1e-4}})


def step_check(device: torch.device, shapes: tuple[int, int, int, int, int], repeats: int) -> list[Row]:
    from featint.models import build_model

    d, n_features, k, embed, batch = shapes
    settings = settings_for(shapes, 8, 4, dropout=0.0)  # no dropout: both kernels see the same network
    torch.manual_seed(0)
    model = build_model("joint", d, settings.sae, settings.nfm).to(device)
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device)
    dead = torch.zeros(n_features, dtype=torch.bool, device=device)
    dead[::7] = True

    def step(kernels: str) -> dict[str, torch.Tensor]:
        model.sae.kernels = kernels
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            rec = model(x, aux_mask=dead, k_aux=settings.sae.auxk.k_aux)
            loss = ((rec.total.float() - x) ** 2).mean() + rec.aux_code.values.float().pow(2).mean()  # type: ignore[union-attr]
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    sparse, dense = step("sparse"), step("dense")
    worst = max(float((sparse[n].float() - dense[n].float()).norm() / sparse[n].float().norm().clamp_min(1e-12))
                for n in sparse)
    equal = sparse.keys() == dense.keys() and worst <= AUTOCAST_TOLERANCE
    shape_text = f"d {d}, F {n_features:,}, k {k}, K {embed}, batch {batch}, bf16 autocast"
    rows = [row("step: sparse vs dense gradients", "pass" if equal else "fail", worst, "relative",
                f"largest relative difference over the parameters (tolerance {AUTOCAST_TOLERANCE}); {shape_text}")]
    seconds = {}
    for kernels in ("sparse", "dense"):
        for _ in range(2):
            step(kernels)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            step(kernels)
        synchronize(device)
        seconds[kernels] = (time.perf_counter() - started) / repeats
        rows.append(row(f"step: {kernels} kernels", "info", seconds[kernels] * 1e3, "ms/step",
                        f"forward + backward, mean of {repeats}; {shape_text}"))
    faster = min(seconds, key=seconds.get)  # type: ignore[arg-type]
    rows.append(row("step: dense / sparse time", "info", seconds["dense"] / seconds["sparse"], "x",
                    f"faster on {device.type}: {faster} (featint.models.KERNELS_BY_DEVICE['{device.type}'])"))
    return rows


# ---------------------------------------------------------------------------------------------------------
# 3. the loop: memory against the plan, determinism, resume


class Killed(Exception):
    pass


def loop_check(device: torch.device, shapes: tuple[int, int, int, int, int], steps: int) -> list[Row]:
    from featint.activations import ActivationStore, write_store_from_tensor
    from featint.models import build_model
    from featint.normaliser import Normaliser
    from featint.plan import ModelShape, plan
    from featint.training import ShuffledBatches, train

    d, batch = shapes[0], shapes[-1]
    checkpoint_every = max(1, steps // 2)
    settings = settings_for(shapes, steps, checkpoint_every)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = torch.randn((steps + 1) * batch, d, generator=torch.Generator().manual_seed(2))
        write_store_from_tensor(root / "train", data, "train", "gpu-check", shard_rows=steps * batch)
        store = ActivationStore(root / "train")
        normaliser = Normaliser.fit([data], "zscore", "gpu-check")
        validation = normaliser.apply(data[: settings.training.validation_tokens]).to(device)

        def run(name: str, kill: bool = False) -> dict[str, torch.Tensor]:
            torch.manual_seed(3)
            model = build_model("joint", d, settings.sae, settings.nfm).to(device)
            batches = ShuffledBatches(store, normaliser, batch, 1, seed=3, device=device)

            def stop(step: int) -> None:
                if kill:
                    raise Killed

            try:
                train(model, batches, validation, settings.training, settings.sae.auxk, 1e-4, root / f"{name}.pt",
                      name=name, on_checkpoint=stop)
            except Killed:
                return {}
            return {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        first = run("first")
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            shape = ModelShape(d, 1, 1, 0.0, "gpu_check")
            planned = float(plan(settings, shape).set_index("item").loc["peak per job (joint, estimate)", "value"])
            rows.append(row("loop: peak memory / plan", "pass" if peak <= 1.25 * planned else "fail", peak / planned,
                            "x", f"peak {peak / 2**30:.2f} GiB, plan {planned / 2**30:.2f} GiB "
                            "(featint.plan's training peak; fails above 1.25x)"))
        second = run("second")
        differing = [n for n in first if not torch.equal(first[n], second[n])]
        rows.append(row("loop: two identical runs", "pass" if not differing else "fail", len(differing), "tensors",
                        "bit-identical weights" if not differing else f"differ: {', '.join(differing)}"))
        run("resumed", kill=True)
        resumed = run("resumed")
        differing = [n for n in first if not torch.equal(first[n], resumed[n])]
        rows.append(row("loop: killed and resumed", "pass" if not differing else "fail", len(differing), "tensors",
                        f"killed at step {checkpoint_every} of {steps}, resumed: "
                        + ("bit-identical to the uninterrupted run" if not differing else f"differ: {differing}")))
    return rows


# ---------------------------------------------------------------------------------------------------------
# 4. a small LM: the float16 continuation


def corpus_texts() -> list[str]:
    """Text for the small LM's tokenizer and the DAG's corpus: this repository's stimuli and documentation."""
    texts = []
    documents = [ROOT / "README.md", ROOT / "config" / "README.md"]
    for path in sorted((ROOT / "config" / "stimuli").glob("*.tsv")) + documents:
        texts.append(path.read_text(encoding="utf-8"))
    words = pd.read_csv(ROOT / "config" / "stimuli" / "word_sets.tsv", sep="\t")["word"].tolist()
    texts.append(" ".join(f" {word}" for word in words for _ in range(50)))  # each stimulus word one token
    return texts


def tiny_lm(directory: Path, layers: int = 4) -> Path:
    """A random-init Llama (d 64, ``layers`` blocks) with a byte-level BPE tokenizer trained on
    :func:`corpus_texts`, saved as a Hugging Face directory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="<s>", unk_token="<unk>",
                                   pad_token="<s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def continuation_check(device: torch.device) -> list[Row]:
    from featint.lm import HookPoint, load_bridge
    from featint.splice import ModelContinuation, continuation_tolerance

    with tempfile.TemporaryDirectory() as tmp:
        bridge = load_bridge(tiny_lm(Path(tmp) / "lm"), "float16", device)
        hook = HookPoint(2, "resid_pre")
        tokens = torch.arange(1, 33, device=device)[None].repeat(2, 1)
        continuation = ModelContinuation(bridge, hook, check_tokens=tokens)
        with torch.no_grad():
            residual = continuation.residual(tokens)
            expected = bridge(residual, start_at_layer=hook.stop_at_layer)
            difference = float((expected - continuation._direct_logits(residual)).abs().max()
                               / expected.abs().max().clamp_min(1.0))
    tolerance = continuation_tolerance(torch.float16)
    return [row("continuation: float16 direct vs bridge", "pass" if continuation.direct else "fail", difference,
                "relative", f"largest |difference| / max |logit| (tolerance {tolerance}); a fail means the "
                "behaviour stage reruns every block")]


# ---------------------------------------------------------------------------------------------------------
# 5. the tiny DAG on the device

DAG_CONFIG = """
model: {{source: local, path: {lm}}}
corpus: {{source: text_files, path: "{corpus}/*.txt", min_chars: 200}}
hook: {{layer: 2, site: resid_pre}}
interventions: {{max_length_difference: 100.0}}
"""


def failed_jobs(workdir: Path, stderr: str) -> list[str]:
    """Each failed job: its log and where the log stopped."""
    out = []
    for log in sorted(set(re.findall(r"Error in rule \w+:\n(?:.*\n)*?\s+log: (\S+\.log)", stderr))):
        lines = (workdir / log).read_text(errors="replace").splitlines() if (workdir / log).is_file() else []
        where = [line.strip() for line in lines if line.strip().startswith('File "') and "featint" in line]
        out.append(f"{log}: {where[-1] if where else ''} :: {lines[-1] if lines else '(no log)'}")
    return out


def dag_check(cores: int, jobs_per_gpu: int, timeout: int) -> list[Row]:
    try:
        importlib.metadata.version("snakemake")
    except importlib.metadata.PackageNotFoundError:
        return [row("dag: tiny config on the device", "skipped", detail="snakemake is not installed")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
            source = ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
        corpus = workdir / "corpus"
        corpus.mkdir()
        for number, text in enumerate(corpus_texts()):
            for part, start in enumerate(range(0, len(text), 6000)):
                (corpus / f"doc-{number:02d}-{part:03d}.txt").write_text(text[start : start + 6000], encoding="utf-8")
        lm = tiny_lm(workdir / "lm")
        (workdir / "config" / "gpu_check.yaml").write_text(DAG_CONFIG.format(lm=lm, corpus=corpus))
        started = time.perf_counter()
        try:
            result = subprocess.run(
                [sys.executable, "-m", "snakemake", "--cores", str(cores), "--resources", f"gpu={jobs_per_gpu}",
                 "--keep-going", "--configfile", "config/tiny.yaml", "config/gpu_check.yaml"],
                cwd=workdir, capture_output=True, text=True, timeout=timeout, check=False,
                env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
        except subprocess.TimeoutExpired:
            return [row("dag: tiny config on the device", "fail", time.perf_counter() - started, "s",
                        f"still running after {timeout} s")]
        seconds = time.perf_counter() - started
        done = len(re.findall(r"^Finished job", result.stderr, re.MULTILINE))
        if result.returncode == 0:
            return [row("dag: tiny config on the device", "pass", seconds, "s", f"{done} jobs, none failed")]
        failed = failed_jobs(workdir, result.stderr)
        return [row("dag: tiny config on the device", "fail", seconds, "s",
                    f"{done} jobs finished, {len(failed)} failed")] + [
            row("dag: failed job", "fail", detail=line[:600]) for line in failed] + (
            [] if failed else [row("dag: snakemake", "fail", detail=result.stderr[-1500:])])


# ---------------------------------------------------------------------------------------------------------


def guarded(name: str, check: Callable[[], list[Row]]) -> list[Row]:
    """A check's rows, or one failing row with the error (one check's crash does not hide the others)."""
    started = time.perf_counter()
    try:
        rows = check()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row of the table
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        where = [line for line in traceback.format_tb(exc.__traceback__) if "featint" in line][-1:]
        rows = [row(name, "fail", detail=(detail + (" at " + where[0].strip().splitlines()[0] if where else ""))[:600])]
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small shapes (the CPU part the tests run)")
    parser.add_argument("--dag", action="store_true", help="also run the tiny DAG on the device")
    parser.add_argument("--steps", type=int, default=16, help="training steps of each loop run")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per kernel")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--jobs-per-gpu", type=int, default=4, help="DAG jobs sharing the GPU at once")
    parser.add_argument("--dag-timeout", type=int, default=330)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = SMALL_SHAPES if args.small else PAPER_SHAPES
    rows = guarded("versions", lambda: versions(device))
    rows += guarded("step", lambda: step_check(device, shapes, args.repeats))
    rows += guarded("loop", lambda: loop_check(device, shapes, args.steps))
    rows += guarded("continuation", lambda: continuation_check(device))
    if args.dag:
        rows += guarded("dag", lambda: dag_check(args.cores, args.jobs_per_gpu, args.dag_timeout))
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out / "summary.parquet", index=False)
    text = frame.to_markdown(index=False, floatfmt=".4g")
    (args.out / "summary.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    print(text)
    return int((frame["status"] == "fail").any())


if __name__ == "__main__":
    sys.exit(main())
