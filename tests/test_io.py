from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from featint import io
from featint.errors import ShardError
from featint.io import ShardChecks, atomic_directory, atomic_path, read_parquet_metadata, sha256_file, write_parquet


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_and_cleans_stale_partials(tmp_path: Path) -> None:
    target = tmp_path / "train"
    stale = tmp_path / "train.partial-999"
    stale.mkdir()
    (stale / "shard-00000.safetensors").write_text("left by a killed run")
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]  # the complete old output is untouched


def test_parquet_metadata_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1, 2]})
    write_parquet(frame, tmp_path / "t.parquet", metadata={"hook": "blocks.15.hook_resid_pre", "n": 2})
    assert read_parquet_metadata(tmp_path / "t.parquet") == {"hook": "blocks.15.hook_resid_pre", "n": 2}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)


def test_shard_checks_hash_a_file_once_per_reader_and_check_its_size_every_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = tmp_path / "shard.bin"
    shard.write_bytes(bytes(range(256)) * 64)
    size, digest = shard.stat().st_size, sha256_file(shard)
    hashed: list[Path] = []
    monkeypatch.setattr(io, "sha256_file", lambda path: hashed.append(path) or digest)
    checks = ShardChecks()
    for _ in range(3):  # three epochs: one hash
        checks.verify(shard, size, digest, "shard", "fix it")
    assert hashed == [shard]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ShardError, match="is truncated"):  # the size is checked on every read
        checks.verify(shard, size, digest, "shard", "fix it")
    monkeypatch.undo()
    data = bytearray(bytes(range(256)) * 64)
    data[5] ^= 0xFF  # same size, one flipped byte: a new reader hashes it and stops
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="fails its sha256 checksum; fix it"):
        ShardChecks().verify(shard, size, digest, "shard", "fix it")
    failing = ShardChecks()  # a failed check is not remembered as hashed
    for _ in range(2):
        with pytest.raises(ShardError, match="fails its sha256"):
            failing.verify(shard, size, digest, "shard", "fix it")
