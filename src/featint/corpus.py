"""Corpus: read documents from a source, strip markup, and split them by document.

The split is a deterministic hash of (salt, document title): a document lands in the same split whatever
else is in the corpus, and no window of a validation or test document is ever used for training.
"""

from __future__ import annotations

import bz2
import glob as globlib
import hashlib
import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

import pandas as pd

from featint.config import SPLITS, CorpusSettings, SplitSettings
from featint.errors import CorpusError, SplitError
from featint.tables import DOCUMENTS, write_table

log = logging.getLogger(__name__)

EMBEDDED_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
EMBEDDED_DUMP_PIP = "gensim==4.4.0"


def embedded_dump_path() -> Path:
    """The English Wikipedia shard shipped in the gensim wheel (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the embedded corpus comes with the gensim wheel, which is not installed; "
            f"run `pip install --no-deps {EMBEDDED_DUMP_PIP}` (the README's install command does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_DUMP
    if not path.is_file():
        raise CorpusError(f"embedded Wikipedia dump {path} is missing; reinstall {EMBEDDED_DUMP_PIP}.")
    return path


# ---------------------------------------------------------------------------------------------------------
# Sources


def _open_maybe_bz2(path: Path) -> IO[bytes]:
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def iter_wikipedia_xml(path: str | Path) -> Iterator[tuple[str, str]]:
    """(title, raw wikitext) of every main-namespace, non-redirect page of a MediaWiki XML dump."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus dump {path} does not exist; set corpus.path to a MediaWiki XML(.bz2) dump.")
    try:
        with _open_maybe_bz2(path) as handle:
            for _, element in ElementTree.iterparse(handle, events=("end",)):
                if _local(element.tag) != "page":
                    continue
                fields = {_local(child.tag): child for child in element}
                namespace = fields.get("ns")
                is_redirect = "redirect" in fields
                revision = fields.get("revision")
                text_el = None
                if revision is not None:
                    text_el = next((c for c in revision if _local(c.tag) == "text"), None)
                title = fields["title"].text if "title" in fields else None
                if (
                    title
                    and not is_redirect
                    and (namespace is None or namespace.text == "0")
                    and text_el is not None
                    and text_el.text
                    and not text_el.text.lstrip().upper().startswith("#REDIRECT")
                ):
                    yield title, text_el.text
                element.clear()
    except (OSError, EOFError, ElementTree.ParseError) as exc:
        raise CorpusError(f"cannot read the dump {path}: {exc}; check that the file is a complete XML dump.") from exc


_BACK_MATTER = {"see also", "references", "external links", "further reading", "notes", "bibliography",
                "sources", "footnotes", "citations", "notes and references"}
_WIKI_TABLE = re.compile(r"^\{\|.*?^\|\}", re.DOTALL | re.MULTILINE)
_MARKUP_LINE = re.compile(r"^(\||!|\{\||\|\}|\[\[|\{\{)")
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_MULTI_NEWLINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t]+")


def clean_wikitext(raw: str) -> str:
    """Plain text of a wikitext page: templates, tags, tables, references and link markup removed."""
    import mwparserfromhell

    # Wiki tables the parser cannot resolve (malformed ones) would survive as markup: drop every table block.
    raw = _WIKI_TABLE.sub("", raw)
    raw = _REF.sub("", _COMMENT.sub("", raw))
    code = mwparserfromhell.parse(raw)
    # Back-matter sections are lists of links and citations, not prose.
    for section in code.get_sections(levels=[2]):
        headings = section.filter_headings(recursive=False)
        if headings and str(headings[0].title).strip().lower() in _BACK_MATTER:
            try:
                code.remove(section)
            except ValueError:
                pass
    # References, tables and galleries are not running prose; remove them with their contents.
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in ("ref", "table", "gallery", "math", "timeline", "imagemap"):
            try:
                code.remove(tag)
            except ValueError:  # already removed with an enclosing node
                pass
    # File/Image/Category links and their captions are not prose.
    for link in code.filter_wikilinks(recursive=False):
        target = str(link.title).strip().lower()
        if target.startswith(("file:", "image:", "category:", "media:")):
            try:
                code.remove(link)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    # The parser leaves a page's rest unparsed after unbalanced markup: sweep what survived.
    previous = None
    while previous != text:
        previous, text = text, _TEMPLATE.sub("", text)
    text = _LINK.sub(lambda m: m.group(2) or m.group(1), text)
    text = _HTML_TAG.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    text = "\n".join(line for line in lines if line not in ("", "thumb") and not _MARKUP_LINE.match(line))
    return _MULTI_NEWLINES.sub("\n\n", text).strip()


def iter_text_files(pattern: str) -> Iterator[tuple[str, str]]:
    paths = sorted(globlib.glob(pattern, recursive=True))
    if not paths:
        raise CorpusError(f"corpus.path glob '{pattern}' matches no file; point it at UTF-8 text files.")
    for path in paths:
        yield path, Path(path).read_text(encoding="utf-8")


_WIKITEXT_HEADING = re.compile(r"^ = [^=].* = $")


def iter_hf_dataset(corpus: CorpusSettings) -> Iterator[tuple[str, str, str]]:
    """(title, text, dataset split) from ``datasets.load_dataset`` (local builders work offline)."""
    import datasets

    hf = corpus.hf
    wanted = list(dict.fromkeys(hf.splits[s] for s in SPLITS if s in hf.splits)) if hf.splits else None
    try:
        loaded = datasets.load_dataset(hf.path, hf.name, data_files=hf.data_files)
    except Exception as exc:
        raise CorpusError(f"cannot load dataset {hf.path!r} ({hf.name!r}): {exc}") from exc
    for split_name in wanted or list(loaded.keys()):
        if split_name not in loaded:
            raise CorpusError(f"dataset {hf.path!r} has no split {split_name!r}; it has {list(loaded.keys())}.")
        column = loaded[split_name][hf.text_column]
        if not hf.wikitext_articles:
            for i, text in enumerate(column):
                yield f"{split_name}/{i}", text, split_name
            continue
        title, lines = None, []
        for line in column:
            if _WIKITEXT_HEADING.match(line.rstrip("\n")):
                if title is not None:
                    yield f"{split_name}/{title}", "".join(lines), split_name
                title, lines = line.strip(" =\n"), []
            else:
                lines.append(line)
        if title is not None:
            yield f"{split_name}/{title}", "".join(lines), split_name


# ---------------------------------------------------------------------------------------------------------
# Split


def split_hash(title: str, salt: str) -> float:
    """A uniform number in [0, 1) from sha256(salt, title)."""
    digest = hashlib.sha256(f"{salt}\x00{title}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(title: str, split: SplitSettings) -> str:
    u = split_hash(title, split.salt)
    edge = 0.0
    for name in SPLITS:
        edge += split.fractions[name]
        if u < edge:
            return name
    return SPLITS[-1]


def build_documents(corpus: CorpusSettings, split: SplitSettings) -> pd.DataFrame:
    """One row per kept document: doc_id, title, text, n_chars, split."""
    rows: list[dict[str, object]] = []
    dataset_split_of: dict[str, str] = {}
    if corpus.source == "wikipedia_xml":
        path = Path(corpus.path) if corpus.path else embedded_dump_path()
        pages = ((t, clean_wikitext(raw), None) for t, raw in iter_wikipedia_xml(path))
    elif corpus.source == "text_files":
        assert corpus.path is not None
        pages = ((t, txt, None) for t, txt in iter_text_files(corpus.path))
    else:
        pages = iter_hf_dataset(corpus)
        dataset_split_of = {ours: theirs for ours, theirs in corpus.hf.splits.items()}
    from_dataset = {theirs: ours for ours, theirs in dataset_split_of.items()}
    seen: set[str] = set()
    dropped_short = 0
    for title, text, dataset_split in pages:
        if corpus.max_documents is not None and len(rows) >= corpus.max_documents:
            break
        text = text.strip()
        if len(text) < corpus.min_chars:
            dropped_short += 1
            continue
        if title in seen:
            raise CorpusError(f"two documents share the title {title!r}; titles must be unique to split by hash.")
        seen.add(title)
        doc_split = from_dataset[dataset_split] if dataset_split in from_dataset else assign_split(title, split)
        rows.append({"doc_id": len(rows), "title": title, "text": text, "n_chars": len(text), "split": doc_split})
    if not rows:
        raise CorpusError(
            f"the corpus ({corpus.source}, path={corpus.path}) yielded no document of at least "
            f"{corpus.min_chars} characters; check corpus.path and corpus.min_chars."
        )
    log.info("kept %d documents, dropped %d shorter than %d chars", len(rows), dropped_short, corpus.min_chars)
    frame = pd.DataFrame(rows)
    frame["doc_id"] = frame["doc_id"].astype("int32")
    frame["n_chars"] = frame["n_chars"].astype("int64")
    return frame


def check_splits(documents: pd.DataFrame) -> None:
    counts = documents["split"].value_counts()
    for name in SPLITS:
        if counts.get(name, 0) == 0:
            raise SplitError(
                f"split '{name}' received no document (of {len(documents)}); use more documents "
                "(corpus.max_documents), other split.fractions, or another split.salt."
            )


def run_corpus(corpus: CorpusSettings, split: SplitSettings, documents_path: str | Path) -> pd.DataFrame:
    """Stage entry point: write ``documents.parquet`` (one row per document, with its split)."""
    documents = build_documents(corpus, split)
    check_splits(documents)
    write_table(
        documents,
        documents_path,
        DOCUMENTS,
        metadata={"source": corpus.source, "path": corpus.path, "salt": split.salt, "fractions": split.fractions},
    )
    return documents
