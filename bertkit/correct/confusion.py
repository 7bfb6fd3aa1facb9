"""Character confusion sets and synthetic spelling errors for Chinese spelling correction.

Soft-Masked BERT (Zhang et al., ACL 2020, section 4.1) pretrains on sentences in which 15% of
the characters are replaced, 80% of them by a homophone and 20% by a random character.  We do
the same, drawn afresh for every epoch (like dynamic masking), and add the visual confusion the
issue asks for as a third, optional share (``visual``, 0 by default, as in the paper).

Phonetic confusion comes from two sources, merged:
- pypinyin over the model's own vocabulary: characters with the same toneless pinyin, and with
  a *similar* pinyin (the usual fuzzy pairs z/zh, c/ch, s/sh, n/l, an/ang, en/eng, in/ing);
- the curated sets in ``../shared/data/csc/confusion`` (pycorrector's same_pinyin.txt and the
  SIGHAN Bake-off 2013 pronunciation set).
Visual confusion: same_stroke.txt and the Bake-off 2013 shape set.  Every candidate must be a
single Chinese character of the model's vocabulary, or the model could never predict it back.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..core.errors import BertkitError
from ..core.modelio import shared_data
from ..core.progress import log

SHARED_CONFUSION = shared_data() / "csc" / "confusion"

_FUZZY_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"))
_FUZZY_FINALS = (("ang", "an"), ("eng", "en"), ("ing", "in"))


def is_chinese(ch: str) -> bool:
    """A CJK unified ideograph (the base block and extension A): the only characters we correct."""
    if len(ch) != 1:
        return False
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF


def fuzzy_pinyin(syllable: str) -> str:
    """Collapse the distinctions speakers often blur, so similar syllables share a key."""
    for long, short in _FUZZY_INITIALS:
        if syllable.startswith(long):
            syllable = short + syllable[len(long):]
            break
    for long, short in _FUZZY_FINALS:
        if syllable.endswith(long):
            syllable = syllable[: -len(long)] + short
            break
    return syllable


@dataclass
class ConfusionSets:
    homophone: dict[str, list[str]] = field(default_factory=dict)  # same pinyin, any tone
    similar_sound: dict[str, list[str]] = field(default_factory=dict)  # fuzzy pinyin
    visual: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, charset: Iterable[str], confusion_dir: Path | None = SHARED_CONFUSION) -> "ConfusionSets":
        chars = {c for c in charset if len(c) == 1 and is_chinese(c)}
        same: dict[str, set[str]] = defaultdict(set)
        similar: dict[str, set[str]] = defaultdict(set)
        visual: dict[str, set[str]] = defaultdict(set)
        _add_pinyin_groups(chars, same, similar)
        if confusion_dir is not None and Path(confusion_dir).is_dir():
            _read_curated(Path(confusion_dir), same, similar, visual)
        elif confusion_dir is not None:
            log(f"warning: no confusion sets in {confusion_dir}; phonetic confusion from pypinyin only, none visual")
        return cls(_restrict(same, chars), _restrict(similar, chars), _restrict(visual, chars))

    def merged(self) -> dict[str, str]:
        """Each character's candidates of every kind, homophones first, as one string."""
        chars = sorted(set(self.homophone) | set(self.similar_sound) | set(self.visual))
        return {c: "".join(dict.fromkeys(self.homophone.get(c, []) + self.similar_sound.get(c, []) + self.visual.get(c, [])))
                for c in chars}


def _add_pinyin_groups(chars: set[str], same: dict[str, set[str]], similar: dict[str, set[str]]) -> None:
    from pypinyin import Style, pinyin

    exact: dict[str, set[str]] = defaultdict(set)
    fuzzy: dict[str, set[str]] = defaultdict(set)
    for ch in chars:
        for reading in pinyin(ch, style=Style.NORMAL, heteronym=True)[0]:
            if reading.isalpha():
                exact[reading].add(ch)
                fuzzy[fuzzy_pinyin(reading)].add(ch)
    for groups, table in ((exact, same), (fuzzy, similar)):
        for members in groups.values():
            for ch in members:
                table[ch] |= members


def _read_curated(root: Path, same: dict[str, set[str]], similar: dict[str, set[str]],
                  visual: dict[str, set[str]]) -> None:
    def rows(name: str, sep: str | None):
        path = root / name
        if not path.exists():
            log(f"warning: confusion file {path} is missing; skipped")
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                yield line.split(sep) if sep else [line]

    for cells in rows("same_pinyin.txt", "\t"):
        if len(cells) >= 2:
            same[cells[0]].update("".join(cells[1:]))
    for cells in rows("bakeoff2013_similar_pronunciation.txt", "\t"):
        if len(cells) >= 2 and cells[0] != "汉字":
            same[cells[0]].update("".join(cells[1:3]))
            similar[cells[0]].update("".join(cells[3:5]))  # column 6 is a shape set (same radical)
            if len(cells) > 5:
                visual[cells[0]].update(cells[5])
    for cells in rows("same_stroke.txt", "\t"):
        group = {c for cell in cells for c in cell.strip()}
        for ch in group:
            visual[ch] |= group
    for cells in rows("bakeoff2013_similar_shape.txt", ","):
        if len(cells) == 2:
            visual[cells[0]].update(cells[1])


def _restrict(table: dict[str, set[str]], chars: set[str]) -> dict[str, list[str]]:
    out = {}
    for ch, cands in table.items():
        kept = sorted(c for c in cands if c in chars and c != ch)
        if ch in chars and kept:
            out[ch] = kept
    return out


@dataclass
class Corruptor:
    """Replace a share of the Chinese characters of a correct sentence with plausible errors."""

    confusion: ConfusionSets
    charset: list[str]
    rate: float = 0.15
    phonetic: float = 0.8
    visual: float = 0.0
    random_share: float = 0.2
    homophone_share: float = 0.7  # of the phonetic replacements, how many have the exact same pinyin

    def __post_init__(self):
        total = self.phonetic + self.visual + self.random_share
        if not 0 < self.rate <= 1 or total <= 0 or min(self.phonetic, self.visual, self.random_share) < 0:
            raise BertkitError("--corrupt-rate must be in (0, 1] and --phonetic/--visual/--random non-negative, not all zero")
        self._weights = [self.phonetic / total, self.visual / total, self.random_share / total]
        self.charset = sorted(c for c in self.charset if is_chinese(c))

    def __call__(self, text: str, rng: random.Random) -> str:
        positions = [i for i, ch in enumerate(text) if is_chinese(ch)]
        if not positions:
            return text
        expected = len(positions) * self.rate  # stochastic rounding keeps the rate exact on short lines
        n = int(expected) + (rng.random() < expected - int(expected))
        out = list(text)
        for i in rng.sample(positions, min(n, len(positions))):
            out[i] = self.replacement(text[i], rng)
        return "".join(out)

    def replacement(self, ch: str, rng: random.Random) -> str:
        kind = rng.choices(("phonetic", "visual", "random"), self._weights)[0]
        cands = None
        if kind == "phonetic":  # mostly exact homophones, as the paper; sometimes a near one
            table = self.confusion.homophone if rng.random() < self.homophone_share else self.confusion.similar_sound
            cands = table.get(ch) or self.confusion.homophone.get(ch) or self.confusion.similar_sound.get(ch)
        elif kind == "visual":
            cands = self.confusion.visual.get(ch)
        if not cands:  # no confusion known for this character: a random one, as the paper's 20%
            cands = self.charset
        new = rng.choice(cands)
        return new if new != ch else rng.choice(self.charset)
