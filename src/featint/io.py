"""Atomic file output, checksums and Parquet helpers shared by every stage.

A stage never leaves a half-written file under its final name: files are written next to their target and
renamed into place (``os.replace`` is atomic on one filesystem); directories are built under a ``.partial-*``
name and renamed at the end, so a killed job leaves only a ``.partial-*`` leftover that the next run deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"featint"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh ``<target>.partial-<pid>`` directory; it replaces ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = target.parent / f"{target.name}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        yield partial
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected_bytes: int, expected_sha256: str, what: str, fix: str,
                checksum: bool = True) -> None:
    """Raise :class:`~featint.errors.ShardError` naming ``what`` and ``fix`` when the file at ``path`` is missing,
    has another size than its manifest says, or (with ``checksum``) another sha256."""
    from featint.errors import ShardError

    if not path.is_file():
        raise ShardError(f"{what} {path} is missing; {fix}")
    size = path.stat().st_size
    if size != int(expected_bytes):
        raise ShardError(f"{what} {path} is truncated or altered ({size} bytes, manifest says {int(expected_bytes)}); "
                         f"{fix}")
    if checksum and sha256_file(path) != expected_sha256:
        raise ShardError(f"{what} {path} fails its sha256 checksum; {fix}")


class ShardChecks:
    """Verification of a store's shards as they are read: the sha256 the first time a reader opens a file,
    its size every time. A training run reads every train shard once per epoch; hashing them again each epoch
    cost 4% of the default training loop (bench_training), and the only damage it would add to what the first
    hash and the size checks catch is a shard rewritten in place, at the same size, while a run reads it."""

    def __init__(self) -> None:
        self._hashed: set[Path] = set()

    def verify(self, path: Path, expected_bytes: int, expected_sha256: str, what: str, fix: str,
               checksum: bool = True) -> None:
        """:func:`verify_file`, hashing ``path`` only if this reader has not hashed it yet."""
        verify_file(path, expected_bytes, expected_sha256, what, fix, checksum and path not in self._hashed)
        if checksum:
            self._hashed.add(path)


def write_parquet(frame: pd.DataFrame, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``frame`` atomically (zstd-compressed), with optional JSON metadata in the schema."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        existing = dict(table.schema.metadata or {})
        existing[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
        table = table.replace_schema_metadata(existing)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata written by :func:`write_parquet` (empty if none)."""
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
