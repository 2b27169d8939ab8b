"""Memory and disk plan of a configuration, before anything runs (``python -m featint plan --config ...``).

Every figure is computed from the config and the model's shape (its prepared ``config.json`` when it exists,
else ``model.shape``): activation shards per split, the standard SAE's code cache, the SAE / NFM / Adam state of
each trained kind, a training job's peak on its device term by term (state, the second decoder gradient,
autocast's encoder copy, the step's pre-activations, the embedding backward's partial sums, the validation set
and chunk, the batch vectors) and its host memory (the batch group and the one prefetched), and the behaviour
stage's forward passes and peak (the LM, the stacked logits and their log-softmax, the clean distribution). The extract
stage calls :func:`check_disk` before writing a split, so a results disk that cannot hold the shards stops the
run with one message instead of a full disk half-way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featint import kinds
from featint.config import SPLITS, Settings
from featint.errors import ConfigError, FeatintError
from featint.layout import LMFolder
from featint.lm import read_n_layers

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
FLOAT32 = 4


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of the LM."""

    d_model: int  #: residual-stream width
    n_layers: int  #: blocks
    vocab_size: int  #: output vocabulary
    n_parameters: float  #: parameter count
    source: str  #: where the shape was read


def model_shape(settings: Settings, lm_dir: str | Path | None) -> ModelShape:
    """The prepared model's ``config.json`` when ``lm_dir`` holds one, else the config's ``model.shape``."""
    if lm_dir is not None and Path(LMFolder(lm_dir).config).is_file():
        cfg = json.loads(Path(LMFolder(lm_dir).config).read_text(encoding="utf-8"))
        d = int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg["d_model"])
        layers = read_n_layers(lm_dir)
        vocab = int(cfg["vocab_size"])
        intermediate = int(cfg.get("intermediate_size") or 4 * d)
        # embeddings + untied head + attention (4 d^2) and a gated MLP (3 d m) per block: a close estimate
        params = 2 * vocab * d + layers * (4 * d * d + 3 * d * intermediate)
        return ModelShape(d, layers, vocab, float(params), LMFolder(lm_dir).config)
    if settings.model.shape is None:
        raise ConfigError("the model is not prepared yet and the config has no model.shape; run the prepare_lm rule "
                          "first or add model.shape {d_model, n_layers, vocab_size, n_parameters} to the config.")
    s = settings.model.shape
    return ModelShape(int(s["d_model"]), int(s["n_layers"]), int(s["vocab_size"]), float(s["n_parameters"]),
                      "model.shape in the config")


def kind_parameter_counts(settings: Settings, d_model: int) -> dict[str, tuple[int, int]]:
    """(total, trained) parameters of every configured kind, from the models themselves built on the meta
    device (no memory, any size)."""
    import torch

    from featint.models import build_model

    names = kinds.order({kind for kind, _ in settings.model_instances()})
    with torch.device("meta"):
        standard = build_model("standard", d_model, settings.sae, settings.nfm)
        out = {}
        for name in names:
            model = build_model(name, d_model, settings.sae, settings.nfm, standard)
            out[name] = (model.parameter_counts()["total"], sum(p.numel() for p in model.trainable_parameters()))
    return out


def plan(settings: Settings, shape: ModelShape) -> pd.DataFrame:
    """One row per planned quantity: stage, item, bytes (or count), and what it assumes."""
    from featint.models import joint_parameter_count

    d, F, k = shape.d_model, settings.sae.n_features, settings.sae.k
    extraction, training = settings.extraction, settings.training
    shard_dtype = DTYPE_BYTES[extraction.dtype]
    rows: list[dict[str, object]] = []

    def add(stage: str, item: str, value: float, unit: str, note: str) -> None:
        rows.append({"stage": stage, "item": item, "value": float(value), "unit": unit, "note": note})

    for split in SPLITS:
        tokens = extraction.max_tokens[split]
        add("extract", f"shards {split}", tokens * d * shard_dtype, "bytes",
            f"{tokens:,} tokens x d {d} x {extraction.dtype}")
    add("extract", "LM weights in memory", shape.n_parameters * DTYPE_BYTES[settings.model.dtype], "bytes",
        f"{shape.n_parameters:.3g} parameters x {settings.model.dtype}")
    train_tokens = extraction.max_tokens["train"]
    cache = train_tokens * k * (4 + 4) if training.cache_codes else 0
    add("cache_codes", "code cache per standard seed", cache, "bytes",
        f"{train_tokens:,} tokens x k {k} x (int32 index + float32 value)" if training.cache_codes
        else "training.cache_codes is off: the frozen-encoder kinds re-encode every batch")
    joint = joint_parameter_count(d, settings.sae, settings.nfm)
    counts = kind_parameter_counts(settings, d)
    per_kind = {kind: total for kind, (total, _) in counts.items()}
    batch = training.batch_size
    for kind, (total, trained) in counts.items():
        # weights + gradients + Adam's two moments of what it trains, float32; the frozen rest once
        state = (4 * trained + (total - trained)) * FLOAT32
        add("train", f"{kind}: weights + grads + Adam", state, "bytes",
            f"{total:,} parameters, {trained:,} trained (x 4: weights, grads, Adam) x float32")
    # the peak of one training job on its device, term by term (the joint model: the largest trained state)
    # auto: bf16 on a GPU (they have it), float32 on a CPU plan (the conservative size)
    bf16 = training.bf16_autocast is True or (training.bf16_autocast == "auto" and settings.model.device != "cpu")
    act_bytes = 2 if bf16 else 4
    validation_tokens = training.validation_tokens
    terms = {
        "state": (4 * joint * FLOAT32, "weights, grads and Adam's two moments, float32"),
        "second W_dec gradient": (F * d * FLOAT32, "the decoder's and AuxK's W_dec gradients, both [F, d], summed"),
        "bf16 copy of W_enc": (F * d * 2 if bf16 else 0,
                               "autocast's copy of the encoder for its product" if bf16
                               else "no autocast"),
        "step pre-activations": (2 * batch * F * act_bytes,
                                 f"[batch {batch}, F] and top-k's workspace ({'bf16' if bf16 else 'fp32'})"),
        # CUDA's sorted embedding backward sums the batch x k gathered gradient rows in segments of at most 10
        # rows (NROWS_PER_THREAD), one float32 d-vector of partial sums per segment
        "embedding_bag backward": (-(-batch * k // 10) * d * FLOAT32,
                                   f"partial sums of the batch x k = {batch * k:,} gathered rows, 10 rows a segment"),
        "validation set": (validation_tokens * d * FLOAT32, f"{validation_tokens:,} tokens on the device"),
        "validation chunk": (4096 * F * FLOAT32, "pre-activations of a 4,096-token chunk, float32 (no autocast)"),
        "batch vectors": (16 * batch * d * FLOAT32, "x, x_hat, the error and their gradients"),
    }
    for term, (value, note) in terms.items():
        add("train", f"peak term: {term}", value, "bytes", note)
    add("train", "peak per job (joint, estimate)", sum(v for v, _ in terms.values()), "bytes",
        "the sum of the peak terms above")
    shard_rows = min(extraction.shard_rows, train_tokens)
    add("train", "host memory: batch groups", 2 * training.shuffle_shards * shard_rows * d * FLOAT32, "bytes",
        f"the group training reads and the one prefetched ({training.shuffle_shards} shards of {shard_rows:,} rows "
        "each, float32, pinned on a GPU)")
    behaviour = settings.behaviour
    positions = behaviour.positions or extraction.context_length
    instances = len(settings.model_instances())
    add("behaviour", "spliced continuations per model", behaviour.windows * (4 * (1 + behaviour.epsilon_draws)),
        "forward passes", f"{behaviour.windows} windows of {positions} positions x up to 4 components x "
        f"(1 + {behaviour.epsilon_draws} epsilon draws), each from the hook to the logits")
    add("behaviour", "logits of one window batch", behaviour.batch_tokens * shape.vocab_size * FLOAT32, "bytes",
        f"{behaviour.batch_tokens:,} tokens x vocab {shape.vocab_size:,} x float32")
    # the peak: the LM, the stacked call's logits and its float32 copy (log-softmax), the clean distribution (log p
    # and p of a window batch), and the blocks' activations of the call
    logits = behaviour.batch_tokens * shape.vocab_size * FLOAT32
    lm_bytes = shape.n_parameters * DTYPE_BYTES[settings.model.dtype]
    per_token = (12 * shape.d_model + 2 * positions * 16) * FLOAT32  # residual, MLP and attention scores
    add("behaviour", "peak per job (estimate)", lm_bytes + 2 * logits + 2 * logits + behaviour.batch_tokens * per_token,
        "bytes", "LM weights + stacked logits and their float32 log-softmax + the clean log p and p + the "
        "blocks' activations of one call")
    add("behaviour", "models spliced", instances, "models", "every trained (kind, seed)")
    disk = sum(r["value"] for r in rows if r["item"].startswith("shards"))  # type: ignore[union-attr]
    disk += len(training.seeds) * cache
    # every instance keeps its weights and its step-0 weights; a running job also holds a checkpoint (weights
    # and Adam's two moments)
    disk += instances * (sum(per_kind.values()) / len(per_kind)) * FLOAT32 * 2 + max(per_kind.values()) * FLOAT32 * 3
    add("total", "results disk (shards + code caches + models)", disk, "bytes",
        f"{instances} trained models (weights + init) and one checkpoint in flight")
    return pd.DataFrame(rows)


def human(value: float, unit: str) -> str:
    if unit != "bytes":
        return f"{value:,.0f} {unit}"
    for scale, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:.1f} {name}"
    return f"{value:.0f} B"


class DiskSpaceError(FeatintError):
    """The results disk cannot hold what a stage is about to write."""


def check_disk(needed_bytes: float, directory: str | Path, what: str) -> None:
    """Stop with one message when ``directory``'s filesystem has less than ``needed_bytes`` free."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"{what} needs {human(needed_bytes, 'bytes')} but {probe} has {human(free, 'bytes')} free; free space "
            f"there, lower extraction.max_tokens or use extraction.dtype float16 (see `python -m featint plan`).")
