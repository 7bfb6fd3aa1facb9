"""Spelling-correction data: ``source<TAB>target`` pairs, correct text for synthetic errors,
characters to ids (one id per character), padded batches, and the windows long lines are
corrected in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core import chars
from ..core.chars import CharWindow, pad_ids, windows  # noqa: F401 (shared with NER, imported from here too)
from ..core.errors import BertkitError
from ..core.textio import read_lines
from .confusion import is_chinese


class CharVocab(chars.CharVocab):
    """One id per character, and the ids of the Chinese characters: all a correction may write."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.chinese_ids = {i: t for t, i in self.vocab.items() if is_chinese(t)}


@dataclass
class Pair:
    source: str | None  # None: a correct sentence to corrupt afresh at every epoch
    target: str
    lineno: int = 0


def read_correction_pairs(path: str) -> list[Pair]:
    """``source<TAB>target`` lines (SIGHAN style, substitutions only); an optional header is skipped."""
    pairs = []
    for lineno, line in read_lines(path):
        if lineno == 1 and line.strip().lower() == "source\ttarget":
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise BertkitError(f"{path}:{lineno}: expected source<TAB>target, found {len(cells)} column(s)")
        src, tgt = cells
        if len(src) != len(tgt):
            raise BertkitError(f"{path}:{lineno}: source and target differ in length ({len(src)} vs {len(tgt)}); "
                               "spelling pairs must be character-for-character substitutions")
        if src.strip():
            pairs.append(Pair(src, tgt, lineno))
    if not pairs:
        raise BertkitError(f"{path} has no sentence pairs")
    return pairs


SENTENCE_END = "。！？!?；;"


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Cut a long line at sentence ends into pieces of at most ``max_chars`` characters."""
    pieces, current = [], ""
    for ch in text:
        current += ch
        if ch in SENTENCE_END or len(current) >= max_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if sum(map(is_chinese, p)) >= 4]


def read_synthetic(paths: Sequence[str], max_chars: int) -> list[Pair]:
    """Correct sentences from plain text files, to be corrupted on the fly."""
    out = []
    for path in paths:
        for lineno, line in read_lines(path):
            out.extend(Pair(None, s, lineno) for s in split_sentences(line, max_chars))
    return out


def chunks(pair: Pair, max_chars: int) -> list[Pair]:
    if len(pair.target) <= max_chars:
        return [pair]
    return [Pair(None if pair.source is None else pair.source[i : i + max_chars], pair.target[i : i + max_chars],
                 pair.lineno) for i in range(0, len(pair.target), max_chars)]


@dataclass
class CorruptionOptions:
    rate: float = 0.15
    phonetic: float = 0.8
    visual: float = 0.0
    random_share: float = 0.2
    confusion_dir: str | None = None


def error_rate(train: Sequence[Pair], corrupt_rate: float) -> float:
    """Share of the training characters that are wrong: counted in the pairs, expected in the
    synthetic sentences (``corrupt_rate`` of their Chinese characters)."""
    wrong = chars = 0.0
    for pair in train:
        chars += len(pair.target)
        if pair.source is None:
            wrong += corrupt_rate * sum(map(is_chinese, pair.target))
        else:
            wrong += sum(a != b for a, b in zip(pair.source, pair.target))
    return wrong / max(chars, 1.0)
