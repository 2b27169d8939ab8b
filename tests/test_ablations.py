"""The ablation table: checked columns and kinds, typed instances, overrides validated again."""

from __future__ import annotations

from pathlib import Path

import pytest

from featint.ablations import parse_instance, read_table, settings_for
from featint.config import Settings
from featint.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_tables_read_and_instances_override_the_settings() -> None:
    for name in ("ablations.tsv", "ablations_tiny.tsv"):
        assert len(read_table(REPO / "config" / name)) >= 3
    row = read_table(REPO / "config" / "ablations.tsv").iloc[-1].to_dict()
    instance = parse_instance(row)
    assert instance["kind"] == "sequential_truncated" and instance["auxk"] is True and instance["truncated_k"] == 46
    settings = settings_for(Settings.from_dict({}), instance)
    assert settings.nfm.truncated_k == 46 and settings.sae.k == 92 and settings.sae.auxk.enabled
    off = settings_for(Settings.from_dict({}), parse_instance({**row, "auxk": "False", "decoder": "unit"}))
    assert not off.sae.auxk.enabled and off.sae.decoder_norm == "unit"


def test_bad_tables_and_instances_are_named(tmp_path: Path) -> None:
    header = "kind\tseed\tk\twidth\tembed\tdecoder\tauxk\ttruncated_k\n"
    (tmp_path / "columns.tsv").write_text(header.replace("embed", "embedding") + "joint\t0\t8\t64\t4\tfree\tTrue\t2\n")
    with pytest.raises(ConfigError, match="columns must be"):
        read_table(tmp_path / "columns.tsv")
    (tmp_path / "kind.tsv").write_text(header + "jont\t0\t8\t64\t4\tfree\tTrue\t2\n")
    with pytest.raises(ConfigError, match="unknown kind"):
        read_table(tmp_path / "kind.tsv")
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(tmp_path / "missing.tsv")
    too_large = {"kind": "joint", "seed": "0", "k": "100", "width": "64", "embed": "4", "decoder": "free",
                 "auxk": "True", "truncated_k": "2"}
    with pytest.raises(ConfigError, match="exceeds sae.n_features"):
        settings_for(Settings.from_dict({}), parse_instance(too_large))
