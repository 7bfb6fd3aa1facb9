"""Pretraining data: corpus lines segmented by jieba (word starts for whole-word masking), packed
into sequences, vocabulary pruning over them, and whole-word masking into batches."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import jieba
import torch

from ..core.errors import BertkitError
from ..core.textio import read_texts
from ..core.vocab import SPECIAL_TOKENS, prune_vocab, remap

jieba.setLogLevel(60)  # jieba logs its dictionary loading on stderr at INFO


@dataclass
class PackedSequence:
    ids: list[int]
    word_start: list[bool]


def segment_line(line: str, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of ``line`` and, for each, whether it starts a jieba word."""
    starts, pos = set(), 0
    for word in jieba.cut(line):
        starts.add(pos)
        pos += len(word)
    enc = tokenizer(line, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    flags = [begin in starts or (begin, end) == (0, 0) for begin, end in enc["offset_mapping"]]
    return ids, flags


def pack(lines: Iterable[tuple[list[int], list[bool]]], max_tokens: int) -> list[PackedSequence]:
    """Concatenate consecutive lines into sequences of at most ``max_tokens`` tokens."""
    out, ids, flags = [], [], []
    for line_ids, line_flags in lines:
        while line_ids:
            room = max_tokens - len(ids)
            take = line_ids[:room] if len(line_ids) > room and ids else line_ids[:max_tokens]
            ids += take
            flags += line_flags[: len(take)]
            line_ids, line_flags = line_ids[len(take) :], line_flags[len(take) :]
            if line_flags:
                line_flags = [True] + line_flags[1:]  # a cut word starts afresh
            if len(ids) >= max_tokens or line_ids:
                out.append(PackedSequence(ids, flags))
                ids, flags = [], []
    if ids:
        out.append(PackedSequence(ids, flags))
    return out


def read_corpus(paths: Sequence[str], tokenizer, max_length: int) -> list[PackedSequence]:
    lines = []
    for path in paths:
        for text in read_texts(path):
            text = text.strip()
            if text:
                lines.append(segment_line(text, tokenizer))
    if not lines:
        raise BertkitError("the pretraining corpus has no text")
    return pack(lines, max_length - 2)


def prune_corpus_vocab(sequences: list[PackedSequence], tokenizer):
    """Prune the vocabulary to the tokens of ``sequences`` and remap them in place.

    Returns (new tokenizer, kept old ids in new order)."""
    new_tokenizer, keep = prune_vocab((s.ids for s in sequences), tokenizer)
    unk = tokenizer.get_vocab()["[UNK]"]
    for s in sequences:
        s.ids = remap(s.ids, keep, unk)
    return new_tokenizer, keep


# ---------------------------------------------------------------- masking


class WholeWordMasker:
    """Chooses whole words up to ``rate`` of the tokens; 80% [MASK], 10% random, 10% unchanged."""

    def __init__(self, tokenizer, rate: float = 0.15):
        self.rate = rate
        self.mask_id = tokenizer.convert_tokens_to_ids("[MASK]")
        special = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.random_ids = [i for i in range(len(tokenizer)) if i not in special]

    def __call__(self, seq: PackedSequence, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
        """(input ids with masks, positions chosen, original ids at those positions)."""
        words, current = [], []
        for i, start in enumerate(seq.word_start):
            if start and current:
                words.append(current)
                current = []
            current.append(i)
        if current:
            words.append(current)
        rng.shuffle(words)
        budget = max(1, round(len(seq.ids) * self.rate))
        chosen: list[int] = []
        for word in words:
            if len(chosen) >= budget:
                break
            if len(chosen) + len(word) > budget:
                continue
            chosen.extend(word)
        if not chosen:  # every word is longer than the budget: mask part of one
            chosen = words[0][:budget]
        chosen.sort()
        ids = list(seq.ids)
        for pos in chosen:
            r = rng.random()
            if r < 0.8:
                ids[pos] = self.mask_id
            elif r < 0.9:
                ids[pos] = rng.choice(self.random_ids)
        return ids, chosen, [seq.ids[p] for p in chosen]


def collate_mlm(examples: Sequence[PackedSequence], masker: WholeWordMasker, tokenizer, generator: torch.Generator):
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    cls, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    width = max(len(s.ids) for s in examples) + 2
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    positions, labels = [], []
    for row, seq in enumerate(examples):
        ids, chosen, originals = masker(seq, rng)
        input_ids[row, : len(ids) + 2] = torch.tensor([cls, *ids, sep])
        attention[row, : len(ids) + 2] = 1
        positions += [row * width + p + 1 for p in chosen]
        labels += originals
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mlm_positions": torch.tensor(positions, dtype=torch.long),
        "mlm_labels": torch.tensor(labels, dtype=torch.long),
    }
