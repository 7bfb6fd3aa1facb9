"""Word lattices for Lattice-BERT (Lai et al., "Lattice-BERT: Leveraging Multi-Granularity
Representations in Chinese Pre-trained Language Models", NAACL 2021, section 3).

A sentence's lattice holds every character plus every lexicon word that matches a span of it
(the paper's Figure 1: 研究生活很充实 gives 研究, 研究生, 生活, 充实 besides the seven characters).
A unit spans characters ``start..end`` (inclusive). Between two units there is a positional
relation and four relative distances, the inputs of the paper's lattice position attention;
masked segment prediction masks whole *segments*, the maximal spans that no word crosses, so
that no overlapping unit left visible gives the answer away.

Where we deviate from the paper, as far as we know it:

* Relations: six (:class:`Relation`); one symmetric OVERLAP where the paper tells left and
  right overlap apart. The direction is still in the distance matrices.
* Distances: the four start/end distances of FLAT (Li et al., ACL 2020), which the paper builds
  on; how the model embeds them is left to the model code.
* Lexicon: any word list (jieba's dictionary by default, :func:`top_words` to keep the words a
  corpus uses most) in place of the paper's own corpus-built vocabulary.
* Segment choice: segments are drawn at random until about ``rate`` of the characters are
  covered (whole-word-masking style); replacing the masked units (80/10/10 or otherwise) is not
  done here.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from bertkit.core.errors import BertkitError
from bertkit.core.files import atomic_file


class Lexicon:
    """A set of words of two or more characters (single characters are units anyway).

    Shorter words given to it are dropped; a word with whitespace in it is refused, since it
    could not be written one word a line. ``max_len`` is the longest word's length (0 if none).
    """

    def __init__(self, words: Iterable[str] = ()):
        kept = frozenset(w for w in words if len(w) >= 2)
        for word in kept:
            if any(c.isspace() for c in word):
                raise BertkitError(f"lexicon word {word!r} contains whitespace")
        self.words = kept
        self.max_len = max(map(len, kept), default=0)

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Lexicon:
        return cls(words)

    @classmethod
    def from_file(cls, path: str | Path) -> Lexicon:
        """One word a line, optionally followed by whitespace and anything (jieba's ``word freq
        tag``); blank lines are skipped. Raises BertkitError for an unreadable file, a line that
        starts with whitespace (no word before its first field) or a file with no words."""
        try:
            with open(path, encoding="utf-8-sig") as fh:
                words = list(_read_words(fh, path))
        except OSError as e:
            raise BertkitError(f"cannot read lexicon {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise BertkitError(f"lexicon {path} is not UTF-8 text") from None
        lexicon = cls(words)
        if not lexicon.words:
            raise BertkitError(f"lexicon {path} has no words of two or more characters")
        return lexicon

    @classmethod
    def jieba(cls) -> Lexicon:
        """jieba's own dictionary (its ``dict.txt``), read directly: jieba's tokenizer is not built."""
        try:
            import jieba
        except ImportError:
            raise BertkitError("Lexicon.jieba() needs the jieba package: pip install jieba") from None
        return cls.from_file(Path(jieba.__file__).parent / "dict.txt")

    def save(self, path: str | Path) -> None:
        """Write the words one a line, sorted, atomically (temporary file, then rename)."""
        with atomic_file(path) as fh:
            fh.writelines(f"{word}\n" for word in sorted(self.words))

    def __contains__(self, word: object) -> bool:
        return word in self.words

    def __len__(self) -> int:
        return len(self.words)

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lexicon) and self.words == other.words

    def __hash__(self) -> int:
        return hash(self.words)

    def __repr__(self) -> str:
        return f"Lexicon({len(self)} words, max_len={self.max_len})"


def _read_words(lines: Iterable[str], path: str | Path) -> Iterator[str]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line[0].isspace():
            raise BertkitError(f"{path}:{lineno}: a lexicon line without a word")
        yield line.split(maxsplit=1)[0]


@dataclass(frozen=True)
class Unit:
    """A character or a word of a lattice: its text and the characters ``start..end`` (inclusive)."""

    text: str
    start: int
    end: int


def build_lattice(text: str, lexicon: Lexicon) -> list[Unit]:
    """Every character of ``text`` in order, then every occurrence of a lexicon word, sorted by
    (start, end). Characters first, so that unit ``i < len(text)`` is character ``i``."""
    units = [Unit(char, i, i) for i, char in enumerate(text)]
    words, n = lexicon.words, len(text)
    for start in range(n):
        for stop in range(start + 2, min(start + lexicon.max_len, n) + 1):
            if text[start:stop] in words:
                units.append(Unit(text[start:stop], start, stop - 1))
    return units


def positions(units: Sequence[Unit]) -> tuple[torch.Tensor, torch.Tensor]:
    """The units' starts and ends as two LongTensors [n]."""
    starts = torch.tensor([u.start for u in units], dtype=torch.long)
    ends = torch.tensor([u.end for u in units], dtype=torch.long)
    return starts, ends


class Relation(IntEnum):
    """How unit ``b`` lies relative to unit ``a``: see :func:`relation`."""

    IDENTICAL = 0
    PRECEDE = 1
    SUCCEED = 2
    CONTAIN = 3
    CONTAINED = 4
    OVERLAP = 5


def relation(a: Unit, b: Unit) -> Relation:
    """The relation of ``a`` to ``b``, by their spans (texts are not looked at):

    * IDENTICAL: the same span (a.start == b.start and a.end == b.end);
    * PRECEDE: a ends before b starts (a.end < b.start); SUCCEED: b.end < a.start;
    * CONTAIN: a covers b (a.start <= b.start and b.end <= a.end) and the spans differ;
      CONTAINED: b contains a;
    * OVERLAP: they share characters but neither contains the other (symmetric).
    """
    if (a.start, a.end) == (b.start, b.end):
        return Relation.IDENTICAL
    if a.end < b.start:
        return Relation.PRECEDE
    if b.end < a.start:
        return Relation.SUCCEED
    if a.start <= b.start and b.end <= a.end:
        return Relation.CONTAIN
    if b.start <= a.start and a.end <= b.end:
        return Relation.CONTAINED
    return Relation.OVERLAP


def relation_matrix(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = relation(unit i, unit j)`` for starts and ends [..., n]: LongTensor [..., n, n]."""
    sa, ea = starts.unsqueeze(-1), ends.unsqueeze(-1)  # a: unit i (rows)
    sb, eb = starts.unsqueeze(-2), ends.unsqueeze(-2)  # b: unit j (columns)
    contain = (sa <= sb) & (eb <= ea)
    contained = (sb <= sa) & (ea <= eb)
    out = torch.full(contain.shape, int(Relation.OVERLAP), dtype=torch.long, device=starts.device)
    out[contained] = Relation.CONTAINED
    out[contain] = Relation.CONTAIN
    out[contain & contained] = Relation.IDENTICAL
    out[ea < sb] = Relation.PRECEDE
    out[eb < sa] = Relation.SUCCEED
    return out


def distance_matrices(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The four relative distances between units, LongTensor [..., 4, n, n], b minus a.

    ``a`` is unit i (row), ``b`` unit j (column); in each name the first position is a's, the
    second b's, and the value is b's position minus a's (positive: b's lies to the right):
    0 start-start ``b.start - a.start``, 1 start-end ``b.end - a.start``,
    2 end-start ``b.start - a.end``, 3 end-end ``b.end - a.end``.
    So a precedes b iff end-start > 0, and succeeds it iff start-end < 0.
    """
    sa, ea = starts.unsqueeze(-1), ends.unsqueeze(-1)
    sb, eb = starts.unsqueeze(-2), ends.unsqueeze(-2)
    return torch.stack([sb - sa, eb - sa, sb - ea, eb - ea], dim=-3)


def segments(text_len: int, units: Iterable[Unit]) -> list[tuple[int, int]]:
    """The maximal spans ``(start, end)`` (inclusive) that no unit crosses, covering characters
    ``0..text_len-1`` in order: characters i and i+1 are split iff no unit covers both."""
    joined = [False] * max(text_len - 1, 0)  # joined[i]: some unit covers both i and i + 1
    for u in units:
        if not 0 <= u.start <= u.end < text_len:
            raise ValueError(f"unit {u} lies outside a text of {text_len} characters")
        for i in range(u.start, u.end):
            joined[i] = True
    spans, start = [], 0
    for i in range(text_len):
        if i == text_len - 1 or not joined[i]:
            spans.append((start, i))
            start = i + 1
    return spans


def mask_segments(units: Sequence[Unit], segs: Sequence[tuple[int, int]], chosen: set[int]) -> list[bool]:
    """Per unit, whether it is masked: iff it lies inside a chosen segment (an index into segs).

    Raises ValueError for a unit that crosses a segment boundary (segs not made from units).
    """
    segment_of = {}
    for index, (start, end) in enumerate(segs):
        segment_of.update((i, index) for i in range(start, end + 1))
    masked = []
    for u in units:
        index = segment_of.get(u.start)
        if index is None or segment_of.get(u.end) != index:
            raise ValueError(f"unit {u} is not inside one segment: segments not made from these units")
        masked.append(index in chosen)
    return masked


def choose_segments(segs: Sequence[tuple[int, int]], rate: float = 0.15, *, generator: random.Random) -> set[int]:
    """Segment indices drawn at random until about ``rate`` of the characters are covered.

    Segments are tried in a random order and one that would take the count past
    ``round(rate * characters)`` (at least 1) is skipped, except the first, so that at least one
    segment is chosen whenever rate > 0 and there are segments.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], not {rate}")
    if rate == 0 or not segs:
        return set()
    total = sum(end - start + 1 for start, end in segs)
    budget = max(1, round(rate * total))
    order = list(range(len(segs)))
    generator.shuffle(order)
    chosen, covered = set(), 0
    for index in order:
        start, end = segs[index]
        if chosen and covered + (end - start + 1) > budget:
            continue
        chosen.add(index)
        covered += end - start + 1
        if covered >= budget:
            break
    return chosen


def word_counts(texts: Iterable[str], lexicon: Lexicon) -> Counter:
    """How often each lexicon word occurs in the lattices of ``texts`` (every match counts)."""
    counts = Counter()
    for text in texts:
        counts.update(u.text for u in build_lattice(text, lexicon) if u.end > u.start)
    return counts


def top_words(counter: Counter, k: int) -> Lexicon:
    """The ``k`` most used words (of two or more characters) of ``counter`` as a Lexicon; ties go
    to the smaller word, so the result does not depend on the counter's order."""
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    ranked = sorted((w for w, c in counter.items() if c > 0 and len(w) >= 2), key=lambda w: (-counter[w], w))
    return Lexicon(ranked[:k])
