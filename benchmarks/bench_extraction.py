"""Extraction throughput vs the bare model forward up to the hook, on the same batch shape, in one run.

    python benchmarks/bench_extraction.py [--config config/config.yaml] [--windows 192] [--threads 2]

Prints tokens/s of (a) the bare forward `bridge(tokens, stop_at_layer=hook)` over the same windows and
(b) the whole extraction (tokenising, forward, norms, shard writing with sha256, token table), and their
ratio (target >= 0.9), each the median of alternating rounds. The model is loaded once, outside both
timings. Not a test: nothing gates on time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from featint.activations import StoreMeta, extract_split, plan_windows
from featint.config import Settings, load_settings
from featint.corpus import build_documents
from featint.lm import HookPoint, load_bridge, model_dir, needs_preparation, prepare_model
from featint.runtime import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--windows", type=int, default=192, help="windows per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both timings (median)")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    settings = load_settings(path=args.config)
    ex = settings.extraction
    lm = model_dir(settings.model)
    if needs_preparation(settings.model) and not lm.exists():
        prepare_model(settings.model, lm)
    bridge = load_bridge(lm, settings.model.dtype)
    hook = HookPoint.from_settings(settings.hook)

    documents = build_documents(settings.corpus, settings.split)
    documents["split"] = "train"
    budget = args.windows * ex.context_length
    windows, _ = plan_windows(documents, bridge, ex.context_length, budget)
    tokens = torch.tensor([w.token_ids for w in windows], dtype=torch.long)
    n_tokens = tokens.numel()

    overrides = dict(settings.raw)
    overrides["extraction"] = dict(settings.raw["extraction"], max_tokens={"train": budget, "validation": None,
                                                                          "test": None})
    run_settings = Settings.from_dict(overrides)

    @torch.no_grad()
    def bare_forward() -> None:
        for start in range(0, len(tokens), ex.batch_size):
            bridge(tokens[start : start + ex.batch_size], stop_at_layer=hook.stop_at_layer)

    def extraction() -> StoreMeta:
        with tempfile.TemporaryDirectory() as tmp:
            docs_path = Path(tmp) / "documents.parquet"
            documents.to_parquet(docs_path)
            return extract_split(split="train", documents_path=docs_path, model_directory=lm,
                                 out_dir=Path(tmp) / "train", model=run_settings.model, hook=run_settings.hook,
                                 extraction=run_settings.extraction, bridge=bridge)

    with torch.no_grad():
        bridge(tokens[: ex.batch_size], stop_at_layer=hook.stop_at_layer)  # warm-up
    # alternating rounds, the median of each: a drift in the shared machine's speed hits both alike
    bare_times, full_times = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        bare_forward()
        bare_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        meta = extraction()
        full_times.append(time.perf_counter() - started)
    bare, full = statistics.median(bare_times), statistics.median(full_times)
    assert meta.n_rows == n_tokens, (meta.n_rows, n_tokens)

    bare_tps, full_tps = n_tokens / bare, n_tokens / full
    print(f"model {lm.name}, hook {hook.name}, {len(windows)} windows x {ex.context_length} tokens, "
          f"batch {ex.batch_size}, {threads} threads")
    print(f"bare forward to hook : {bare_tps:8.0f} tokens/s ({bare:.1f} s)")
    print(f"extraction (complete): {full_tps:8.0f} tokens/s ({full:.1f} s)")
    from record import Recorder

    bench = Recorder("bench_extraction", threads)
    shapes = f"{lm.name}, {hook.name}, {len(windows)} windows x {ex.context_length} tokens, batch {ex.batch_size}"
    bench.add("extraction throughput", full_tps, "tokens/s", shapes=shapes)
    bench.add("extraction / bare forward to the hook", full_tps / bare_tps, "x", ">= 0.9", shapes,
              "tokenising, forward, norms, shards with sha256, token table")
    print(f"wrote {bench.write()}")


if __name__ == "__main__":
    main()
