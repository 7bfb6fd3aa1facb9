"""Turning texts into model inputs without silently losing any of them.

A text longer than the model's limit is split into consecutive windows of whole tokens, each
wrapped in [CLS] ... [SEP]; callers decide how to combine the windows (classification averages
their probabilities).  A *pair* that does not fit is truncated longest-first, and the caller is
told how many were, so it can say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, Sequence

import torch

from .errors import BertkitError


@dataclass
class TokenWindow:
    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:  # positions, [CLS] and [SEP] included
        return len(self.input_ids)


class TextEncoder:
    def __init__(self, tokenizer, max_length: int):
        if max_length < 8:
            raise BertkitError("--max-length must be at least 8")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad = tokenizer.pad_token_id
        self.truncated_pairs = 0

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_many(self, texts: list[str]) -> list[list[TokenWindow]]:
        """``encode`` for single texts, tokenizing the whole list in one call (much faster)."""
        return [self._windows(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _windows(self, ids: list[int]) -> list[TokenWindow]:
        size = self.max_length - 2
        chunks = [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]
        return [TokenWindow([self.cls, *c, self.sep], [0] * (len(c) + 2)) for c in chunks]

    def encode(self, text: str, text_b: str | None = None) -> list[TokenWindow]:
        """One window, or several for a single text longer than ``max_length``."""
        a = self.tokens(text)
        return self._windows(a) if text_b is None else self._pair(a, self.tokens(text_b))

    def encode_stream(self, pairs: Iterable[tuple[str, str | None]], chunk: int = 256) -> Iterator[list[TokenWindow]]:
        """``encode`` over a stream of (text, text_b or None), lazily, ``chunk`` at a time: the
        tokenizer's batch call costs a fraction of one call per text (at batch 1 as well)."""
        pairs = iter(pairs)
        while block := list(islice(pairs, chunk)):
            firsts = self.tokenizer([a for a, _ in block], add_special_tokens=False)["input_ids"]
            seconds = [b for _, b in block if b is not None]
            seconds = iter(self.tokenizer(seconds, add_special_tokens=False)["input_ids"] if seconds else [])
            for (_, b), a in zip(block, firsts):
                yield self._windows(a) if b is None else self._pair(a, next(seconds))

    def _pair(self, a: list[int], b: list[int]) -> list[TokenWindow]:
        """A sentence pair in one window, truncated longest-first to fit (and counted)."""
        budget = self.max_length - 3
        if len(a) + len(b) > budget:
            self.truncated_pairs += 1
            keep_a, keep_b = longest_first(len(a), len(b), budget)
            a, b = a[:keep_a], b[:keep_b]
        ids = [self.cls, *a, self.sep, *b, self.sep]
        return [TokenWindow(ids, [0] * (len(a) + 2) + [1] * (len(b) + 1))]

    def pad_batch(self, windows: Sequence[TokenWindow]) -> dict[str, torch.Tensor]:
        width = max(len(w.input_ids) for w in windows)
        ids, types, mask = [], [], []
        for w in windows:  # pad as Python lists, then one tensor each: far cheaper than per-row copies
            pad = width - len(w.input_ids)
            ids.append(w.input_ids + [self.pad] * pad)
            types.append(w.token_type_ids + [0] * pad)
            mask.append([1] * len(w.input_ids) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "token_type_ids": torch.tensor(types),
                "attention_mask": torch.tensor(mask)}


def longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """How much of a pair longest-first truncation keeps: the longer side loses its last item
    until the two fit in ``budget`` (``a`` on a tie), in closed form (the loop is quadratic)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    short = min(len_a, len_b)
    if budget - short >= short:  # the longer side alone is cut, down to what the shorter leaves
        return (budget - len_b, len_b) if len_a >= len_b else (len_a, budget - len_a)
    return budget // 2, budget - budget // 2  # both cut to halves, a the smaller on an odd budget
