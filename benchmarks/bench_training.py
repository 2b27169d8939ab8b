"""Training-step benchmarks on one set of shapes, printed as ratios measured in this run.

    python benchmarks/bench_training.py [--threads 2]

1. NFM forward+backward, sparse (gather the k active rows) vs dense (products over all F features), at
   F=16384, k=64, K=64, d=576 (target >= 20x).
2. Joint (SAE + NFM) training step time / standard SAE step time at the default shapes (target <= 1.5).
3. Standard SAE training throughput in tokens/s, with the sparse encoder backward and with plain autograd.
4. Frozen-encoder kinds (sequential, standard_refit) per step, on cached codes and re-encoding every batch, as a
   speed-up over the standard SAE step (target >= 5x on cached codes).
5. The floor: the encoder product + top-k alone at the training shapes; every step as a ratio to it (target: the
   standard step at >= 0.7 of the floor's throughput), and the whole training loop (`featint.training.run_train`
   with config/config.yaml's training settings on a store of its train split's size) against its bare steps
   (target <= 1.2x), split into batches, validations, checkpoints and a fixed start-up.
Not a test: nothing gates on time.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from record import Recorder

from featint.config import Settings, load_settings
from featint.models import NFM, FeatureModel, SparseCode, TopKSAE, build_model, exact_topk
from featint.runtime import native_bf16, set_threads

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def interleaved_seconds(calls: dict[str, Callable[[], None]], rounds: int = 7, repeats: int = 2) -> dict[str, float]:
    """Seconds per call of each function, timed in interleaved rounds (each round calls every function
    ``repeats`` times; two warm-up calls first), the median over rounds: a drift in this shared machine's speed
    hits every function of a ratio alike instead of whichever ran during it."""
    for fn in calls.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            started = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - started) / repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def op_shares(step: Callable[[], None], groups: dict[str, tuple[str, ...]], repeats: int = 3) -> dict[str, float]:
    """Share of ``step``'s self CPU time (torch profiler) in the ops whose names contain any of each group's
    substrings: the measured reason a step is as slow as it is."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    return {name: sum(event.self_cpu_time_total for event in events if any(part in event.key for part in parts))
            / total for name, parts in groups.items()}


#: the gathers and scatters of [F, m] tables: embedding_bag forward and backward, and the zero-filled dense
#: gradient buffers its backward writes into
TABLE_OPS = ("embedding_bag", "aten::fill_")


def nfm_sparse_vs_dense(batch: int) -> tuple[float, float, float]:
    d, n_features, k, embed = 576, 16384, 64, 64
    torch.manual_seed(0)
    sae = TopKSAE(d, n_features, k)
    nfm = NFM(n_features, d, embed, dropout=0.0)
    with torch.no_grad():
        code, _ = sae.encode(torch.randn(batch, d))
    dense_f = code.dense(n_features)

    def sparse() -> None:
        nfm.zero_grad()
        out = nfm(code)
        (out.linear.square().mean() + out.interaction.square().mean()).backward()  # type: ignore[union-attr]

    def dense() -> None:
        nfm.zero_grad()
        out = nfm.forward_dense(dense_f)
        (out.linear.square().mean() + out.interaction.square().mean()).backward()  # type: ignore[union-attr]

    share = op_shares(sparse, {"tables": TABLE_OPS})["tables"]
    seconds = interleaved_seconds({"sparse": sparse, "dense": dense}, rounds=5, repeats=1)
    return seconds["sparse"], seconds["dense"], share


def training_step(model: FeatureModel, x: torch.Tensor | list[torch.Tensor], dense_reference: bool = False,
                  code: SparseCode | None = None, bf16: bool = False) -> Callable[[], None]:
    """One training step (forward, MSE, backward, fused Adam) per call, on ``x`` or, given a list, on its
    batches in turn; ``bf16``: the forward under bf16 autocast, as ``training.bf16_autocast`` runs it."""
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4, fused=True)  # as featint.training
    batches = itertools.cycle(x if isinstance(x, list) else [x])

    def step() -> None:
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rec = model.forward_dense(batch) if dense_reference else model(batch, code=code)
            loss = (rec.total.float() - batch).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


NFM_NOTE = ("sparse: the k active rows gathered with embedding_bag; a CSR backward (the encoder's) and one "
            "gather of V measured slower here")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    bench = Recorder("bench_training", threads)
    default = load_settings(DEFAULT_CONFIG)
    batch_size = default.training.batch_size
    print(f"{threads} threads, batch {batch_size}")

    for batch in sorted({batch_size, 4096}):  # the default batch and the paper's
        sparse_s, dense_s, share = nfm_sparse_vs_dense(batch)
        nfm_shapes = f"F=16384 k=64 K=64 d=576, batch {batch}"
        bench.add("NFM fwd+bwd sparse", sparse_s * 1e3, "ms", shapes=nfm_shapes)
        bench.add("NFM fwd+bwd, dense / sparse", dense_s / sparse_s, "x", ">= 20", nfm_shapes,
                  f"{NFM_NOTE}; table gathers/scatters and zero-filled [F, m] gradient buffers: {share:.0%} of the "
                  "sparse step (torch profiler)")

    d, n_features, k, embed = 576, 4608, 92, 52  # the embedded default shapes
    shapes = f"d={d} F={n_features} k={k} K={embed}, batch {batch_size}"
    x = torch.randn(batch_size, d)
    torch.manual_seed(0)
    standard = FeatureModel("standard", TopKSAE(d, n_features, k))
    torch.manual_seed(0)
    joint = FeatureModel("joint", TopKSAE(d, n_features, k), NFM(n_features, d, embed))
    settings = Settings.from_dict({"sae": {"n_features": n_features, "k": k}, "nfm": {"embed_dim": embed}})
    with torch.no_grad():
        cached = standard.sae.encode(x)[0]
    frozen = {}
    for kind in ("sequential", "standard_refit"):
        torch.manual_seed(0)
        frozen[kind] = build_model(kind, d, settings.sae, settings.nfm, standard=standard)
    torch.manual_seed(0)
    matched = build_model("param_matched", d, settings.sae, settings.nfm)
    W, b = standard.sae.W_enc.detach().clone(), standard.sae.b_enc.detach().clone()
    W16, b16, x16 = W.bfloat16(), b.bfloat16(), x.bfloat16()
    pre = torch.addmm(b, x, W.t())
    bf16, why = native_bf16("cpu")  # what training.bf16_autocast: auto chooses here
    dense_kernels = {name: copy.deepcopy(model) for name, model in (("standard", standard), ("joint", joint))}
    for model in dense_kernels.values():
        model.sae.kernels = "dense"  # training.kernels: dense: the encoder backward and decoder over all F
    seconds = interleaved_seconds({
        **{f"{name} dense kernels": training_step(model, x) for name, model in dense_kernels.items()},
        "standard": training_step(standard, x), "joint": training_step(joint, x),
        "autograd": training_step(standard, x, dense_reference=True), "param_matched": training_step(matched, x),
        "floor fp32": lambda: torch.addmm(b, x, W.t()).topk(k, dim=-1, sorted=False),
        "floor": lambda: exact_topk(torch.addmm(b16, x16, W16.t()), k),
        "topk torch": lambda: pre.topk(k, dim=-1, sorted=False), "topk exact": lambda: exact_topk(pre, k),
        "standard bf16": training_step(standard, x, bf16=True), "joint bf16": training_step(joint, x, bf16=True),
        **{f"{kind} on cache": training_step(model, x, code=cached) for kind, model in frozen.items()},
        **{f"{kind} encoding": training_step(model, x) for kind, model in frozen.items()}})
    fp32_standard_s = seconds["standard"]
    bench.add("top-k of the encoder: torch.topk / featint's exact blocked top-k", seconds["topk torch"] /
              seconds["topk exact"], "x", ">= 3", shapes, "featint.models.exact_topk: the top k among the k strided "
              "blocks with the largest maxima (exact; two smaller torch.topk calls and a gather remain)")
    for name in ("standard", "joint"):
        bench.add(f"{name} step, fp32 / bf16 autocast", seconds[name] / seconds[f"{name} bf16"], "x", shapes=shapes,
                  note=f"training.bf16_autocast: auto chooses {'bf16' if bf16 else 'fp32'} here ({why})")
    bench.add("standard step (fp32) throughput / fp32 floor (fp32 product + torch.topk)",
              seconds["floor fp32"] / fp32_standard_s, "x", shapes=shapes)
    # the default path from here on: bf16 autocast where the CPU has it, and the floor priced the same way
    standard_s = seconds["standard bf16"] if bf16 else seconds["standard"]
    joint_s = seconds["joint bf16"] if bf16 else seconds["joint"]
    floor_s = seconds["floor"] if bf16 else seconds["floor fp32"]
    bench.add("standard SAE step", standard_s * 1e3, "ms", shapes=shapes)
    bench.add("standard SAE training throughput", batch_size / standard_s, "tokens/s", shapes=shapes)
    bench.add("standard step, plain autograd / sparse backward", seconds["autograd"] / standard_s, "x",
              shapes=shapes)
    for name, sparse_s in (("standard", standard_s), ("joint", joint_s)):
        bench.add(f"{name} step, dense kernels / sparse kernels", seconds[f"{name} dense kernels"] / sparse_s, "x",
                  shapes=shapes, note="training.kernels; above 1: sparse is faster on this device "
                  "(featint.models.KERNELS_BY_DEVICE['cpu'] = 'sparse')")
    joint_share = op_shares(training_step(joint, x, bf16=bf16), {"tables": TABLE_OPS})["tables"]
    standard_share = op_shares(training_step(standard, x, bf16=bf16), {"tables": TABLE_OPS})["tables"]
    bench.add("joint step / standard step", joint_s / standard_s, "x", "<= 1.25", shapes,
              f"the NFM's linear term is a second [F, d] table gathered and scattered like the decoder: table ops "
              f"take {joint_share:.0%} of the joint step vs {standard_share:.0%} of the standard one (profiler)")
    for kind, model in frozen.items():
        shares = op_shares(training_step(model, x, code=cached), {"tables": TABLE_OPS, "adam": ("adam",)})
        bench.add(f"{kind} step on cached codes: speed-up over the standard step",
                  standard_s / seconds[f"{kind} on cache"], "x", ">= 5", shapes,
                  f"re-encoding every batch: {standard_s / seconds[f'{kind} encoding']:.1f}x; on the cache, table "
                  f"gathers/scatters take {shares['tables']:.0%} of its step and Adam {shares['adam']:.0%}")

    matched_s = seconds["param_matched"]
    floor_note = (f"floor: the encoder product ({'bf16' if bf16 else 'fp32'}) + featint's exact top-k alone "
                  "(forward), the least a step must do; the step on the default path (bf16 autocast: auto)")
    split = op_shares(training_step(standard, x, bf16=bf16), {"products": ("addmm", "aten::mm"),
                                                               "topk": ("topk",), "tables": TABLE_OPS,
                                                               "adam": ("adam",)})
    bench.add("standard step throughput / floor throughput", floor_s / standard_s, "x", ">= 0.7", shapes,
              f"{floor_note}; the step's time (profiler): the encoder product and its sparse (CSR) weight gradient "
              f"{split['products']:.0%}, top-k {split['topk']:.0%}, decoder table gathers/scatters "
              f"{split['tables']:.0%}, Adam {split['adam']:.0%}")
    bench.add("joint step / floor", joint_s / floor_s, "x", shapes=shapes)
    bench.add("param_matched step / floor", matched_s / floor_s, "x", shapes=shapes)
    loop = whole_loop(default, d, n_features, k)
    training = default.training
    bare = training.steps * loop.bare_step
    bench.add("bare standard step on the store's batches", loop.bare_step * 1e3, "ms", shapes=shapes,
              note="the loop's steps are compared with it (a step on random vectors: above)")
    for part, part_seconds in loop.parts.items():
        bench.add(f"training loop: {part} / bare steps", part_seconds / bare, "x", shapes=shapes)
    fixed = loop.one_step_run - loop.bare_step - loop.one_validation
    bench.add("training loop: fixed start-up and finish (open store, init, save weights, figure)", fixed, "s",
              shapes=shapes, note="a one-step run less its step and its validation")
    bench.add("training loop per step, fixed part excluded / bare step", (loop.seconds - fixed) / bare, "x",
              "<= 1.2", shapes, "the steady-state cost of a step inside run_train: batches, clipping, logging, "
              "validations and checkpoints included")
    shares = {part: part_seconds / bare for part, part_seconds in loop.parts.items()} | {"fixed start-up": fixed / bare}
    shares["the rest (clipping, logging, dead-latent counters)"] = loop.seconds / bare - 1 - sum(shares.values())
    bench.add("whole training loop / its bare steps", loop.seconds / bare, "x", "<= 1.2", shapes,
              "over the bare steps: " + ", ".join(f"{part} {share:+.3f}" for part, share in shares.items()) + "; "
              f"run_train (standard) on a real store with config/config.yaml's training settings: {training.steps} "
              f"steps of {training.batch_size}, validation every {training.validate_every} steps on "
              f"{training.validation_tokens:,} tokens, a checkpoint every {training.checkpoint_every}, a log row "
              f"every {training.log_every}; store reading included; AuxK off (no latent dies in the default run, "
              "so it never runs there)")
    print(f"wrote {bench.write()}")


class LoopTiming(NamedTuple):
    """What :func:`whole_loop` measured, in seconds."""

    seconds: float  #: the whole `run_train` at the default budget
    one_step_run: float  #: `run_train` of one step: start-up, one batch, one validation, finish
    one_validation: float  #: one validation on the validation tokens
    bare_step: float  #: one bare training step on the store's own batches
    parts: dict[str, float]  #: the loop's parts outside the step, each over the whole run (batches, ...)


def whole_loop(default: Settings, d: int, n_features: int, k: int) -> LoopTiming:
    """Seconds of `run_train` (standard) on a generated store of d-dim activations as large as the default's
    train split, with the default config's training settings (its steps, batch, validation and checkpoint
    frequencies, validation tokens): streaming, normalising, logging, validation, clipping, Adam and checkpoints
    around every step; the seconds of a one-step run (its fixed start-up and finish); and, measured alone on
    the same store right after, a bare step on the store's batches and the loop's parts outside the step: the
    batches (streaming + normalising), the validations and the checkpoints it made."""
    from featint.synthetic import write_synthetic_activations
    from featint.training import (
        Checkpoint,
        ShuffledBatches,
        TrainingData,
        TrainOutputs,
        evaluate_mse,
        load_selected,
        run_train,
    )

    training, train_tokens = default.training, default.extraction.max_tokens["train"]
    steps, batch = training.steps, training.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_dict({
            # AuxK off: no latent dies in the default run (its logs' dead_fraction stays 0), so AuxK never runs
            # there; on this synthetic store (1,024 true directions for 4,608 latents) most latents would die and
            # AuxK would dominate the loop
            "sae": {"n_features": n_features, "k": k, "auxk": {"enabled": False}},
            "training": {**default.raw["training"], "lr": 3e-3},
            "synthetic": {"d_model": d, "n_features": 1024, "active_mean": 20.0,  # the default's split sizes
                          "tokens": {"train": train_tokens, "validation": training.validation_tokens,
                                     "test": 1024}}})
        assert settings.synthetic is not None
        write_synthetic_activations(settings.synthetic, 1.0, "new", Path(tmp) / "setting")
        activations = Path(tmp) / "setting" / "activations"
        loops = []
        # a warm-up (first calls import the plotting stack), one step (start-up, one batch, one validation,
        # finish), then the whole budget
        for number, budget in enumerate((1 / steps, 1 / steps, 1.0)):
            started = time.perf_counter()
            run_train(settings, "standard", 0, activations, TrainOutputs.in_folder(Path(tmp) / f"model{number}"), 3e-3,
                      budget_factor=budget)
            loops.append(time.perf_counter() - started)

        parts: dict[str, float] = {}
        data = TrainingData.open(activations)
        started = time.perf_counter()
        batches = ShuffledBatches(data.train, data.normaliser, batch, training.shuffle_shards, 0, "cpu").iterate(0)
        first_batches = [next(batches).x for _ in range(16)]
        for _ in range(steps - len(first_batches)):
            next(batches)
        parts["batches"] = time.perf_counter() - started
        # the bare step on this store's batches (its codes gather other rows than random vectors' do): the
        # loop's steps are compared with these
        torch.manual_seed(0)
        model = FeatureModel("standard", TopKSAE(d, n_features, k))
        # under the loop's own autocast (training.bf16_autocast: auto is bf16 on a CPU that has it; a float32 bare
        # step made the loop look faster than its steps)
        bare_step = interleaved_seconds({"bare": training_step(model, first_batches,
                                                               bf16=settings.training.bf16("cpu"))},
                                        rounds=3, repeats=len(first_batches))["bare"]
        model = FeatureModel("standard", TopKSAE(d, n_features, k))
        validation = load_selected(data.validation, data.normaliser, training.validation_tokens)
        validations = steps // training.validate_every + (steps % training.validate_every != 0)
        started = time.perf_counter()
        for _ in range(validations):
            evaluate_mse(model, validation)
        parts["validation"] = time.perf_counter() - started
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        training_step(model, torch.randn(batch, d))()  # optimizer state exists, as in a checkpoint
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        checkpoint = Checkpoint(Path(tmp) / "c.pt", "bench")
        started = time.perf_counter()
        for _ in range((steps - 1) // training.checkpoint_every):
            checkpoint.save(0, model, optimizer, scheduler, torch.zeros(n_features, dtype=torch.long), [])
        parts["checkpoints"] = time.perf_counter() - started
        return LoopTiming(seconds=loops[2], one_step_run=loops[1], one_validation=parts["validation"] / validations,
                          bare_step=bare_step, parts=parts)


if __name__ == "__main__":
    main()
