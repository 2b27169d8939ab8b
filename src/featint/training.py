"""The one training loop (every model kind, and later the secondary SAE), checkpoints and exact resume.

Data: :class:`ShuffledBatches` streams the train split's selected tokens from disk, a few shards at a time,
normalised by the saved normaliser, in an order that depends only on (seed, epoch) — so a resumed run
regenerates the same batches from the step index alone.

Loop (:func:`train`): Adam with fp32 master weights, LR decaying linearly to ``lr_final_factor`` over
``lr_decay_fraction`` of the *actual* number of steps (the author's schedule decayed over a wrong count),
gradient clipping, AuxK for dead latents, NaN/Inf detection, validation on held-out documents, and a
checkpoint every N steps holding model, optimiser, schedule, step, dead-latent counters, log and RNG states.
A killed run resumes from its last checkpoint and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from featint import kinds
from featint.activations import ActivationStore
from featint.codes import CodeCache
from featint.config import AuxKSettings, Settings, TrainingSettings
from featint.errors import FeatintError
from featint.io import atomic_path
from featint.layout import ActivationsFolder, KindsFolder, ModelFolder
from featint.models import FeatureModel, SparseCode, TopKSAE, gather_sum
from featint.normaliser import Normaliser
from featint.runtime import native_bf16, seed_everything, step_autocast
from featint.tables import LR_SELECTION, PARAMETERS, TRAIN_LOG, write_table

log = logging.getLogger(__name__)


class TrainingError(FeatintError):
    """Training cannot go on (non-finite loss, incompatible checkpoint)."""


# ---------------------------------------------------------------------------------------------------------
# Data


class Batch(NamedTuple):
    """One training batch."""

    x: torch.Tensor  #: normalised activations [batch_size, d]
    code: SparseCode | None  #: the frozen SAE's cached code of ``x`` (streams with a code cache), else None


class ShuffledBatches:
    """Shuffled, normalised batches of selected train tokens, streamed a group of shards at a time.

    Epoch ``e`` permutes the shards with a generator seeded by (seed, e), groups consecutive shards until a
    group holds ``shuffle_shards`` shards and at least one batch, permutes the rows of each group, and yields
    ``rows // batch_size`` full batches per group (the few leftover rows of a group are skipped that epoch;
    another permutation uses them next epoch). Batch ``n`` of the whole stream is therefore a function of
    (seed, n) only, and :meth:`iterate` can start at any step without reading the skipped shards.
    """

    def __init__(self, store: ActivationStore, normaliser: Normaliser, batch_size: int, shuffle_shards: int,
                 seed: int, device: torch.device | str = "cpu", codes: CodeCache | None = None) -> None:
        self.store, self.normaliser, self.codes = store, normaliser, codes
        self.batch_size, self.shuffle_shards, self.seed = batch_size, shuffle_shards, seed
        self.device = torch.device(device)
        self.mask = store.selected_mask()
        firsts = store.manifest["first_row"].to_numpy()
        rows = store.manifest["rows"].to_numpy()
        self.shard_counts = np.array([int(self.mask[f : f + r].sum()) for f, r in zip(firsts, rows)])
        self.n_tokens = int(self.shard_counts.sum())
        if self.n_tokens < batch_size:
            raise TrainingError(
                f"the train split {store.directory} has {self.n_tokens} selected tokens, fewer than one batch "
                f"({batch_size}); lower training.batch_size or extract more tokens."
            )

    def _generator(self, *keys: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, *keys)) % (2**63))

    def epoch_groups(self, epoch: int) -> list[tuple[list[int], int]]:
        """[(shard indices, number of batches)] of ``epoch``."""
        order = torch.randperm(len(self.shard_counts), generator=self._generator(epoch, -1)).tolist()
        groups: list[tuple[list[int], int]] = []
        current: list[int] = []
        for shard in order:
            current.append(shard)
            rows = int(self.shard_counts[current].sum())
            if len(current) >= self.shuffle_shards and rows >= self.batch_size:
                groups.append((current, rows // self.batch_size))
                current = []
        if current:  # leftover shards join the last group
            if groups:
                merged = groups[-1][0] + current
                groups[-1] = (merged, int(self.shard_counts[merged].sum()) // self.batch_size)
            else:
                groups.append((current, int(self.shard_counts[current].sum()) // self.batch_size))
        return groups

    def batches_per_epoch(self, epoch: int) -> int:
        return sum(n for _, n in self.epoch_groups(epoch))

    def _load_group(self, shards: list[int], epoch: int, group: int) -> tuple[torch.Tensor, SparseCode | None]:
        data = torch.cat([self.store.read_shard_rows(shard, self.mask)[1] for shard in shards])
        perm = torch.randperm(data.shape[0], generator=self._generator(epoch, group))
        code = None
        if self.codes is not None:
            parts = [self.codes.read_shard(shard) for shard in shards]
            code = SparseCode(torch.cat([c.indices for c in parts])[perm], torch.cat([c.values for c in parts])[perm])
        return self.normaliser.apply(data[perm]), code

    def _plan(self, start_step: int) -> Iterator[tuple[list[int], int, int, int, int]]:
        """(shards, epoch, group, first batch, batches) of every group holding a batch from ``start_step`` on."""
        step, epoch = 0, 0
        while True:
            for group, (shards, n_batches) in enumerate(self.epoch_groups(epoch)):
                if step + n_batches > start_step:
                    yield shards, epoch, group, max(0, start_step - step), n_batches
                step += n_batches
            epoch += 1

    def _prepared_group(self, shards: list[int], epoch: int, group: int) -> tuple[torch.Tensor, SparseCode | None]:
        """:meth:`_load_group`, pinned when batches go to a GPU (so each batch copies asynchronously)."""
        data, code = self._load_group(shards, epoch, group)
        if self.device.type == "cuda":
            data = data.pin_memory()
            code = None if code is None else SparseCode(code.indices.pin_memory(), code.values.pin_memory())
        return data, code

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        """Endless batches (x [batch_size, d], and its cached code when the stream has a code cache), beginning
        with global batch ``start_step``. The next group of shards is read, shuffled and normalised by a
        background thread while this one's batches train (CPU tensors only: it never touches the device);
        batches move to the device here, from pinned memory without blocking on a GPU."""
        plan = self._plan(start_step)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featint-batches")
        blocking = self.device.type != "cuda"
        try:
            upcoming = next(plan)
            pending = pool.submit(self._prepared_group, *upcoming[:3])
            while True:
                _, _, _, first, n_batches = upcoming
                data, code = pending.result()
                upcoming = next(plan)
                pending = pool.submit(self._prepared_group, *upcoming[:3])
                for b in range(first, n_batches):
                    rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
                    yield Batch(data[rows].to(self.device, non_blocking=not blocking),
                                None if code is None else SparseCode(
                                    code.indices[rows].to(self.device, non_blocking=not blocking),
                                    code.values[rows].to(self.device, non_blocking=not blocking)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def load_selected(store: ActivationStore, normaliser: Normaliser, max_tokens: int | None = None,
                  token_set: str = "selected") -> torch.Tensor:
    """The first ``max_tokens`` tokens of a split's token set, normalised (validation, geometry)."""
    parts, have = [], 0
    for _, vectors in store.iter_shards(store.token_set_mask(token_set)):
        parts.append(vectors)
        have += vectors.shape[0]
        if max_tokens is not None and have >= max_tokens:
            break
    data = torch.cat(parts)
    return normaliser.apply(data[:max_tokens] if max_tokens is not None else data)


# ---------------------------------------------------------------------------------------------------------
# Loop


def lr_lambda(total_steps: int, final_factor: float, decay_fraction: float) -> Callable[[int], float]:
    decay_steps = max(1, int(decay_fraction * total_steps))

    def factor(step: int) -> float:
        return 1.0 - (1.0 - final_factor) * min(1.0, step / decay_steps)

    return factor


@torch.no_grad()
def fraction_of_variance_unexplained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """||x - x_hat||^2 / ||x - mean(x)||^2 over a batch."""
    return (((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()).item()


def auxk_loss(model: FeatureModel, x: torch.Tensor, x_hat: torch.Tensor, aux_code: SparseCode,
              settings: AuxKSettings) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top ``k_aux`` dead latents reconstruct the error, normalised by its variance."""
    error = (x - x_hat).detach()
    error_hat = gather_sum(model.sae.W_dec, aux_code)
    denominator = ((error - error.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-12)
    return settings.coefficient * ((error - error_hat) ** 2).sum(-1).mean() / denominator


@dataclass
class TrainResult:
    log: pd.DataFrame
    steps: int
    lr: float


class TrainOutputs(NamedTuple):
    """The files one training job writes (the ``train`` rule's outputs, the secondary SAE's), and its checkpoint."""

    weights: str | Path  #: the trained model (safetensors; written last, so a model with weights is complete)
    init: str | Path  #: the model as initialised, before its first step (the geometry's "before training")
    train_log: str | Path  #: the loss and the validation metrics during training (TRAIN_LOG)
    parameters: str | Path  #: parameter counts per component (PARAMETERS)
    loss_figure: str | Path  #: the training curves (PNG)
    checkpoint: str | Path  #: the resume point while training runs (removed once the weights are written)

    @classmethod
    def in_folder(cls, folder: ModelFolder | str | Path) -> TrainOutputs:
        """The outputs where the workflow puts them in a model folder (:class:`featint.layout.ModelFolder`)."""
        model = folder if isinstance(folder, ModelFolder) else ModelFolder(str(folder))
        return cls(model.weights, model.init, model.train_log, model.parameters, model.loss_figure, model.checkpoint)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a training run draws from: the CPU's (the batch order, dropout on the CPU), NumPy's, Python's
    and, on a GPU, that device's own (dropout there). CPU tensors, so a checkpoint loads on any machine."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`_rng_state`; a GPU's state goes to the device this job uses, whichever index it has (a job
    resumed on another GPU of the node continues the same dropout stream)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _raise_if_not_finite(first_bad: int, name: str, lr: float) -> None:
    if first_bad >= 0:
        raise TrainingError(
            f"{name}: non-finite loss or gradient norm at step {first_bad} (lr {lr:g}); lower the learning rate "
            "(training.lr / training.lr_grid) or check the activations for NaN/Inf.")


def evaluate_mse(model: FeatureModel, x: torch.Tensor, chunk: int = 4096,
                 codes: list[SparseCode] | None = None) -> tuple[float, float]:
    """(MSE per element, FVU) of the full reconstruction on ``x``, in eval mode; ``codes`` (frozen-encoder
    kinds) are the chunks' codes from :func:`encode_chunks`, computed once instead of at every validation."""
    was_training = model.training
    model.eval()
    sq_err = 0.0
    with torch.no_grad():
        for number, start in enumerate(range(0, x.shape[0], chunk)):
            batch = x[start : start + chunk]
            hat = model(batch, code=None if codes is None else codes[number]).total
            sq_err += float(((batch - hat) ** 2).sum())
    model.train(was_training)
    total_var = float(((x - x.mean(0)) ** 2).sum())
    return sq_err / x.numel(), sq_err / total_var


@torch.no_grad()
def encode_chunks(model: FeatureModel, x: torch.Tensor, chunk: int = 4096) -> list[SparseCode]:
    """The SAE's codes of ``x`` in :func:`evaluate_mse`'s chunks (at the SAE's own k)."""
    return [model.sae.encode(x[start : start + chunk])[0] for start in range(0, x.shape[0], chunk)]


@dataclass(frozen=True)
class Checkpoint:
    """Where a training run leaves its state, and for which run: a checkpoint whose identity (kind, steps, LR,
    batch, seed) differs from this run's is ignored, never resumed. The state holds everything a resumed run
    needs to continue bit-identically: weights, optimizer, schedule, the dead-feature counters, the log so far
    and every RNG."""

    path: Path  #: the checkpoint file (written atomically)
    identity: str  #: the run it belongs to

    def save(self, step: int, model: FeatureModel, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, since_fired: torch.Tensor,
             rows: list[dict[str, float]]) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"identity": self.identity, "step": step, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "since_fired": since_fired, "log": rows, "rng": _rng_state(since_fired.device)}, tmp)

    def restore(self, model: FeatureModel, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, name: str
                ) -> tuple[int, torch.Tensor, list[dict[str, float]]] | None:
        """Load this run's checkpoint into ``model``, ``optimizer``, ``scheduler`` and the RNGs; returns (step,
        dead-feature counters, log rows), or None when there is none (or only another run's). The file is read
        onto the CPU (the RNG states must stay there); weights and optimizer state are copied to where the
        model's parameters live."""
        state = torch.load(self.path, map_location="cpu", weights_only=True) if self.path.is_file() else None
        if state is None:
            return None
        if state.get("identity") != self.identity:
            log.warning("%s: ignoring checkpoint %s of another configuration (%s); starting afresh", name,
                        self.path, state.get("identity"))
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], torch.device(device))
        log.info("%s: resumed from %s at step %d", name, self.path, int(state["step"]))
        return int(state["step"]), state["since_fired"].to(device), list(state["log"])


def train(
    model: FeatureModel,
    data: ShuffledBatches,
    validation: torch.Tensor,
    training: TrainingSettings,
    auxk: AuxKSettings,
    lr: float,
    checkpoint_path: str | Path,
    name: str = "model",
    steps: int | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model.trainable_parameters()`` for ``steps`` (default ``training.steps``) batches.

    Resumes from ``checkpoint_path`` when it exists. ``on_checkpoint(step)`` is called after each checkpoint is
    written (a progress hook; the resume tests kill the run from it).
    """
    device = data.device
    total_steps = steps or training.steps
    params = list(model.trainable_parameters())
    trains_encoder = any(p is model.sae.W_enc for p in params)
    use_auxk = auxk.enabled and trains_encoder
    # the fused kernel: one pass over each parameter instead of a dozen elementwise ops (7x faster on CPU here)
    optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(training.betas), eps=training.eps,  # type: ignore[arg-type]
                                 fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, training.lr_final_factor, training.lr_decay_fraction))
    since_fired = torch.zeros(model.sae.n_features, dtype=torch.long, device=device)
    rows: list[dict[str, float]] = []
    checkpoint = Checkpoint(Path(checkpoint_path),
                            f"{name}|steps={total_steps}|lr={lr!r}|batch={data.batch_size}|seed={data.seed}")
    resumed = checkpoint.restore(model, optimizer, scheduler, device, name)
    start_step = 0
    if resumed is not None:
        start_step, since_fired, rows = resumed

    # the encoder product in bf16 where the device has it natively; master weights, loss and metrics stay float32
    autocast = training.bf16(device)
    log.info("%s: bf16 autocast %s (training.bf16_autocast: %s%s)", name, "on" if autocast else "off",
             training.bf16_autocast, f"; {native_bf16(device)[1]}" if training.bf16_autocast == "auto" else "")
    for module in model.modules():  # sparse or dense SAE products (training.kernels)
        if isinstance(module, TopKSAE):
            module.kernels = training.kernels
    # a frozen encoder's validation codes never change: encode the validation tokens once
    validation_codes = encode_chunks(model, validation) if model.kind in kinds.FROM_STANDARD else None
    model.train()
    batches = data.iterate(start_step)
    progress = tqdm(range(start_step, total_steps), desc=f"train {name}", unit="step", mininterval=10,
                    initial=start_step, total=total_steps)
    # Host reads are kept out of the per-step path (each would wait for the GPU): a non-finite loss or gradient
    # is remembered on the device and raised at the next log step; AuxK's "is any latent dead?" is the one
    # read per step (it decides the step's graph).
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    for step in progress:
        x, code = next(batches)
        with step_autocast(device, autocast):
            dead = since_fired > auxk.dead_after_tokens
            with_aux = use_auxk and bool(dead.any())
            rec = model(x, aux_mask=dead if with_aux else None, k_aux=auxk.k_aux if with_aux else 0, code=code)
            x_hat = rec.total.float()
            mse = ((x_hat - x) ** 2).mean()
            aux = auxk_loss(model, x, x_hat, rec.aux_code, auxk) if rec.aux_code is not None \
                else torch.zeros((), device=device)
            loss = mse + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.sae.project_decoder_grad()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
        optimizer.step()
        scheduler.step()
        model.sae.normalise_decoder()
        with torch.no_grad():
            since_fired += x.shape[0]
            # latents with a positive code anywhere in the batch; amax is order-independent (deterministic)
            fired = torch.zeros_like(since_fired).scatter_reduce_(
                0, rec.code.indices.reshape(-1), (rec.code.values > 0).reshape(-1).long(), reduce="amax")
            since_fired.masked_fill_(fired.bool(), 0)
        done = step + 1
        if done == total_steps or any(done % every == 0 for every in
                                      (training.log_every, training.validate_every, training.checkpoint_every)):
            _raise_if_not_finite(int(first_bad), name, lr)  # before anything is logged, validated or saved
        if done % training.log_every == 0 or done == total_steps:
            rows.append({"step": done, "tokens": done * x.shape[0], "split": "train", "loss": loss.item(),
                         "mse": mse.item(), "auxk": aux.item(), "fvu": fraction_of_variance_unexplained(x, x_hat),
                         "l0": float(rec.code.l0.float().mean()),
                         "dead_fraction": float((since_fired > auxk.dead_after_tokens).float().mean()),
                         "lr": float(scheduler.get_last_lr()[0]), "grad_norm": float(grad_norm)})
        if done % training.validate_every == 0 or done == total_steps:
            val_mse, val_fvu = evaluate_mse(model, validation, codes=validation_codes)
            rows.append({"step": done, "tokens": done * x.shape[0], "split": "validation", "loss": val_mse,
                         "mse": val_mse, "fvu": val_fvu})
            progress.set_postfix(val_fvu=f"{val_fvu:.3f}")
        if done % training.checkpoint_every == 0 and done < total_steps:
            checkpoint.save(done, model, optimizer, scheduler, since_fired, rows)
            if on_checkpoint is not None:
                on_checkpoint(done)
    model.eval()
    return TrainResult(log=pd.DataFrame(rows), steps=total_steps, lr=lr)


# ---------------------------------------------------------------------------------------------------------
# Stage entry points

@dataclass
class TrainingData:
    normaliser: Normaliser
    train: ActivationStore
    validation: ActivationStore

    @classmethod
    def open(cls, activations_dir: str | Path) -> TrainingData:
        activations = ActivationsFolder(activations_dir)
        normaliser = Normaliser.load(activations.normaliser)
        train_store = ActivationStore(activations.split("train"))
        validation_store = ActivationStore(activations.split("validation"))
        for store in (train_store, validation_store):
            if store.meta.hook_name != normaliser.hook_name:
                raise TrainingError(f"{store.directory} holds {store.meta.hook_name} activations but the normaliser "
                                    f"was fitted at {normaliser.hook_name}; rerun the workflow from extraction.")
        return cls(normaliser, train_store, validation_store)

    @property
    def d_model(self) -> int:
        return self.train.meta.d_model


def _fresh_model(kind: str, seed: int, settings: Settings, data: TrainingData,
                 standard: FeatureModel | None, batches: ShuffledBatches) -> FeatureModel:
    from featint.kinds import FROM_STANDARD
    from featint.models import build_model

    seed_everything(seed)
    model = build_model(kind, data.d_model, settings.sae, settings.nfm, standard)
    if kind not in FROM_STANDARD:  # start the decoder bias at the mean of the first batch (normalised space)
        with torch.no_grad():
            model.sae.b_dec.copy_(next(batches.iterate(0)).x.mean(0).cpu())
    return model.to(batches.device)


def _standard_start(kind: str, settings: Settings, data: TrainingData, standard_weights: str | Path | None,
                    codes_dir: str | Path | None, device: torch.device | str,
                    ) -> tuple[FeatureModel | None, CodeCache | None]:
    """For a kind built on the trained standard SAE: that SAE, and its code cache when ``codes_dir`` is given
    (checked against the SAE's weights); (None, None) for every other kind."""
    from featint.kinds import FROM_STANDARD
    from featint.models import load_model

    if kind not in FROM_STANDARD:
        return None, None
    if standard_weights is None:
        raise TrainingError(f"{kind} starts from the trained standard SAE (--standard).")
    standard = load_model(standard_weights, device)[0]
    if codes_dir is None:
        return standard, None
    cache = CodeCache(codes_dir)
    cache.check(standard_weights, data.train,
                settings.nfm.truncated_k if kinds.kind(kind).infer_k == "truncated" else settings.sae.k,
                settings.training.bf16(device))
    return standard, cache


def run_train(settings: Settings, kind: str, seed: int, activations_dir: str | Path, out: TrainOutputs,
              lr: float, device: torch.device | str = "cpu", standard_weights: str | Path | None = None,
              budget_factor: float = 1.0,
              codes_dir: str | Path | None = None) -> TrainResult:
    """Stage entry point: train one model kind for one seed into the files ``out`` names (weights, init weights,
    log, parameters, figure; the checkpoint while it runs).
    ``budget_factor`` multiplies the budget (``training.tokens``; the convergence check), the LR schedule
    keeping its shape over the longer run. Frozen-encoder kinds read the standard SAE's cached codes from
    ``codes_dir`` when given (:mod:`featint.codes`) instead of encoding every batch."""
    from featint.models import save_model

    for path in out:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = TrainingData.open(activations_dir)
    training = settings.training
    standard, codes = _standard_start(kind, settings, data, standard_weights, codes_dir, device)
    batches = ShuffledBatches(data.train, data.normaliser, training.batch_size, training.shuffle_shards, seed, device,
                              codes)
    model = _fresh_model(kind, seed, settings, data, standard, batches)
    steps = max(1, round(training.steps * budget_factor))
    extra = {"hook_name": data.normaliser.hook_name, "normaliser_kind": data.normaliser.kind, "seed": seed, "lr": lr,
             "tokens": steps * training.batch_size, "budget_factor": budget_factor}
    if not Path(out.init).is_file():
        save_model(model, out.init, extra)
    validation = load_selected(data.validation, data.normaliser, training.validation_tokens).to(batches.device)
    result = train(model, batches, validation, training, settings.sae.auxk, lr, out.checkpoint,
                   name=f"{kind}/seed~{seed}", steps=steps)
    counts = model.parameter_counts()
    counts_frame = pd.DataFrame([{"model": kind, "seed": seed, "component": c, "parameters": n}
                                 for c, n in counts.items()])
    counts_frame["share"] = counts_frame["parameters"] / counts["total"]
    counts_frame.loc[counts_frame["component"] == "total", "share"] = 1.0
    counts_frame["trainable"] = sum(p.numel() for p in model.trainable_parameters())
    write_table(counts_frame, out.parameters, PARAMETERS)
    save_training_outputs(model, result, out, kind, seed, extra,
                          {"lr": lr, "steps": result.steps, "budget_factor": budget_factor},
                          title=f"{kind}, seed {seed}, lr {lr:g}, {steps * training.batch_size:,} tokens")
    return result


def train_kinds(settings: Settings, names: list[str], seed: int, activations_dir: str | Path, out_dir: str | Path,
                lr_for: Callable[[str], float], device: torch.device | str = "cpu",
                cache_codes: bool = False) -> Iterator[tuple[str, TrainResult]]:
    """Train the kinds ``names`` for one seed into ``out_dir/<kind>``: ``standard`` first, every kind built on it
    from its weights there (the one "standard first" order the synthetic control, the layer sweep and the
    ablations share; the DAG wires the same order through its rules); yields (kind, result) as each finishes.
    ``lr_for(kind)`` gives each kind's learning rate. With ``cache_codes``, the standard SAE's codes of the train
    tokens are cached once in ``out_dir/standard/codes`` and read by every kind built on it."""
    from featint.codes import write_code_cache

    out = KindsFolder(out_dir)
    ordered = sorted(dict.fromkeys(names), key=lambda name: kinds.kind(name).from_standard)
    built_on = [name for name in ordered if kinds.kind(name).from_standard]
    if built_on and "standard" not in ordered:
        raise ValueError(f"{built_on} start from the standard SAE: train 'standard' with them")
    standard_weights = out.model("standard").weights
    codes_dir = str(out.model("standard").codes) if cache_codes and built_on else None
    device = torch.device(device)
    for kind in ordered:
        from_standard = kinds.kind(kind).from_standard
        seed_everything(seed)
        yield kind, run_train(settings, kind, seed, activations_dir, TrainOutputs.in_folder(out.model(kind)),
                              lr_for(kind), device=device,
                              standard_weights=standard_weights if from_standard else None,
                              codes_dir=codes_dir if from_standard else None)
        if kind == "standard" and codes_dir is not None:
            write_code_cache(standard_weights, activations_dir, codes_dir, settings.training.batch_size, device,
                             settings.training.bf16(device))


def lr_tables_by_kind(paths: list[str | Path]) -> dict[str, str]:
    """LR-selection tables keyed by the kind each names."""
    return {str(pd.read_parquet(path)["model"].iloc[0]): str(path) for path in paths}


def save_training_outputs(model: FeatureModel, result: TrainResult, out: TrainOutputs, label: str, seed: int,
                          extra: dict[str, Any], log_metadata: dict[str, Any], title: str) -> None:
    """What every training stage leaves: the log (labelled), its figure, the weights; the checkpoint goes once
    the weights are written."""
    from featint import plots
    from featint.models import save_model

    result.log.insert(0, "model", label)
    result.log.insert(1, "seed", seed)
    write_table(result.log, out.train_log, TRAIN_LOG, metadata=log_metadata)
    plots.training_curves(result.log, out.loss_figure, title=title)
    save_model(model, out.weights, extra)
    Path(out.checkpoint).unlink(missing_ok=True)


def run_lr_selection(settings: Settings, kind: str, activations_dir: str | Path, out_path: str | Path,
                     device: torch.device | str = "cpu", standard_weights: str | Path | None = None,
                     codes_dir: str | Path | None = None, budget_factor: float = 1.0) -> pd.DataFrame:
    """Stage entry point: train ``kind`` (first seed) at every LR of ``training.lr_grid`` on
    ``training.lr_selection_tokens`` (x ``budget_factor``: the budget target's choice at a larger budget) and
    choose the LR with the lowest validation FVU. While the best LR sits at an edge of the LRs tried, the grid is
    extended past that edge by ``lr_grid_factor`` (at most ``lr_grid_extensions`` times, each logged), so the
    optimum is interior; ``interior`` says whether it is.
    A diverging LR (non-finite loss) counts as infinitely bad."""

    data = TrainingData.open(activations_dir)
    training = settings.training
    seed = training.seeds[0]
    steps = max(1, round(training.lr_selection_tokens * budget_factor) // training.batch_size)
    validation = load_selected(data.validation, data.normaliser, training.validation_tokens)
    standard, codes = _standard_start(kind, settings, data, standard_weights, codes_dir, device)
    results: dict[float, dict[str, Any]] = {}

    def probe(lr: float, extension: int) -> None:
        batches = ShuffledBatches(data.train, data.normaliser, training.batch_size, training.shuffle_shards, seed,
                                  device, codes)
        model = _fresh_model(kind, seed, settings, data, standard, batches)
        row: dict[str, Any] = {"model": kind, "lr": lr, "steps": steps, "tokens": steps * training.batch_size,
                               "seed": seed, "extension": extension, "diverged": False}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = train(model, batches, validation.to(batches.device), training, settings.sae.auxk, lr,
                               TrainOutputs.in_folder(tmp).checkpoint, name=f"lr-selection {kind} lr={lr:g}",
                               steps=steps)
            except TrainingError as error:
                log.warning("lr selection %s: lr %g diverged (%s)", kind, lr, error)
                row.update(diverged=True, validation_fvu=float("inf"), validation_mse=float("inf"))
            else:
                final = result.log[result.log["split"] == "validation"].iloc[-1]
                row.update(validation_fvu=float(final["fvu"]), validation_mse=float(final["mse"]))
        results[lr] = row

    for lr in sorted(training.lr_grid):
        probe(lr, 0)
    for extension in range(1, training.lr_grid_extensions + 1):
        tried = sorted(results)
        best = min(tried, key=lambda lr: results[lr]["validation_fvu"])
        if best not in (tried[0], tried[-1]) or len(tried) < 2:
            break
        new = best * training.lr_grid_factor if best == tried[-1] else best / training.lr_grid_factor
        log.info("lr selection %s: best lr %g is at the %s edge of %s; extending the grid to %g", kind, best,
                 "upper" if best == tried[-1] else "lower", [f"{lr:g}" for lr in tried], new)
        probe(new, extension)
    frame = pd.DataFrame([results[lr] for lr in sorted(results)])
    best_index = int(frame["validation_fvu"].idxmin())
    frame["chosen"] = frame.index == best_index
    frame["interior"] = 0 < best_index < len(frame) - 1
    if not frame["interior"].iloc[0]:
        log.warning("lr selection %s: the chosen lr %g is still at an edge of the grid after %d extensions; "
                    "widen training.lr_grid or raise training.lr_grid_extensions.", kind,
                    frame.loc[best_index, "lr"], training.lr_grid_extensions)
    write_table(frame, out_path, LR_SELECTION)
    log.info("lr selection (%s):\n%s", kind, frame.to_string(index=False))
    return frame


def gather_lr_selection(tables: list[str | Path], out_table: str | Path, figure_path: str | Path) -> pd.DataFrame:
    """Stage entry point: every kind's LR-selection table in one, and the validation-FVU-vs-LR figure."""
    from featint import plots

    frame = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    write_table(frame, out_table, LR_SELECTION)
    plots.lr_selection(frame, figure_path)
    return frame


def chosen_lr(settings: Settings, kind: str, selection_path: str | Path | None) -> float:
    """The LR of ``kind``: ``training.lr`` when set, else the choice on the validation split read from the
    selection table of :func:`featint.kinds.lr_selection_kind` (``selection_path``)."""
    if settings.training.lr is not None:
        return settings.training.lr
    if selection_path is None:
        raise TrainingError("training.lr is null, so the learning rate comes from the lr-selection table; pass it.")
    frame = pd.read_parquet(selection_path)
    source = kinds.lr_selection_kind(kind)
    if "model" not in frame.columns or set(frame["model"]) != {source}:
        raise TrainingError(f"{selection_path} is not the lr-selection table of {source} (the table {kind} uses); "
                            "rerun select_lr.")
    return float(frame.loc[frame["chosen"], "lr"].iloc[0])
