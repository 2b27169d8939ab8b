"""Behavioural-evaluation cost against its floor, printed as a ratio measured in this run.

    python benchmarks/bench_behaviour.py [--threads 2] [--windows 32] [--positions 32]

Evaluates one joint model (the default shapes: F=4608, k=92, K=52; random init: cost does not depend on the
weights) with all its conditions (4 components x (1 + 3 epsilon draws) = C = 16) on the embedded model at the
default hook (block 15 of L = 30), and compares the time with two floors over the same tokens (target <= 1.2):

* the LM's own work, timed: the clean pass (to the hook, then on to the logits) plus the C continuations
  (blocks after the hook, final norm, unembedding) stacked as the evaluation stacks them;
* the issue's (1 + C x (L - l) / L) full forwards, which counts the blocks but prices the unembedding (a
  [d, vocab] product, a fifth of this model's multiply-adds) at (L - l) / L of its cost: its ratio is
  reported beside the first, with the multiply-add count that explains the difference.

Tokens are drawn at random from the vocabulary (throughput does not depend on the text). Not a test: nothing
gates on time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from record import Recorder

from featint.behaviour import EvaluationWindows, conditions_per_call, evaluate_conditions, model_conditions
from featint.config import Settings
from featint.evaluation import components_of
from featint.lm import EMBEDDED_KEY, HookPoint, load_bridge, read_n_layers
from featint.models import build_model
from featint.normaliser import Normaliser
from featint.runtime import set_threads
from featint.splice import ModelContinuation


def lm_work(continuation: ModelContinuation, windows: EvaluationWindows, batch_tokens: int,
            n_conditions: int) -> None:
    """What the LM itself must compute for one model's evaluation: per batch of windows, the clean pass (to
    the hook and on to the logits) and ``n_conditions`` continuations from the hook, grouped as
    :func:`evaluate_conditions` groups them."""
    for window_slice in windows.batches(batch_tokens):
        clean = continuation.residual(windows.tokens[window_slice])
        continuation.logits(clean)
        per_call = conditions_per_call(batch_tokens, clean.shape[0], clean.shape[1])
        for start in range(0, n_conditions, per_call):
            continuation.logits(torch.cat([clean] * min(per_call, n_conditions - start)))


def multiply_adds(cfg: object) -> tuple[int, int]:
    """Multiply-adds per token of one decoder block (attention projections with grouped K/V, gated MLP) and of
    the unembedding, from the bridge's config."""
    d, d_mlp, vocab, heads = cfg.d_model, cfg.d_mlp, cfg.d_vocab, cfg.n_heads  # type: ignore[attr-defined]
    kv = d * (getattr(cfg, "n_key_value_heads", None) or heads) // heads
    mlp_matrices = 3 if getattr(cfg, "gated_mlp", False) else 2
    return 2 * d * d + 2 * d * kv + mlp_matrices * d * d_mlp, d * vocab


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
        lm_work(continuation, windows, settings.behaviour.batch_tokens, n_conditions)
        lm_floor = time.perf_counter() - started
        started = time.perf_counter()
        evaluate(windows)
        evaluation = time.perf_counter() - started
    after = (n_layers - hook.stop_at_layer) / n_layers
    formula_floor = (1 + n_conditions * after) * full_forward
    block, head = multiply_adds(bridge.cfg)
    continued = ((n_layers - hook.stop_at_layer) * block + head) / (n_layers * block + head)
    n = args.windows * args.positions
    print(f"{args.windows} windows x {args.positions} positions = {n} tokens, {n_conditions} conditions, "
          f"hook after {hook.stop_at_layer} of {n_layers} blocks, {args.threads} threads")
    print(f"full forward: {full_forward:.3f} s ({n / full_forward:,.0f} tokens/s)")
    print(f"whole evaluation: {evaluation:.2f} s; the LM's own work: {lm_floor:.2f} s; "
          f"(1 + C (L - l) / L) forwards: {formula_floor:.2f} s")
    shapes = (f"{args.windows} windows x {args.positions} positions, C = {n_conditions} conditions, hook after "
              f"{hook.stop_at_layer} of {n_layers} blocks")
    bench.add("LM full forward throughput", n / full_forward, "tokens/s", shapes=shapes)
    bench.add("one model's behaviour evaluation / the LM's own work", evaluation / lm_floor, "x", "<= 1.2", shapes,
              "floor timed in this run: the clean pass + the C continuations, stacked as the evaluation stacks "
              "them; the rest is the splices, the reconstructions and the full-vocabulary KL / CE")
    bench.add("one model's behaviour evaluation / (1 + C (L - l) / L) forwards", evaluation / formula_floor, "x",
              "<= 1.2", shapes,
              f"the formula prices a continuation at {after:.2f} of a forward; by multiply-adds it is "
              f"{continued:.2f} (the [d, vocab] unembedding is {head / (n_layers * block + head):.0%} of a forward "
              "and runs in full for every condition), so this floor is "
              f"{(1 + n_conditions * continued) / (1 + n_conditions * after):.2f}x "
              "too low")
    print(f"wrote {bench.write()}")


if __name__ == "__main__":
    main()
