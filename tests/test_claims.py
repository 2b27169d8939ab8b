"""The claims stage's inputs: exactly the files its rule hands over."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from featint.claims import REQUIRED_TABLES, TABLES, Artefacts, ClaimsError


def _tables(tmp_path: Path, names: tuple[str, ...]) -> dict[str, Path]:
    paths = {}
    for name in names:
        paths[name] = tmp_path / f"{name}.parquet"
        pd.DataFrame({"model": ["standard"], "value": [float(len(name))]}).to_parquet(paths[name])
    return paths


def test_the_claims_read_only_the_tables_handed_over(tmp_path: Path) -> None:
    """A convergence summary left on disk by an earlier config sits where the workflow writes it; not handed
    over, it is not read (the claims used to pick it up whenever it existed)."""
    paths = _tables(tmp_path, REQUIRED_TABLES)
    stale = tmp_path / "convergence" / "summary.parquet"
    stale.parent.mkdir()
    pd.DataFrame({"model": ["joint"], "value": [1.0]}).to_parquet(stale)
    artefacts = Artefacts.load(paths)
    assert artefacts.convergence.empty and artefacts.budget.empty
    assert artefacts.geometry["value"].item() == len("geometry")
    handed = Artefacts.load({**paths, "convergence": stale})
    assert handed.convergence["model"].item() == "joint"
    assert set(TABLES) == {f.name for f in Artefacts.__dataclass_fields__.values()}  # type: ignore[attr-defined]


def test_a_missing_claims_input_is_named_with_its_flag_and_writer(tmp_path: Path) -> None:
    paths = _tables(tmp_path, REQUIRED_TABLES)
    del paths["reconstruction_summary"]
    with pytest.raises(ClaimsError, match="reconstruction_summary table .*--reconstruction-summary"):
        Artefacts.load(paths)
    with pytest.raises(ClaimsError, match=r"budget\.parquet does not exist; run the rule that writes it"):
        Artefacts.load({**_tables(tmp_path, REQUIRED_TABLES), "budget": tmp_path / "budget.parquet"})
    with pytest.raises(ClaimsError, match="unknown claims inputs"):
        Artefacts.load({**_tables(tmp_path, REQUIRED_TABLES), "convergnce": tmp_path / "x.parquet"})
