"""Self-contained Lattice-BERT directories: one directory gives everything needed to turn text into
lattices, batch them and run the model, so that no one has to remember which tokenizer or word list
a model was trained with.

A directory holds

* ``model.safetensors``, ``lattice_config.json``, ``bertkit.json`` (:func:`.model.save_lattice`);
* the character tokenizer, i.e. the start BERT's tokenizer files: its vocabulary gives the character
  ids (the model's character table is that BERT's);
* ``words.txt``: the word vocabulary, one word a line, line number (from 0) = word id.  The lexicon
  lattices are built with is this vocabulary, so every word unit of a lattice has an id.

:func:`bertkit.core.modelio.resolve_model` refuses such a directory unless asked for the
``lattice-bert`` layout, so commands built for BERT-family encoders say so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..core import modelio
from ..core.errors import BertkitError
from ..core.files import atomic_entries, atomic_file, settle_dir_modes
from .lattice import Lexicon
from .model import ARCHITECTURE, LatticeForPretraining, LatticeModel, load_lattice, save_lattice

WORDS_FILE = "words.txt"


def char_normalizer(tokenizer) -> Callable[[str], str]:
    """Text -> the characters lattices are built on: whitespace dropped, and a character the
    vocabulary lacks lower-cased when that form is in it (the convention of
    :class:`bertkit.core.chars.CharVocab`).  Lexicon words go through it too, so they match."""
    vocab = tokenizer.get_vocab()
    cache: dict[str, str] = {}

    def char(c: str) -> str:
        if c not in cache:
            cache[c] = c if c in vocab or c.lower() not in vocab else c.lower()
        return cache[c]

    return lambda text: "".join(char(c) for c in text if not c.isspace())


@dataclass
class LatticeBundle:
    """What :func:`load_lattice_dir` gives: the model, its character tokenizer and its words."""

    model: LatticeModel | LatticeForPretraining
    tokenizer: Any
    words: list[str]

    @property
    def char_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    @property
    def word_vocab(self) -> dict[str, int]:
        return {word: index for index, word in enumerate(self.words)}

    @property
    def lexicon(self) -> Lexicon:
        """The lexicon to build lattices with: exactly the word vocabulary."""
        return Lexicon(self.words)

    @property
    def normalize(self) -> Callable[[str], str]:
        return char_normalizer(self.tokenizer)


def save_lattice_dir(model: LatticeModel | LatticeForPretraining, tokenizer, words: Sequence[str],
                     directory: Path | str, dtype: torch.dtype | None = None, kind: str | None = None) -> Path:
    """Model, tokenizer and ``words.txt`` into ``directory``, each entry replacing its namesake by
    one rename, ``bertkit.json`` last (so a reader never finds a manifest without its files).
    ``model``: any class :func:`.model.save_lattice` saves (the fine-tuned ones of :mod:`.heads`
    too); ``kind``: the manifest's, by default the class's."""
    check_words(list(words), model.config.word_vocab_size, "words")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_entries(directory, last=modelio.MANIFEST) as staging:
        tokenizer.save_pretrained(staging)
        with atomic_file(staging / WORDS_FILE) as fh:
            fh.writelines(f"{word}\n" for word in words)
        save_lattice(model, staging, dtype=dtype, kind=kind)
        settle_dir_modes(staging)  # safetensors writes its files 0600
    return directory


def load_lattice_dir(directory: Path | str) -> LatticeBundle:
    """The model (float32, eval mode), tokenizer and words :func:`save_lattice_dir` wrote; one-line
    BertkitError for anything missing or inconsistent."""
    path = Path(modelio.resolve_model(str(directory), layouts=(ARCHITECTURE,)))
    model = load_lattice(path)
    tokenizer = modelio.load_tokenizer(str(path))
    words = read_words(path / WORDS_FILE)
    check_words(words, model.config.word_vocab_size, str(path / WORDS_FILE))
    if max(tokenizer.get_vocab().values()) >= model.config.char_vocab_size:
        raise BertkitError(f"{path}: the tokenizer has ids beyond the model's {model.config.char_vocab_size} characters")
    return LatticeBundle(model, tokenizer, words)


def read_words(path: Path) -> list[str]:
    """``words.txt``: one word a line, nothing else (a word's id is its line number, so no line
    may be skipped: a blank one is an error)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").split("\n")
    except OSError as e:
        raise BertkitError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise BertkitError(f"{path} is not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, word in enumerate(lines, 1):
        if len(word) < 2 or any(c.isspace() for c in word):
            raise BertkitError(f"{path}:{lineno}: {word!r} is not a word of two or more characters")
    return lines


def check_words(words: list[str], size: int, where: str) -> None:
    """Distinct words, no more than the model's ``size`` word embeddings; BertkitError naming ``where``."""
    if len(set(words)) != len(words):
        raise BertkitError(f"{where}: a word appears twice")
    if len(words) > size:
        raise BertkitError(f"{where}: {len(words)} words for a model with {size} word embeddings")
