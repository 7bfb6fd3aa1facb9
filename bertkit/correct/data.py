"""Spelling-correction data: ``source<TAB>target`` pairs, correct text for synthetic errors,
characters to ids (one id per character), padded batches, and the windows long lines are
corrected in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.errors import BertkitError
from ..core.textio import read_lines
from .confusion import is_chinese


class CharVocab:
    """One id per character; spaces are not fed to the model but keep their place in the line."""

    def __init__(self, tokenizer):
        self.vocab = tokenizer.get_vocab()
        self.unk = tokenizer.unk_token_id
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.chinese_ids = {i: t for t, i in self.vocab.items() if is_chinese(t)}

    def id(self, ch: str) -> int:
        return self.vocab.get(ch, self.vocab.get(ch.lower(), self.unk))

    def positions(self, text: str) -> list[int]:
        return [i for i, ch in enumerate(text) if not ch.isspace()]


@dataclass
class CharWindow:
    line: int  # index of the line in the batch being corrected
    chars: list[int]  # positions in the line
    keep_from: int  # this window decides positions chars[keep_from:keep_to]
    keep_to: int


def windows(n: int, size: int) -> list[tuple[int, int, int, int]]:
    """(start, end, keep_from, keep_to) covering n characters; windows overlap by half, and each
    character is decided by the window where it is farthest from an edge."""
    if n <= size:
        return [(0, n, 0, n)]
    stride = size // 2
    starts = list(range(0, n - size, stride)) + [n - size]
    out = []
    for k, s in enumerate(starts):
        lo = 0 if k == 0 else (s + (starts[k - 1] + size)) // 2 - s
        hi = size if k == len(starts) - 1 else (starts[k + 1] + s + size) // 2 - s
        out.append((s, s + size, lo, hi))
    return out


def pad_ids(rows: Sequence[list[int]], chars: CharVocab, labels: Sequence[list[int]] | None = None,
            detect: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """[CLS] ids [SEP], right-padded; labels are -100 and detection targets 0 off the characters."""
    width = max(len(r) for r in rows) + 2
    input_ids = torch.full((len(rows), width), chars.pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if labels is not None:
        batch["labels"] = torch.full((len(rows), width), -100, dtype=torch.long)
        batch["detect_labels"] = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row)
        input_ids[b, : n + 2] = torch.tensor([chars.cls, *row, chars.sep])
        attention[b, : n + 2] = 1
        if labels is not None:
            batch["labels"][b, 1 : n + 1] = torch.tensor(labels[b])
            batch["detect_labels"][b, 1 : n + 1] = torch.tensor(detect[b])
    return batch


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
