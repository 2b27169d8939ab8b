"""The declared tables: a table that strays from its declaration stops with the table, file and column named."""

from __future__ import annotations

import pandas as pd
import pytest

from featint.tables import PARAMETERS, RECONSTRUCTION, TableError, read_table, write_table


def _reconstruction() -> pd.DataFrame:
    return pd.DataFrame({"run": "tiny", "model": ["standard", "joint"], "seed": [0, 0], "split": "test",
                         "token_set": "selected", "component": ["sae", "full"], "metric": "fvu",
                         "reference": [None, None], "value": [0.25, 0.2]})


def test_a_table_that_matches_its_declaration_is_written_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "reconstruction.parquet"
    write_table(_reconstruction(), path, RECONSTRUCTION)
    back = read_table(path, RECONSTRUCTION)
    assert back["value"].tolist() == [0.25, 0.2] and back["reference"].isna().all()
    swept = _reconstruction().assign(ablation_k=4)
    RECONSTRUCTION.validate(swept, "sweep.parquet", extra=("ablation_k",))  # a sweep's declared key columns


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="metric"), r"missing \['metric'\]"),
    (lambda f: f.assign(ratio=1.0), r"undeclared \['ratio'\]"),
    (lambda f: f.assign(component=["sae", "full+interaction"]), r"'component' holds \['full\+interaction'\]"),
    (lambda f: f.assign(model=["standard", "jont"]), r"'model' holds \['jont'\]"),
    (lambda f: f.assign(seed=["0", "1"]), r"'seed' is .*declared int"),
    (lambda f: f.assign(run=[None, "tiny"]), r"'run' has 1 missing values"),
    (lambda f: f.assign(value=["a", "b"]), r"'value' is .*declared float"),
])
def test_a_table_off_its_declaration_names_the_table_file_and_column(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TableError, match=r"the reconstruction table out/r\.parquet.*" + message):
        RECONSTRUCTION.validate(change(_reconstruction()), "out/r.parquet")


def test_nullable_integers_and_object_columns_of_ints_are_ints() -> None:
    frame = pd.DataFrame({"model": "joint", "seed": pd.array([0, None], dtype="Int32"), "component": "total",
                          "parameters": pd.Series([10, 20], dtype=object), "share": [1.0, 1.0], "trainable": [3, 3]})
    with pytest.raises(TableError, match="'seed' has 1 missing values"):
        PARAMETERS.validate(frame, "p.parquet")
    PARAMETERS.validate(frame.assign(seed=pd.array([0, 1], dtype="Int32")), "p.parquet")


def test_every_results_table_is_written_through_its_declaration() -> None:
    """Only a store's own index files (an activation store's tokens and manifest, a code cache's manifest) and
    the plan printout are written without a declaration; every table a rule leaves in results/ goes through
    :func:`featint.tables.write_table`."""
    import re
    from pathlib import Path

    import featint

    allowed = {"activations.py": 4, "codes.py": 1, "cli.py": 1}  # store / cache index files, `featint plan --out`
    package = Path(featint.__file__).parent
    found = {}
    for path in package.rglob("*.py"):
        if path.name in ("io.py", "tables.py"):
            continue
        calls = len(re.findall(r"\bwrite_parquet\(", path.read_text()))
        if calls:
            found[str(path.relative_to(package))] = calls
    assert found == allowed
