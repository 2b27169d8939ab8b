"""Cached sparse codes of a frozen SAE: encode the train split once, train the frozen-encoder kinds on the cache.

``sequential``, ``sequential_truncated`` and ``standard_refit`` never change the standard SAE's encoder, so the
code of every train token is the same at every step and every epoch. Re-running the encoder product and top-k
for each batch costs more than everything these kinds train (the NFM, or the decoder's k gathered rows). The
cache holds, per activation shard, the (indices, values) of the selected rows in row order: int32 and float32
arrays of ``[rows, k]`` in safetensors files (an imported ReLU or JumpReLU SAE's: ``[rows, w]``, w the most
latents active on any train token, each token's active latents first and the rest zero-valued padding), each
with its sha256 in ``manifest.parquet``, whose metadata names the SAE (sha256 of its weights file) and the batch
size the codes were computed at.

Codes are computed in chunks of exactly ``batch_size`` rows (the last chunk padded), the shape every training
batch has, so the encoder takes the same kernel path as in a training step and the cached codes equal the
re-encoded ones bit for bit (tested: ``sequential`` trains to identical weights). ``sequential_truncated``
takes the top ``truncated_k`` of the cached k (the same set as encoding at the smaller k; equal values, summed in
another order); ``standard_refit`` trains on the standard SAE's own codes, which its folded encoder (b_dec moved
into b_enc) reproduces up to rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from featint.activations import ActivationStore
from featint.errors import ShardError
from featint.io import ShardChecks, atomic_directory, read_parquet_metadata, sha256_file, write_parquet
from featint.layout import CODES_MANIFEST, ActivationsFolder, CodeCacheFolder
from featint.models import SparseCode, load_model
from featint.normaliser import Normaliser
from featint.runtime import step_autocast

log = logging.getLogger(__name__)

MANIFEST = CODES_MANIFEST


@dataclass(frozen=True)
class CodeCacheMeta:
    """What a cache was computed from (the manifest's metadata)."""

    weights_sha256: str  #: sha256 of the SAE weights file that encoded the tokens
    k: int  #: codes per token (the SAE's own k; a threshold SAE's most active latents on a token, the rest padded)
    n_features: int  #: the SAE's width
    batch_size: int  #: rows per encoder call (the training batch size: same kernel path as a training step)
    hook_name: str  #: the activations' hook
    n_rows: int  #: selected train rows covered
    bf16_autocast: bool = False  #: encoded under the training step's bf16 autocast (as training re-encodes)
    activation: str = "topk"  #: the SAE's activation; a threshold SAE's cache holds every active latent (k = the most)


def write_code_cache(weights_path: str | Path, activations_dir: str | Path, out_dir: str | Path,
                     batch_size: int, device: torch.device | str = "cpu", bf16_autocast: bool = False) -> CodeCacheMeta:
    """Stage entry point: encode every selected train token with the SAE of ``weights_path`` (normalised as in
    training, under the training step's autocast) and write the cache to ``out_dir`` (built under a temporary
    name, renamed when complete)."""
    model, _ = load_model(weights_path, device)
    activations = ActivationsFolder(activations_dir)
    normaliser = Normaliser.load(activations.normaliser)
    store = ActivationStore(activations.split("train"))
    mask = store.selected_mask()
    sae = model.sae
    rows, n_rows = [], 0
    with atomic_directory(out_dir) as partial, torch.no_grad(), step_autocast(device, bf16_autocast):
        for index in tqdm(range(len(store.manifest)), desc="cache codes", unit="shard", mininterval=10):
            _, vectors = store.read_shard_rows(index, mask)
            x = normaliser.apply(vectors).to(device)
            parts = []
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size]
                n = chunk.shape[0]
                if n < batch_size:  # pad: every encoder call sees a full batch, as in training
                    chunk = torch.cat([chunk, chunk.new_zeros(batch_size - n, chunk.shape[1])])
                code, _ = sae.encode(chunk)
                parts.append(_real_rows(code, n, sae.activation != "topk"))
            empty_width = sae.k if sae.activation == "topk" else 1  # a threshold SAE's width comes from its tokens
            code = SparseCode.cat(parts, sae.n_features) if parts else \
                SparseCode(torch.empty(0, empty_width, dtype=torch.long), torch.empty(0, empty_width))
            name = CodeCacheFolder.shard_name(index)
            rows.append({"shard": index, "file": name, "rows": int(x.shape[0])})
            _write_shard(code, partial / name, rows[-1])
            n_rows += int(x.shape[0])
        width = max((row["width"] for row in rows), default=sae.k)
        for row in rows:  # a threshold SAE's shards differ in width: every one padded to the widest
            if row["width"] < width:
                tensors = load_file(str(partial / row["file"]))
                code = SparseCode(tensors["indices"].long(), tensors["values"]).pad(width, sae.n_features)
                _write_shard(code, partial / row["file"], row)
        meta = CodeCacheMeta(sha256_file(weights_path), width, sae.n_features, batch_size,
                             normaliser.hook_name, n_rows, bf16_autocast, sae.activation)
        write_parquet(pd.DataFrame(rows).drop(columns="width"), partial / MANIFEST, metadata=meta.__dict__)
    log.info("cached the codes of %d train tokens (width %d) of %s in %s", n_rows, width, weights_path, out_dir)
    return meta


def _real_rows(code: SparseCode, n: int, threshold: bool) -> SparseCode:
    """The code of a chunk's first ``n`` (real, not padding) rows; a threshold SAE's narrowed to the most active
    latents of those rows (its codes list the active latents first, so the columns after that are all zero)."""
    code = SparseCode(code.indices[:n], code.values[:n])
    if threshold and n:
        width = max(1, int(code.l0.max()))
        code = SparseCode(code.indices[:, :width], code.values[:, :width])
    return code


def _write_shard(code: SparseCode, path: Path, row: dict) -> None:
    """One shard's codes (int32 indices, float32 values) at ``path``; its width, size and sha256 into ``row``."""
    save_file({"indices": code.indices.to(torch.int32).cpu().contiguous(),
               "values": code.values.float().cpu().contiguous()}, str(path))
    row.update(width=code.width, bytes=path.stat().st_size, sha256=sha256_file(path))


class CodeCache:
    """Read-only view of a code cache; shards are verified as they are read (sha256 on first read by this
    object, size on every read: :class:`~featint.io.ShardChecks`)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest = self.directory / MANIFEST
        if not manifest.is_file():
            raise ShardError(f"{manifest} does not exist; the code cache was never written or did not finish. "
                             "Rerun the cache_codes rule (snakemake re-creates it).")
        self.manifest = pd.read_parquet(manifest).set_index("shard")
        self.meta = CodeCacheMeta(**read_parquet_metadata(manifest))
        self._checks = ShardChecks()

    def check(self, weights_path: str | Path, store: ActivationStore, k: int, bf16_autocast: bool = False) -> None:
        """Stop with a clear message unless the cache was computed by ``weights_path`` on ``store`` with at
        least ``k`` codes per token, under the autocast the training step uses."""
        fix = f"delete {self.directory} and rerun the workflow (the cache_codes rule writes it again)."
        if sha256_file(weights_path) != self.meta.weights_sha256:
            raise ShardError(f"the code cache {self.directory} was computed by another SAE than {weights_path}; {fix}")
        if self.meta.hook_name != store.meta.hook_name or self.meta.n_rows != int(store.selected_mask().sum()):
            raise ShardError(f"the code cache {self.directory} does not cover the train tokens of {store.directory}; "
                             f"{fix}")
        if bool(self.meta.bf16_autocast) != bf16_autocast:
            raise ShardError(f"the code cache {self.directory} was encoded with bf16 autocast "
                             f"{'on' if self.meta.bf16_autocast else 'off'}, but training.bf16_autocast is "
                             f"{bf16_autocast}; {fix}")
        if self.meta.activation == "topk" and self.meta.k < k:
            raise ShardError(f"the code cache {self.directory} holds {self.meta.k} codes per token, fewer than the "
                             f"{k} this model needs; {fix}")

    def read_shard(self, index: int) -> SparseCode:
        """The codes of shard ``index``'s selected rows, in row order (empty if none are selected)."""
        if index not in self.manifest.index:
            return SparseCode(torch.empty(0, self.meta.k, dtype=torch.long),
                              torch.empty(0, self.meta.k, dtype=torch.bfloat16 if self.meta.bf16_autocast else None))
        entry = self.manifest.loc[index]
        path = self.directory / entry["file"]
        fix = f"the cache is corrupt: delete {self.directory} and rerun the workflow to write it again."
        self._checks.verify(path, entry["bytes"], entry["sha256"], "code cache shard", fix)
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ShardError(f"code cache shard {path} cannot be read ({exc}); {fix}") from exc
        values = tensors["values"]
        if self.meta.bf16_autocast:  # the encoder gave bfloat16 values under autocast (stored exactly in float32)
            values = values.to(torch.bfloat16)
        return SparseCode(tensors["indices"].long(), values)

