"""Texts as Lattice-BERT inputs, for fine-tuning and inference: the encoders the classification and
NER runners use in place of BERT's (:class:`bertkit.core.encoding.TextEncoder`,
:class:`bertkit.core.chars.CharEncoder`) when their model is a fine-tuned Lattice-BERT
(:mod:`.heads`), which hands them out (``text_encoder`` / ``char_encoder``).

A text's lattice is built exactly as in pretraining (:mod:`.task`): the text's characters,
normalised as the character tokenizer would see them (:func:`.io.char_normalizer`: whitespace
dropped, a character the vocabulary lacks lower-cased when that form is in it), plus every word
of the model's word vocabulary (``words.txt``, the lexicon) matching a span of them.

* Every character is one unit, whatever it is: a digit or Latin run (``2021``, ``iPhone``) is
  one unit per character, not BERT's WordPiece tokens (pretraining saw them so), and a character
  the vocabulary lacks is ``[UNK]`` (control characters too, which BERT's tokenizer drops).
* ``max_length`` counts *positions*: ``[CLS]``, characters, ``[SEP]``.  Word units lie over
  their characters' positions and come on top, so a window of ``n`` characters is
  ``n + words + 2`` units (attention cost grows with the units, not the characters).
* A text longer than a window is cut into windows of whole characters (as
  :class:`~bertkit.core.encoding.TextEncoder` cuts tokens), each with its own lattice: a word
  across a cut is not a unit of either window (as in pretraining).
* A sentence pair is ``[CLS] a [SEP] b [SEP]`` as in BERT (token types 0 then 1, truncated
  longest-first in characters to fit); each side's lattice is built on its own, so no word
  crosses the middle ``[SEP]``, which enters as a one-position unit of the character vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from ..core.encoding import longest_first
from ..core.errors import BertkitError
from .io import char_normalizer
from .lattice import Lexicon, Unit, build_lattice
from .model import collate_lattices


@dataclass
class LatticeWindow:
    """One model input: its units (characters first, then words) and the token type of each row
    the collator makes of it (``[CLS]``, the units, ``[SEP]``)."""

    units: list[Unit]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.token_type_ids)


class LatticeInputs:
    """What both encoders share: the character normaliser, the lexicon, the two vocabularies."""

    def __init__(self, tokenizer, words: Sequence[str]):
        self.tokenizer = tokenizer
        self.char_vocab = tokenizer.get_vocab()
        self.word_vocab = {word: index for index, word in enumerate(words)}
        self.lexicon = Lexicon(words)
        self.normalize = char_normalizer(tokenizer)

    def char(self, c: str) -> str:
        """One character, normalised (never more than one: offsets must map back)."""
        n = self.normalize(c)
        return n if len(n) == 1 else c

    def lattice(self, chars: str) -> list[Unit]:
        return build_lattice(chars, self.lexicon)

    def collate(self, lattices: Sequence[Sequence[Unit]]) -> dict[str, torch.Tensor]:
        return collate_lattices(lattices, self.char_vocab, self.word_vocab)


class LatticeEncoder(LatticeInputs):
    """:class:`bertkit.core.encoding.TextEncoder`'s interface over lattices (classification)."""

    def __init__(self, tokenizer, words: Sequence[str], max_length: int):
        if max_length < 8:
            raise BertkitError("--max-length must be at least 8")
        super().__init__(tokenizer, words)
        self.max_length = max_length
        self.truncated_pairs = 0

    def encode(self, text: str, text_b: str | None = None) -> list[LatticeWindow]:
        """One window, or several for a single text longer than ``max_length`` characters."""
        a = self.normalize(text)
        if text_b is not None:
            return [self._pair(a, self.normalize(text_b))]
        size = self.max_length - 2
        pieces = [a[i : i + size] for i in range(0, len(a), size)] or [""]
        return [LatticeWindow(units, [0] * (len(units) + 2)) for units in map(self.lattice, pieces)]

    def encode_many(self, texts: list[str]) -> list[list[LatticeWindow]]:
        return [self.encode(text) for text in texts]

    def encode_stream(self, pairs: Iterable[tuple[str, str | None]]) -> Iterator[list[LatticeWindow]]:
        for a, b in pairs:
            yield self.encode(a, b)

    def _pair(self, a: str, b: str) -> LatticeWindow:
        budget = self.max_length - 3
        if len(a) + len(b) > budget:
            self.truncated_pairs += 1
            keep_a, keep_b = longest_first(len(a), len(b), budget)
            a, b = a[:keep_a], b[:keep_b]
        first, offset = self.lattice(a), len(a) + 1
        second = [Unit(u.text, u.start + offset, u.end + offset) for u in self.lattice(b)]
        chars = [u for u in first if u.start == u.end] + [Unit("[SEP]", len(a), len(a))]
        units = chars + [u for u in second if u.start == u.end]
        units += [u for u in first if u.end > u.start] + [u for u in second if u.end > u.start]
        types = [0] + [0 if u.end < offset else 1 for u in units] + [1]
        return LatticeWindow(units, types)

    def pad_batch(self, windows: Sequence[LatticeWindow]) -> dict[str, torch.Tensor]:
        batch = self.collate([w.units for w in windows])
        width = batch["input_ids"].shape[1]
        batch["token_type_ids"] = torch.tensor([w.token_type_ids + [0] * (width - len(w)) for w in windows],
                                               dtype=torch.long).view(len(windows), width)
        return batch


class LatticeCharEncoder(LatticeInputs):
    """:class:`bertkit.core.chars.CharEncoder`'s interface over lattices (NER): a window of a
    text's characters becomes its lattice, and the collated batch has character ``k`` of every
    window at row ``1 + k`` (after ``[CLS]``; the words come after the characters), where BERT's
    batch has it, so that the tagger reads the same rows."""

    def encode(self, text: str, positions: Sequence[int]) -> list[Unit]:
        return self.lattice("".join(self.char(text[p]) for p in positions))

    def batch(self, pieces: Sequence[list[Unit]], labels: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Collated lattices; ``labels`` (per piece, one per character) at the characters' rows,
        -100 elsewhere (``[CLS]``, words, ``[SEP]``, padding: context only)."""
        batch = self.collate(pieces)
        if labels is not None:
            out = torch.full_like(batch["input_ids"], -100)
            for b, row in enumerate(labels):
                out[b, 1 : 1 + len(row)] = torch.tensor(row, dtype=torch.long)
            batch["labels"] = out
        return batch
