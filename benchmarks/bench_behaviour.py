"""Behavioural-evaluation cost against its floor, printed as a ratio measured in this run.

    python benchmarks/bench_behaviour.py [--threads 2] [--windows 32] [--positions 32]

Evaluates one joint model (the default shapes: F=4608, k=92, K=52; random init: cost does not depend on the
weights) with all its conditions (4 components x (1 + 3 epsilon draws) = C = 16) on the embedded model at the
default hook (block 15 of L = 30), and compares the time with (1 + C x (L - l) / L) full forward passes over the
same tokens: one clean pass plus, per condition, the blocks after the hook (target <= 1.2). Tokens are drawn at
random from the vocabulary (throughput does not depend on the text). Not a test: nothing gates on time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from record import Recorder

from featint.behaviour import EvaluationWindows, evaluate_conditions, model_conditions
from featint.config import Settings
from featint.evaluation import components_of
from featint.lm import EMBEDDED_KEY, HookPoint, load_bridge, read_n_layers
from featint.models import build_model
from featint.normaliser import Normaliser
from featint.runtime import set_threads
from featint.splice import ModelContinuation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--lm", default=f"resources/lm/{EMBEDDED_KEY}", help="prepared model directory")
    args = parser.parse_args()
    bench = Recorder("bench_behaviour", set_threads(args.threads))
    settings = Settings.from_dict({"behaviour": {"windows": args.windows, "positions": args.positions}})
    hook = HookPoint.from_settings(settings.hook)
    n_layers = read_n_layers(args.lm)
    bridge = load_bridge(args.lm)
    torch.manual_seed(0)
    tokens = torch.randint(100, bridge.cfg.d_vocab - 100, (args.windows, args.positions))
    tokens[:, 0] = int(bridge.tokenizer.bos_token_id)
    continuation = ModelContinuation(bridge, hook)
    with torch.no_grad():
        stored = continuation.residual(tokens)
    spliced = torch.ones_like(tokens, dtype=torch.bool)
    spliced[:, 0] = False
    windows = EvaluationWindows(np.arange(args.windows), np.arange(args.windows) // 4, tokens,
                                torch.cat([tokens[:, 1:], tokens[:, :1]], 1), spliced, stored)
    normaliser = Normaliser.fit([stored[:, 1:].reshape(-1, stored.shape[-1])], "zscore", hook.name)
    model = build_model("joint", stored.shape[-1], settings.sae, settings.nfm).eval()
    components = components_of(model)
    draws = settings.behaviour.epsilon_draws
    n_conditions = len(components) * (1 + draws)

    def evaluate(windows: EvaluationWindows) -> None:
        evaluate_conditions(continuation, windows, "the benchmark's own residuals", settings.behaviour,
                            lambda clean, positions, batch: model_conditions(model, normaliser, clean, positions,
                                                                             components, draws, (0, batch)),
                            n_conditions, "benchmark")

    with torch.no_grad():
        bridge(tokens)  # warm-up of both timed paths (first calls allocate and pick kernels)
        evaluate(EvaluationWindows(windows.window_ids[:2], windows.doc_ids[:2], tokens[:2], windows.targets[:2],
                                   spliced[:2], stored[:2]))
        started = time.perf_counter()
        for _ in range(3):
            bridge(tokens)
        full_forward = (time.perf_counter() - started) / 3
        started = time.perf_counter()
        evaluate(windows)
        evaluation = time.perf_counter() - started
    after = (n_layers - hook.stop_at_layer) / n_layers
    floor = (1 + n_conditions * after) * full_forward
    n = args.windows * args.positions
    print(f"{args.windows} windows x {args.positions} positions = {n} tokens, {n_conditions} conditions, "
          f"hook after {hook.stop_at_layer} of {n_layers} blocks, {args.threads} threads")
    print(f"full forward: {full_forward:.3f} s ({n / full_forward:,.0f} tokens/s)")
    print(f"whole evaluation: {evaluation:.2f} s; floor (1 + C (L - l) / L) forwards: {floor:.2f} s")
    shapes = (f"{args.windows} windows x {args.positions} positions, C = {n_conditions} conditions, hook after "
              f"{hook.stop_at_layer} of {n_layers} blocks")
    bench.add("LM full forward throughput", n / full_forward, "tokens/s", shapes=shapes)
    bench.add("one model's behaviour evaluation / floor", evaluation / floor, "x", "<= 1.2", shapes,
              "floor: one clean forward + C forwards of the blocks after the hook")
    print(f"wrote {bench.write()}")


if __name__ == "__main__":
    main()
