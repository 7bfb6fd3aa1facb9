"""Tagging schemes, the token classifier and decoding that never emits an illegal tag sequence.

The model is a plain ``BertForTokenClassification`` over characters (Devlin et al. 2019, section
5.3: a linear layer on each token's last hidden state), its tags in ``config.json``
(``id2label``), so transformers loads it as is.  Tags are BIO or BIOES (``B-X``, ``I-X``, ``E-X``,
``S-X``, ``O``), whatever the training data used, with any entity types.

Decoding is Viterbi over the tags' log-probabilities with the scheme's transitions as hard
constraints (an ``I-X`` only after ``B-X`` or ``I-X``; in BIOES an entity also ends only on
``E-X``), so every output parses into entities.  Deviation from a CRF (Lample et al. 2016): the
transition scores are not learned, only the impossible ones are forbidden; a CRF layer is not
built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PREFIXES = ("B", "I", "E", "S")


@dataclass(frozen=True, order=True)
class Entity:
    start: int  # character offset, inclusive
    end: int  # exclusive
    type: str


def split_tag(tag: str) -> tuple[str, str | None]:
    """("B", "PER") for "B-PER"; ("O", None) for "O".  BMES's "M-" reads as "I-"."""
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or not kind or prefix not in (*PREFIXES, "M"):
        raise ValueError(tag)
    return ("I" if prefix == "M" else prefix), kind


def scheme_of(tags: Sequence[str]) -> str:
    return "BIOES" if any(split_tag(t)[0] in ("E", "S") for t in tags) else "BIO"


def label_set(types: Sequence[str], scheme: str) -> list[str]:
    """All tags of ``scheme`` over ``types``, "O" first."""
    prefixes = ("B", "I") if scheme == "BIO" else PREFIXES
    return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in prefixes]


def allowed(prev: str | None, tag: str, scheme: str) -> bool:
    """May ``tag`` follow ``prev`` (None: the sentence start)?"""
    p, pt = split_tag(prev) if prev else ("O", None)
    c, ct = split_tag(tag)
    inside = p in ("B", "I")  # an entity is open
    if c in ("I", "E"):
        return inside and pt == ct
    return not inside if scheme == "BIOES" else True


def may_end(tag: str, scheme: str) -> bool:
    return scheme == "BIO" or split_tag(tag)[0] not in ("B", "I")


def spans_to_tags(n: int, entities: Sequence[Entity], scheme: str) -> list[str]:
    tags = ["O"] * n
    for e in entities:
        if scheme == "BIOES" and e.end - e.start == 1:
            tags[e.start] = f"S-{e.type}"
            continue
        tags[e.start] = f"B-{e.type}"
        for i in range(e.start + 1, e.end):
            tags[i] = f"I-{e.type}"
        if scheme == "BIOES":
            tags[e.end - 1] = f"E-{e.type}"
    return tags


def tags_to_spans(tags: Sequence[str]) -> list[Entity]:
    """Entities of a tag sequence; lenient: an ``I-X`` that cannot continue an entity starts one
    (as conlleval reads it), so any sequence parses."""
    entities, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        p, t = split_tag(tag)
        continues = p in ("I", "E") and start is not None and t == kind
        if start is not None and not continues:
            entities.append(Entity(start, i, kind))
            start, kind = None, None
        if p in ("B", "S") or (p in ("I", "E") and start is None):
            start, kind = i, t
        if p in ("E", "S") and start is not None:
            entities.append(Entity(start, i + 1, kind))
            start, kind = None, None
    return entities


class Transitions:
    """The scheme's allowed transitions over a label list, as additive log-scores (0 or -inf)."""

    def __init__(self, labels: Sequence[str], scheme: str):
        self.labels, self.scheme = list(labels), scheme
        n = len(labels)
        self.start = np.array([0.0 if allowed(None, t, scheme) else -np.inf for t in labels])
        self.end = np.array([0.0 if may_end(t, scheme) else -np.inf for t in labels])
        self.matrix = np.array([[0.0 if allowed(a, b, scheme) else -np.inf for b in labels] for a in labels])
        assert self.matrix.shape == (n, n)

    def viterbi(self, scores: np.ndarray) -> list[str]:
        """The best legal tag sequence for ``scores`` (length x labels log-probabilities)."""
        if len(scores) == 0:
            return []
        best = self.start + scores[0]
        back = []
        for row in scores[1:]:
            total = best[:, None] + self.matrix  # [from, to]
            back.append(total.argmax(0))
            best = total.max(0) + row
        best = best + self.end
        path = [int(best.argmax())]
        for pointers in reversed(back):
            path.append(int(pointers[path[-1]]))
        return [self.labels[i] for i in reversed(path)]
