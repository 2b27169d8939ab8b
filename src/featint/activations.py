"""Activation extraction and the shard store.

One directory per split::

    activations/<split>/shard-00000.safetensors   float32|float16 [rows, d], tensor "activations"
    activations/<split>/manifest.parquet          one row per shard (file, rows, first_row, bytes, sha256,
                                                  doc ids); the store's metadata (hook, d, model, BOS
                                                  convention, outlier threshold) in the Parquet schema
    activations/<split>/tokens.parquet            one row per stored token: row, shard, doc_id, window,
                                                  position, token_id, norm, is_position_zero, is_outlier,
                                                  selected

Every position of every window is stored; ``selected`` marks the tokens used by default for training and
metrics (position 0 and massive-norm outliers excluded unless the config says otherwise), so any later
metric can also be computed on all tokens. A split directory is written under a ``.partial-*`` name and
renamed when complete; a killed extraction restarts that split from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from featint.config import ExtractionSettings, HookSettings, ModelSettings
from featint.errors import ShardError, SplitError
from featint.io import ShardChecks, atomic_directory, read_parquet_metadata, sha256_file, write_parquet
from featint.layout import STORE_MANIFEST, STORE_TOKENS, shard_name
from featint.lm import HookPoint, bos_token_id, encode_document, load_bridge, model_key
from featint.normaliser import Normaliser
from featint.tables import TOKEN_SETS

log = logging.getLogger(__name__)

MANIFEST, TOKENS = STORE_MANIFEST, STORE_TOKENS
TENSOR_NAME = "activations"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Named token sets of a split: ``selected`` (the default selection) and ``with_outliers`` (all but position 0).


@dataclass(frozen=True)
class StoreMeta:
    split: str
    hook_name: str
    layer: int
    site: str
    d_model: int
    dtype: str
    model_key: str
    context_length: int
    bos_token_id: int
    n_rows: int
    n_windows: int
    n_documents: int
    median_norm: float
    outlier_threshold: float
    outlier_norm_factor: float
    exclude_position_zero: bool
    exclude_outliers: bool


# ---------------------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Buffers token vectors and writes fixed-size safetensors shards, recording their checksums."""

    def __init__(self, directory: Path, shard_rows: int, dtype: str) -> None:
        self.directory = directory
        self.shard_rows = shard_rows
        self.dtype = STORAGE_DTYPES[dtype]
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
        self._doc_ids: list[np.ndarray] = []
        self.rows_written = 0
        self.manifest: list[dict[str, Any]] = []

    def add(self, vectors: torch.Tensor, doc_ids: np.ndarray) -> None:
        start = 0
        while start < vectors.shape[0]:
            take = min(self.shard_rows - self._buffered, vectors.shape[0] - start)
            self._buffer.append(vectors[start : start + take].to(self.dtype))
            self._doc_ids.append(doc_ids[start : start + take])
            self._buffered += take
            start += take
            if self._buffered == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        index = len(self.manifest)
        name = shard_name(index)
        path = self.directory / name
        save_file({TENSOR_NAME: torch.cat(self._buffer).contiguous()}, str(path))
        docs = np.unique(np.concatenate(self._doc_ids))
        self.manifest.append(
            {
                "shard": index,
                "file": name,
                "first_row": self.rows_written,
                "rows": self._buffered,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "doc_ids": docs.astype(np.int32).tolist(),
            }
        )
        self.rows_written += self._buffered
        self._buffer, self._doc_ids, self._buffered = [], [], 0

    def close(self) -> pd.DataFrame:
        self._flush()
        return pd.DataFrame(self.manifest)


# ---------------------------------------------------------------------------------------------------------
# Reading


class ActivationStore:
    """Read-only view of one split's shards; shards are verified as they are read (sha256 on first read by
    this object, size on every read: :class:`~featint.io.ShardChecks`)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise ShardError(
                f"{manifest_path} does not exist; the activations of this split were never extracted or the "
                "extraction did not finish. Rerun the extract rule (snakemake re-creates it)."
            )
        self.manifest = pd.read_parquet(manifest_path)
        self.meta = StoreMeta(**read_parquet_metadata(manifest_path))
        self._tokens: pd.DataFrame | None = None
        self._checks = ShardChecks()

    @property
    def n_rows(self) -> int:
        return self.meta.n_rows

    def tokens(self) -> pd.DataFrame:
        if self._tokens is None:
            self._tokens = pd.read_parquet(self.directory / TOKENS)
        return self._tokens

    def selected_mask(self) -> np.ndarray:
        return self.tokens()["selected"].to_numpy()

    def token_set_mask(self, token_set: str) -> np.ndarray:
        """Rows of a named token set: ``selected`` (the default selection: position 0 and, by default,
        massive-norm outliers left out) or ``with_outliers`` (every position but 0)."""
        if token_set == "selected":
            return self.selected_mask()
        if token_set == "with_outliers":
            return ~self.tokens()["is_position_zero"].to_numpy()
        raise ValueError(f"unknown token set {token_set!r}; expected one of {TOKEN_SETS}")

    def read_shard(self, index: int, verify: bool = True) -> torch.Tensor:
        """Shard ``index`` as float32 [rows, d]; raises :class:`ShardError` if truncated or corrupt."""
        entry = self.manifest.iloc[index]
        path = self.directory / entry["file"]
        fix = f"delete {self.directory} and rerun the workflow to extract this split again."
        self._checks.verify(path, entry["bytes"], entry["sha256"], "activation shard", fix, checksum=verify)
        try:
            tensor = load_file(str(path))[TENSOR_NAME]
        except (SafetensorError, KeyError, OSError) as exc:
            raise ShardError(f"activation shard {path} cannot be read ({exc}); {fix}") from exc
        if tensor.shape != (int(entry["rows"]), self.meta.d_model):
            raise ShardError(f"activation shard {path} has shape {tuple(tensor.shape)}; {fix}")
        return tensor.float()

    def read_shard_rows(self, index: int, mask: np.ndarray | None = None,
                        verify: bool = True) -> tuple[np.ndarray, torch.Tensor]:
        """(global row indices, float32 vectors) of shard ``index``, restricted to the split-wide ``mask``."""
        entry = self.manifest.iloc[index]
        first, rows = int(entry["first_row"]), int(entry["rows"])
        row_ids = np.arange(first, first + rows)
        if mask is None:
            return row_ids, self.read_shard(index, verify)
        keep = np.array(mask[first : first + rows], dtype=bool)
        if not keep.any():
            return row_ids[:0], torch.empty(0, self.meta.d_model)
        return row_ids[keep], self.read_shard(index, verify)[torch.from_numpy(keep)]

    def iter_shards(
        self, mask: np.ndarray | None = None, verify: bool = True
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (global row indices, float32 vectors) per shard, restricted to ``mask`` if given (shards with
        no row in the mask are not read). Memory holds one shard at a time whatever the split's size."""
        for index in range(len(self.manifest)):
            row_ids, vectors = self.read_shard_rows(index, mask, verify)
            if row_ids.size:
                yield row_ids, vectors


def write_store_from_tensor(out_dir: str | Path, vectors: torch.Tensor, split: str, hook_name: str,
                            shard_rows: int = 32768, dtype: str = "float32",
                            window_length: int | None = None, doc_length: int | None = None) -> StoreMeta:
    """A split directory holding ``vectors`` (every row selected), e.g. vectors computed from a model rather
    than extracted from the LM, or synthetic data. Rows are grouped into windows of ``window_length`` (default:
    one window) and documents of ``doc_length`` rows (default: one document; the unit the evaluation's
    bootstrap resamples); no row is position 0."""
    n, d = vectors.shape
    length = window_length or n
    doc_ids = (np.arange(n) // doc_length).astype(np.int32) if doc_length else np.zeros(n, dtype=np.int32)
    with atomic_directory(out_dir) as tmp:
        writer = ShardWriter(tmp, shard_rows, dtype)
        writer.add(vectors.float(), doc_ids)
        manifest = writer.close()
        rows = np.arange(n, dtype=np.int64)
        tokens = pd.DataFrame({
            "row": rows, "shard": (rows // shard_rows).astype(np.int32), "doc_id": doc_ids,
            "window": (rows // length).astype(np.int32),
            "window_in_doc": (rows // length
                              - (doc_ids.astype(np.int64) * (doc_length or 0)) // length).astype(np.int32),
            "position": (rows % length + 1).astype(np.int16), "token_id": np.full(n, -1, dtype=np.int32),
            "norm": vectors.float().norm(dim=1).numpy(), "is_position_zero": np.zeros(n, dtype=bool),
            "is_outlier": np.zeros(n, dtype=bool), "selected": np.ones(n, dtype=bool),
        })
        meta = StoreMeta(split=split, hook_name=hook_name, layer=-1, site="derived", d_model=d, dtype=dtype,
                         model_key="derived", context_length=length, bos_token_id=-1, n_rows=n,
                         n_windows=int(np.ceil(n / length)), n_documents=int(doc_ids.max()) + 1 if n else 0,
                         median_norm=float(np.median(tokens["norm"])), outlier_threshold=float("inf"),
                         outlier_norm_factor=float("inf"), exclude_position_zero=True, exclude_outliers=False)
        write_parquet(tokens, tmp / TOKENS, metadata={"split": split})
        write_parquet(manifest, tmp / MANIFEST, metadata=asdict(meta))
    return meta


# ---------------------------------------------------------------------------------------------------------
# Extraction


@dataclass(frozen=True)
class Window:
    doc_id: int
    index_in_doc: int
    token_ids: list[int]  # BOS first


def plan_windows(
    documents: pd.DataFrame, bridge: Any, context_length: int, max_tokens: int | None
) -> tuple[list[Window], dict[str, int]]:
    """Cut each document into non-overlapping windows of BOS + (context_length - 1) tokens (a trailing piece
    shorter than a window is dropped) and keep up to ``max_tokens`` stored tokens **spread over every
    document**: windows are taken round-robin (window 0 of each document in doc_id order, then window 1, ...),
    so a cap never confines a split to its first few documents (statistics that resample documents need many).
    The kept windows are returned in (doc_id, position in document) order."""
    bos = bos_token_id(bridge)
    body = context_length - 1
    stats = {"documents_used": 0, "tokens_dropped_tail": 0, "documents_too_short": 0}
    per_document: list[list[Window]] = []
    for doc in documents.sort_values("doc_id").itertuples():
        ids = encode_document(bridge, doc.text)
        n_full = len(ids) // body
        stats["tokens_dropped_tail"] += len(ids) - n_full * body
        if n_full == 0:
            stats["documents_too_short"] += 1
            continue
        per_document.append([Window(int(doc.doc_id), w, [bos] + ids[w * body : (w + 1) * body])
                             for w in range(n_full)])
    budget = None if max_tokens is None else max(1, max_tokens // context_length)
    kept: list[Window] = []
    depth = 0
    while per_document and (budget is None or len(kept) < budget):
        layer = [windows[depth] for windows in per_document if depth < len(windows)]
        if not layer:
            break
        kept.extend(layer if budget is None else layer[: budget - len(kept)])
        depth += 1
    kept.sort(key=lambda w: (w.doc_id, w.index_in_doc))
    stats["documents_used"] = len({w.doc_id for w in kept})
    return kept, stats


def train_norm_threshold(train_dir: str | Path) -> tuple[float, float]:
    """(median norm, outlier threshold) recorded by the train split's extraction."""
    meta = ActivationStore(train_dir).meta
    return meta.median_norm, meta.outlier_threshold


class TokenSelection(NamedTuple):
    """Which extracted rows the models see, and why the others are left out."""

    median_norm: float  #: median norm of the train split's rows, position 0 excluded
    threshold: float  #: outlier_norm_factor x that median: rows above it are massive-norm outliers
    is_position_zero: np.ndarray  #: [rows] the window's first position (BOS)
    is_outlier: np.ndarray  #: [rows] norm above the threshold (position 0 never counts)
    selected: np.ndarray  #: [rows] kept: not excluded as position 0 or as an outlier (per the settings)


def select_tokens(norms: np.ndarray, context_length: int, split: str, extraction: ExtractionSettings,
                  train_dir: str | Path | None) -> TokenSelection:
    """The selection of a split's rows (windows of ``context_length`` rows, in order): the train split sets the
    outlier threshold from its own norms, validation and test read it from ``train_dir``."""
    is_position_zero = np.tile(np.arange(context_length, dtype=np.int16), norms.size // context_length) == 0
    if split == "train":
        median = float(np.median(norms[~is_position_zero]))
        threshold = extraction.outlier_norm_factor * median
    else:
        median, threshold = train_norm_threshold(train_dir)  # type: ignore[arg-type]
    is_outlier = (~is_position_zero) & (norms > threshold)
    selected = np.ones(norms.size, dtype=bool)
    if extraction.exclude_position_zero:
        selected &= ~is_position_zero
    if extraction.exclude_outliers:
        selected &= ~is_outlier
    if not selected.any():
        raise SplitError(f"split '{split}' has no selected token after excluding position 0 and outliers.")
    return TokenSelection(median, threshold, is_position_zero, is_outlier, selected)


def token_table(windows: list[Window], context_length: int, norms: np.ndarray, shard_rows: int,
                chosen: TokenSelection) -> pd.DataFrame:
    """One row per extracted token: where it is stored, where it comes from, its norm and its selection."""
    T = context_length
    rows = np.arange(norms.size, dtype=np.int64)
    return pd.DataFrame(
        {
            "row": rows,
            "shard": (rows // shard_rows).astype(np.int32),
            "doc_id": np.repeat(np.array([w.doc_id for w in windows], dtype=np.int32), T),
            "window": np.repeat(np.arange(len(windows), dtype=np.int32), T),
            "window_in_doc": np.repeat(np.array([w.index_in_doc for w in windows], dtype=np.int32), T),
            "position": np.tile(np.arange(T, dtype=np.int16), len(windows)),
            "token_id": np.array([t for w in windows for t in w.token_ids], dtype=np.int32),
            "norm": norms,
            "is_position_zero": chosen.is_position_zero,
            "is_outlier": chosen.is_outlier,
            "selected": chosen.selected,
        }
    )


@torch.no_grad()
def extract_split(
    *,
    split: str,
    documents_path: str | Path,
    model_directory: str | Path,
    out_dir: str | Path,
    model: ModelSettings,
    hook: HookSettings,
    extraction: ExtractionSettings,
    device: torch.device | str = "cpu",
    train_dir: str | Path | None = None,
    bridge: Any | None = None,
) -> StoreMeta:
    """Stage entry point: extract one split's activations at the hook into checksummed shards.

    The outlier threshold is ``outlier_norm_factor`` x the median train norm (position 0 excluded): the train
    split computes it, validation and test read it from ``train_dir``. ``bridge`` may be passed already
    loaded from ``model_directory`` (benchmarks, notebooks).
    """
    documents = pd.read_parquet(documents_path)
    documents = documents[documents["split"] == split]
    if documents.empty:
        raise SplitError(f"split '{split}' has no document in {documents_path}; see split.fractions.")
    if split != "train" and train_dir is None:
        raise ValueError("validation/test extraction needs the train split's directory for the outlier threshold")

    if bridge is None:
        bridge = load_bridge(model_directory, model.dtype, device)
    hook_point = HookPoint.from_settings(hook)
    hook_point.check(bridge.cfg.n_layers, where=str(model_directory))
    d_model = int(bridge.cfg.d_model)

    windows, plan_stats = plan_windows(
        documents, bridge, extraction.context_length, extraction.max_tokens[split]
    )
    if not windows:
        raise SplitError(
            f"split '{split}' yields zero tokens: none of its {len(documents)} documents fills one window of "
            f"{extraction.context_length} tokens; lower extraction.context_length or add documents."
        )
    T = extraction.context_length
    n_rows = len(windows) * T
    log.info("%s: %d windows x %d tokens = %d rows from %d documents", split, len(windows), T, n_rows,
             plan_stats["documents_used"])
    from featint.plan import DTYPE_BYTES, check_disk

    check_disk(n_rows * d_model * DTYPE_BYTES[extraction.dtype] * 1.02, Path(out_dir).parent,
               f"the {split} shards ({n_rows:,} rows x d {d_model} x {extraction.dtype})")

    norms = np.empty(n_rows, dtype=np.float32)
    with atomic_directory(out_dir) as tmp:
        writer = ShardWriter(tmp, extraction.shard_rows, extraction.dtype)
        batch = extraction.batch_size
        for start in tqdm(range(0, len(windows), batch), desc=f"extract {split}", unit="batch", mininterval=5):
            chunk = windows[start : start + batch]
            tokens = torch.tensor([w.token_ids for w in chunk], dtype=torch.long, device=device)
            acts = bridge(tokens, stop_at_layer=hook_point.stop_at_layer)
            flat = acts.reshape(-1, d_model).float().cpu()
            row0 = start * T
            norms[row0 : row0 + flat.shape[0]] = flat.norm(dim=1).numpy()
            doc_ids = np.repeat(np.array([w.doc_id for w in chunk], dtype=np.int32), T)
            writer.add(flat, doc_ids)
        manifest = writer.close()

        chosen = select_tokens(norms, T, split, extraction, train_dir)
        tokens_table = token_table(windows, T, norms, extraction.shard_rows, chosen)
        meta = StoreMeta(
            split=split,
            hook_name=hook_point.name,
            layer=hook_point.layer,
            site=hook_point.site,
            d_model=d_model,
            dtype=extraction.dtype,
            model_key=model_key(model),
            context_length=T,
            bos_token_id=bos_token_id(bridge),
            n_rows=n_rows,
            n_windows=len(windows),
            n_documents=int(plan_stats["documents_used"]),
            median_norm=chosen.median_norm,
            outlier_threshold=chosen.threshold,
            outlier_norm_factor=extraction.outlier_norm_factor,
            exclude_position_zero=extraction.exclude_position_zero,
            exclude_outliers=extraction.exclude_outliers,
        )
        write_parquet(tokens_table, tmp / TOKENS, metadata={"split": split, **plan_stats})
        write_parquet(manifest, tmp / MANIFEST, metadata=asdict(meta))
    log.info("%s: %d outliers (> %.1f = %.1f x median %.1f), %d selected tokens", split,
             int(chosen.is_outlier.sum()), chosen.threshold, extraction.outlier_norm_factor, chosen.median_norm,
             int(chosen.selected.sum()))
    return meta


# ---------------------------------------------------------------------------------------------------------
# Normaliser fit and summaries


def fit_normaliser(train_dir: str | Path, kind: str, min_std: float, out_path: str | Path) -> Normaliser:
    """Stage entry point: fit the normaliser on the train split's selected tokens, streaming shards."""
    store = ActivationStore(train_dir)
    mask = store.selected_mask()
    batches = (vectors for _, vectors in tqdm(store.iter_shards(mask), desc="fit normaliser",
                                               total=len(store.manifest), unit="shard"))
    normaliser = Normaliser.fit(batches, kind=kind, hook_name=store.meta.hook_name, min_std=min_std)
    normaliser.save(out_path)
    return normaliser


def summarise_split(store: ActivationStore, normaliser: Normaliser) -> tuple[dict[str, Any], pd.DataFrame]:
    """Counts for one split and per-position norm statistics before and after normalisation."""
    tokens = store.tokens()
    normalised_norm = np.empty(store.n_rows, dtype=np.float32)
    for row_ids, vectors in store.iter_shards():
        normalised_norm[row_ids] = normaliser.apply(vectors).norm(dim=1).numpy()
    frame = pd.DataFrame(
        {
            "position": tokens["position"].to_numpy(),
            "raw": tokens["norm"].to_numpy(),
            "normalised": normalised_norm,
            "is_outlier": tokens["is_outlier"].to_numpy(),
        }
    )
    long = frame.melt(id_vars=["position", "is_outlier"], value_vars=["raw", "normalised"],
                      var_name="space", value_name="norm")
    by_position = (
        long.groupby(["space", "position"])["norm"]
        .agg(median="median", p99=lambda s: float(np.quantile(s, 0.99)), max="max", count="size")
        .reset_index()
    )
    by_position.insert(0, "split", store.meta.split)
    selected = tokens["selected"].to_numpy()
    raw = tokens["norm"].to_numpy().astype(np.float64)
    sq = raw**2
    counts = {
        "split": store.meta.split,
        "documents": store.meta.n_documents,
        "windows": store.meta.n_windows,
        "tokens_stored": store.n_rows,
        "tokens_position_zero": int(tokens["is_position_zero"].sum()),
        "tokens_outlier": int(tokens["is_outlier"].sum()),
        "tokens_selected": int(selected.sum()),
        "median_norm": float(np.median(raw[~tokens["is_position_zero"].to_numpy()])),
        "outlier_threshold": store.meta.outlier_threshold,
        "outlier_share_of_sq_norm": float(sq[tokens["is_outlier"].to_numpy()].sum() /
                                          sq[~tokens["is_position_zero"].to_numpy()].sum()),
        "selected_mean_normalised_norm": float(normalised_norm[selected].mean()),
        "hook_name": store.meta.hook_name,
        "d_model": store.meta.d_model,
        "shards": len(store.manifest),
    }
    return counts, by_position


def run_summary(
    split_dirs: dict[str, str | Path], normaliser_path: str | Path, table_path: str | Path,
    by_position_path: str | Path, figure_path: str | Path,
) -> pd.DataFrame:
    """Stage entry point: activation summary table, per-position norm table and figure."""
    from featint import plots
    from featint.tables import ACTIVATION_SUMMARY, NORM_BY_POSITION, write_table

    normaliser = Normaliser.load(normaliser_path)
    summaries, positions = [], []
    for directory in split_dirs.values():
        store = ActivationStore(directory)
        if store.meta.hook_name != normaliser.hook_name:
            raise ShardError(f"{directory} was extracted at {store.meta.hook_name}, the normaliser at "
                             f"{normaliser.hook_name}; rerun the workflow from extraction.")
        counts, by_position = summarise_split(store, normaliser)
        summaries.append(counts)
        positions.append(by_position)
    summary = pd.DataFrame(summaries)
    by_pos = pd.concat(positions, ignore_index=True)
    write_table(summary, table_path, ACTIVATION_SUMMARY, metadata={"normaliser": normaliser.kind})
    write_table(by_pos, by_position_path, NORM_BY_POSITION)
    plots.norm_by_position(by_pos, figure_path)
    return summary
