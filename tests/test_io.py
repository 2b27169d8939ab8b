from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from featint.io import atomic_directory, atomic_path, read_parquet_metadata, write_parquet


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
