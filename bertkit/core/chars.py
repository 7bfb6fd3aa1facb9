"""Character-level model inputs, one id per character: what spelling correction and NER share.

Chinese text is read character by character; each non-space character is one token, so a
prediction maps back to its exact offset in the line.  Spaces are not fed to the model but keep
their place.  Lines longer than the model's window are read in half-overlapping windows
(:func:`windows`), each character decided by the window where it is farthest from an edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


class CharVocab:
    """One id per character; spaces are not fed to the model but keep their place in the line."""

    def __init__(self, tokenizer):
        self.vocab = tokenizer.get_vocab()
        self.unk = tokenizer.unk_token_id
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id

    def id(self, ch: str) -> int:
        return self.vocab.get(ch, self.vocab.get(ch.lower(), self.unk))

    def positions(self, text: str) -> list[int]:
        return [i for i, ch in enumerate(text) if not ch.isspace()]


class CharEncoder:
    """Windows of a text's characters as BERT inputs, one id per character: what the NER runner
    feeds its model (a model that builds its inputs otherwise, e.g. a Lattice-BERT tagger, hands
    out its own encoder with this interface: ``char_encoder(tokenizer)``)."""

    def __init__(self, chars: CharVocab):
        self.chars = chars

    def encode(self, text: str, positions: Sequence[int]) -> list[int]:
        """The characters of ``text`` at ``positions`` (non-space) as one model input."""
        return [self.chars.id(text[p]) for p in positions]

    def batch(self, pieces: Sequence[list[int]], labels: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """``[CLS] piece [SEP]`` rows: character ``k`` of a piece at row ``1 + k``; labels there."""
        return pad_ids(pieces, self.chars, labels)


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
    if detect is not None:
        batch["detect_labels"] = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row)
        input_ids[b, : n + 2] = torch.tensor([chars.cls, *row, chars.sep])
        attention[b, : n + 2] = 1
        if labels is not None:
            batch["labels"][b, 1 : n + 1] = torch.tensor(labels[b])
        if detect is not None:
            batch["detect_labels"][b, 1 : n + 1] = torch.tensor(detect[b])
    return batch
