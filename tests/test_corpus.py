from __future__ import annotations

import bz2
from pathlib import Path

import pandas as pd
import pytest

from featint.config import Settings
from featint.corpus import (
    assign_split,
    build_documents,
    check_splits,
    clean_wikitext,
    embedded_dump_path,
    iter_wikipedia_xml,
    run_corpus,
)
from featint.errors import CorpusError, SplitError

PAGE = """<page><title>{title}</title><ns>{ns}</ns>{redirect}<revision><text>{text}</text></revision></page>"""


def write_dump(path: Path, pages: list[dict[str, str]]) -> Path:
    body = "".join(
        PAGE.format(title=p["title"], ns=p.get("ns", "0"), redirect=p.get("redirect", ""), text=p["text"])
        for p in pages
    )
    xml = f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{body}</mediawiki>'
    with bz2.open(path, "wt", encoding="utf-8") as handle:
        handle.write(xml)
    return path


def test_clean_wikitext_known_answer() -> None:
    raw = (
        "{{Infobox thing|name=X}}'''Albedo''' is the [[diffuse reflection|fraction]] of light."
        "<ref>Some citation, 2001.</ref> It is measured.\n\n\n\n[[File:Pic.png|thumb|A caption]]\n"
        "== See also ==\n* [[Emissivity]]\n"
    )
    assert clean_wikitext(raw) == "Albedo is the fraction of light. It is measured."


def test_dump_reader_skips_redirects_and_other_namespaces(tmp_path: Path) -> None:
    dump = write_dump(
        tmp_path / "d.xml.bz2",
        [
            {"title": "Kept", "text": "Plain article text."},
            {"title": "Redirected", "text": "#REDIRECT [[Kept]]", "redirect": '<redirect title="Kept"/>'},
            {"title": "Talk:Kept", "ns": "1", "text": "Talk page."},
        ],
    )
    assert [t for t, _ in iter_wikipedia_xml(dump)] == ["Kept"]


def test_missing_dump_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings.from_dict({"corpus": {"path": str(tmp_path / "absent.xml.bz2")}})
    with pytest.raises(CorpusError, match="absent.xml.bz2 does not exist"):
        build_documents(settings.corpus, settings.split)


def test_truncated_dump_is_a_clear_error(tmp_path: Path) -> None:
    dump = write_dump(tmp_path / "d.xml.bz2", [{"title": f"A{i}", "text": "x " * 500} for i in range(50)])
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) // 2])
    settings = Settings.from_dict({"corpus": {"path": str(dump)}})
    with pytest.raises(CorpusError, match="cannot read the dump"):
        build_documents(settings.corpus, settings.split)


def test_empty_corpus_is_a_clear_error(tmp_path: Path) -> None:
    dump = write_dump(tmp_path / "d.xml.bz2", [{"title": "Short", "text": "tiny"}])
    settings = Settings.from_dict({"corpus": {"path": str(dump), "min_chars": 100}})
    with pytest.raises(CorpusError, match="yielded no document"):
        build_documents(settings.corpus, settings.split)


def test_split_is_deterministic_and_stable_under_additions() -> None:
    split = Settings.from_dict({}).split
    titles = [f"Article {i}" for i in range(2000)]
    first = {t: assign_split(t, split) for t in titles}
    assert first == {t: assign_split(t, split) for t in reversed(titles)}
    counts = pd.Series(first).value_counts(normalize=True)
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["test"] - 0.1) < 0.03
    other = Settings.from_dict({"split": {"salt": "another"}}).split
    assert sum(first[t] != assign_split(t, other) for t in titles) > 200


def test_embedded_corpus_documents_and_disjoint_splits(tmp_path: Path) -> None:
    assert embedded_dump_path().is_file()
    settings = Settings.from_dict({"corpus": {"max_documents": 30}})
    documents = run_corpus(settings.corpus, settings.split, tmp_path / "documents.parquet")
    assert len(documents) == 30
    assert documents["title"].is_unique
    assert set(documents["split"]) == {"train", "validation", "test"}
    by_split = documents.groupby("split")["doc_id"].apply(set)
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["validation"])
    assert (documents["n_chars"] >= settings.corpus.min_chars).all()
    assert "[[" not in "".join(documents["text"]) and "{{" not in "".join(documents["text"])
    reread = pd.read_parquet(tmp_path / "documents.parquet")
    pd.testing.assert_frame_equal(reread, documents)


def test_empty_split_is_a_clear_error() -> None:
    documents = pd.DataFrame({"doc_id": [0, 1], "split": ["train", "test"]})
    with pytest.raises(SplitError, match="split 'validation' received no document"):
        check_splits(documents)


def test_text_files_source(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"Document number {i}. " * 20, encoding="utf-8")
    settings = Settings.from_dict({"corpus": {"source": "text_files", "path": str(tmp_path / "*.txt")}})
    documents = build_documents(settings.corpus, settings.split)
    assert len(documents) == 3 and documents["text"].str.startswith("Document number").all()


def test_text_files_glob_without_match(tmp_path: Path) -> None:
    settings = Settings.from_dict({"corpus": {"source": "text_files", "path": str(tmp_path / "*.txt")}})
    with pytest.raises(CorpusError, match="matches no file"):
        build_documents(settings.corpus, settings.split)


def test_hf_dataset_source_offline_with_dataset_splits(tmp_path: Path) -> None:
    """The hf_dataset path (used with wikitext-103 by paper users) on a local `text` dataset, no network."""
    lines = {
        "train": " = Alpha = \n Alpha is a letter of the Greek alphabet , used widely .\n"
        " = = History = = \n It is old .\n = Beta = \n Beta follows alpha in the alphabet .\n",
        "test": " = Gamma = \n Gamma is the third letter .\n",
    }
    files = {}
    for split, text in lines.items():
        path = tmp_path / f"{split}.txt"
        path.write_text(text, encoding="utf-8")
        files[split] = str(path)
    settings = Settings.from_dict(
        {
            "corpus": {
                "source": "hf_dataset",
                "min_chars": 10,
                "hf": {"path": "text", "data_files": files, "wikitext_articles": True,
                       "splits": {"train": "train", "test": "test"}},
            }
        }
    )
    documents = build_documents(settings.corpus, settings.split)
    assert list(documents["title"]) == ["train/Alpha", "train/Beta", "test/Gamma"]
    assert list(documents["split"]) == ["train", "train", "test"]
    assert "History" in documents["text"].iloc[0]
