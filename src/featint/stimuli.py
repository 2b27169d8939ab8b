"""Stimuli of the 2x2 factorial experiment: sentences (formality x emotion, select / test), neutral prompts and
the four word sets, read from a versioned directory (``config/stimuli/``) and checked before any model runs.

Word -> token rule: the **first token of " word"** (leading space: the word as it would follow a prompt).
Words that split into several tokens are reported (``n_tokens`` > 1); a word the tokenizer cannot encode
losslessly is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featint.errors import FeatintError

FORMALITY = ("formal", "informal")
EMOTION = ("emotional", "neutral")
WORD_FORMALITY = ("formal", "casual")
STIMULUS_SPLITS = ("select", "test")
SENTENCES, PROMPTS, WORD_SETS = "sentences.tsv", "prompts.tsv", "word_sets.tsv"


class StimulusError(FeatintError):
    """A stimulus file is missing, malformed, unbalanced or not length-matched."""


@dataclass
class Stimuli:
    sentences: pd.DataFrame  # sentence_id, text, formality, emotion, split, cell
    prompts: list[str]
    words: pd.DataFrame  # word, formality, emotion, word_id
    directory: Path


def _read_tsv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise StimulusError(f"stimulus file {path} does not exist; set interventions.stimuli to a directory "
                            f"holding {SENTENCES}, {PROMPTS} and {WORD_SETS} (see config/stimuli/README.md).")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StimulusError(f"{path} lacks column(s) {missing}; expected a TSV with header {columns}.")
    frame = frame[columns].apply(lambda col: col.str.strip())
    empty = frame[(frame == "").any(axis=1)]
    if len(empty):
        raise StimulusError(f"{path} has empty fields on data line(s) {[int(i) + 2 for i in empty.index[:5]]}.")
    return frame


def _check_values(frame: pd.DataFrame, column: str, allowed: tuple[str, ...], path: Path) -> None:
    bad = sorted(set(frame[column]) - set(allowed))
    if bad:
        raise StimulusError(f"{path}: column '{column}' has value(s) {bad}; allowed: {list(allowed)}.")


def load_stimuli(directory: str | Path, min_sentences_per_cell: int = 1, min_prompts: int = 1,
                 min_words_per_set: int = 1) -> Stimuli:
    """Read and validate the stimulus directory; every cell x split and every word set must be populated."""
    directory = Path(directory)
    sentences = _read_tsv(directory / SENTENCES, ["text", "formality", "emotion", "split"])
    _check_values(sentences, "formality", FORMALITY, directory / SENTENCES)
    _check_values(sentences, "emotion", EMOTION, directory / SENTENCES)
    _check_values(sentences, "split", STIMULUS_SPLITS, directory / SENTENCES)
    counts = sentences.groupby(["formality", "emotion"]).size()
    for formality in FORMALITY:
        for emotion in EMOTION:
            n = int(counts.get((formality, emotion), 0))
            if n < min_sentences_per_cell:
                raise StimulusError(
                    f"{directory / SENTENCES}: cell {formality} x {emotion} has {n} sentence(s), fewer than "
                    f"interventions.min_sentences_per_cell = {min_sentences_per_cell}; add sentences to that cell.")
            for split in STIMULUS_SPLITS:
                rows = sentences[(sentences["formality"] == formality) & (sentences["emotion"] == emotion)
                                 & (sentences["split"] == split)]
                if rows.empty:
                    raise StimulusError(f"{directory / SENTENCES}: cell {formality} x {emotion} has no '{split}' "
                                        "sentence; selection and testing need both splits in every cell.")
    duplicated = sentences[sentences["text"].duplicated()]
    if len(duplicated):
        raise StimulusError(f"{directory / SENTENCES}: duplicated sentence(s): {list(duplicated['text'][:3])}.")
    sentences = sentences.reset_index(drop=True)
    sentences.insert(0, "sentence_id", np.arange(len(sentences), dtype=np.int32))
    sentences["cell"] = sentences["formality"] + "-" + sentences["emotion"]
    prompts = _read_tsv(directory / PROMPTS, ["prompt"])["prompt"].tolist()
    if len(prompts) < min_prompts:
        raise StimulusError(f"{directory / PROMPTS} has {len(prompts)} prompt(s); at least {min_prompts} needed.")
    words = _read_tsv(directory / WORD_SETS, ["word", "formality", "emotion"])
    _check_values(words, "formality", WORD_FORMALITY, directory / WORD_SETS)
    _check_values(words, "emotion", EMOTION, directory / WORD_SETS)
    sizes = words.groupby(["formality", "emotion"]).size()
    for formality in WORD_FORMALITY:
        for emotion in EMOTION:
            if int(sizes.get((formality, emotion), 0)) < min_words_per_set:
                raise StimulusError(f"{directory / WORD_SETS}: word set {formality} x {emotion} has "
                                    f"{int(sizes.get((formality, emotion), 0))} word(s); at least "
                                    f"{min_words_per_set} needed.")
    words = words.reset_index(drop=True)
    words.insert(0, "word_id", np.arange(len(words), dtype=np.int32))
    return Stimuli(sentences, prompts, words, directory)


def length_report(sentences: pd.DataFrame, tokenizer: Any) -> pd.DataFrame:
    """Mean, sd, min and max tokens (without BOS) per cell and split, and over both splits."""
    n_tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in sentences["text"]]
    frame = sentences.assign(n_tokens=n_tokens)
    by_split = frame.groupby(["cell", "split"])["n_tokens"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    overall = frame.groupby("cell")["n_tokens"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    overall.insert(1, "split", "all")
    return pd.concat([overall, by_split], ignore_index=True).rename(columns={"mean": "mean_tokens",
                                                                             "std": "sd_tokens"})


def check_length_match(report: pd.DataFrame, max_difference: float, where: str | Path) -> float:
    """Largest difference between cell mean token counts (both splits together); above ``max_difference`` is
    an error."""
    means = report[report["split"] == "all"].set_index("cell")["mean_tokens"]
    spread = float(means.max() - means.min())
    if spread > max_difference:
        raise StimulusError(
            f"{where}: cells are not length-matched: mean tokens per cell {means.round(2).to_dict()} differ by "
            f"{spread:.2f} > interventions.max_length_difference = {max_difference}; edit the longer or shorter "
            "cells' sentences.")
    return spread


def word_tokens(words: pd.DataFrame, tokenizer: Any) -> pd.DataFrame:
    """``words`` with the token id read for each word (first token of " word"), its piece and n_tokens."""
    rows = []
    for word in words["word"]:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids or tokenizer.decode(ids) != " " + word:
            raise StimulusError(f"the tokenizer cannot represent the word {word!r} (got {ids}); remove it from "
                                f"{WORD_SETS} or fix its spelling.")
        rows.append({"token_id": int(ids[0]), "piece": tokenizer.decode(ids[:1]), "n_tokens": len(ids)})
    out = pd.concat([words.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    duplicated = out[out["token_id"].duplicated(keep=False)]
    if len(duplicated):
        raise StimulusError(f"words {list(duplicated['word'])} share their first token; their logits cannot be "
                            f"told apart. Replace one of them in {WORD_SETS}.")
    return out
