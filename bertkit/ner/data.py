"""NER data: CoNLL-style files (one ``char<TAB>TAG`` a line, a blank line between sentences, BIO
or BIOES, any tag set; a token of several characters spreads its tag over them) and JSON lines (``{"text": ..., "entities": [{"start", "end", "type"}]}``),
read into sentences with character-offset entities; and strict entity-level scores."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..core.errors import BertkitError
from ..core.textio import read_lines
from .model import Entity, allowed, scheme_of, split_tag, tags_to_spans

MAX_SHOWN = 3  # lines named in an error about many lines


@dataclass
class Sentence:
    text: str
    entities: list[Entity] = field(default_factory=list)
    line: int = 0  # where it starts in its file, for messages


@dataclass
class NerData:
    sentences: list[Sentence]
    scheme: str  # BIO or BIOES (JSONL: BIO)
    types: list[str]


def read_ner(path: str, fix_tags: bool = False) -> NerData:
    """Sentences of a CoNLL or JSONL file (JSONL when the file name ends in .jsonl or its first
    line is a JSON object)."""
    lines = list(read_lines(path))
    first = next((text for _, text in lines if text.strip()), "")
    if path.endswith(".jsonl") or first.lstrip().startswith("{"):
        sentences = read_jsonl(path, lines)
        scheme = "BIO"
    else:
        sentences, scheme = read_conll(path, lines, fix_tags)
    if not sentences:
        raise BertkitError(f"{path} has no sentences")
    return NerData(sentences, scheme, sorted({e.type for s in sentences for e in s.entities}))


def read_conll(path: str, lines: Iterable[tuple[int, str]], fix_tags: bool) -> tuple[list[Sentence], str]:
    blocks, chars, tags, start = [], [], [], 0
    for lineno, text in [*lines, (None, "")]:
        if not text.strip():
            if chars:
                blocks.append((start, "".join(chars), tags))
            chars, tags = [], []
            continue
        cells = text.split("\t") if "\t" in text else text.split()
        if len(cells) < 2 or not cells[-1].strip():
            raise BertkitError(f"{path}:{lineno}: expected char<TAB>TAG, got {text!r}")
        token, tag = cells[0], cells[-1].strip()
        if not token:
            raise BertkitError(f"{path}:{lineno}: expected char<TAB>TAG, got no character before the tag")
        try:
            split_tag(tag)
        except ValueError:
            raise BertkitError(f"{path}:{lineno}: tag {tag!r} is not O, B-X, I-X, E-X, S-X (or M-X)") from None
        start = start if chars else lineno
        chars.extend(token)
        tags.extend(char_tags(tag, len(token)))
    scheme = scheme_of([t for _, _, ts in blocks for t in ts])
    _check_sequences(path, blocks, scheme, fix_tags)
    return [Sentence(text, tags_to_spans(ts), line) for line, text, ts in blocks], scheme


def char_tags(tag: str, n: int) -> list[str]:
    """The tags of a token's ``n`` characters: a multi-character token (an English word, or a
    character with a segmentation index as some Weibo NER releases write ``科0``) is one unit."""
    prefix, kind = split_tag(tag)
    if n == 1 or prefix == "O":
        return [tag] * n
    first = {"B": "B", "I": "I", "E": "I", "S": "B"}[prefix]
    last = {"B": "I", "I": "I", "E": "E", "S": "E"}[prefix]
    return [f"{first}-{kind}"] + [f"I-{kind}"] * (n - 2) + [f"{last}-{kind}"]


def _check_sequences(path: str, blocks, scheme: str, fix_tags: bool) -> None:
    """Tags the scheme forbids (an I-X after O or after another type, ...): an error naming how
    many and where, unless ``fix_tags``, which reads each as the start of an entity (as conlleval)."""
    bad = []
    for line, _, tags in blocks:
        for i, tag in enumerate(tags):
            if not allowed(tags[i - 1] if i else None, tag, scheme):
                bad.append((line + i, tag, tags[i - 1] if i else "the sentence start"))
    if not bad or fix_tags:
        if bad:
            from ..core.progress import log

            log(f"warning: {path}: {len(bad)} tags the {scheme} scheme forbids, read as entity starts (--fix-tags)")
        return
    where = ", ".join(str(b[0]) for b in bad[:MAX_SHOWN]) + (", ..." if len(bad) > MAX_SHOWN else "")
    line, tag, prev = bad[0]
    raise BertkitError(f"{path}:{line}: {tag} after {prev} is not a legal {scheme} sequence ({len(bad)} such tag"
                       f"{'s' if len(bad) > 1 else ''}, at lines {where}); fix the file, or pass --fix-tags to read "
                       "each as the start of an entity")


def read_jsonl(path: str, lines: Iterable[tuple[int, str]]) -> list[Sentence]:
    sentences = []
    for lineno, text in lines:
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            body = record["text"]
            spans = [Entity(int(e["start"]), int(e["end"]), str(e["type"])) for e in record.get("entities") or []]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BertkitError(f"{path}:{lineno}: expected {{\"text\": ..., \"entities\": [{{\"start\", \"end\", \"type\"}}]}}") from None
        if not isinstance(body, str):
            raise BertkitError(f"{path}:{lineno}: \"text\" must be a string")
        spans.sort()
        for e in spans:
            if not 0 <= e.start < e.end <= len(body):
                raise BertkitError(f"{path}:{lineno}: entity [{e.start}, {e.end}) {e.type} falls outside its text "
                                   f"of {len(body)} characters")
        for a, b in zip(spans, spans[1:]):
            if b.start < a.end:
                raise BertkitError(f"{path}:{lineno}: entities [{a.start}, {a.end}) {a.type} and [{b.start}, {b.end}) "
                                   f"{b.type} overlap")
        sentences.append(Sentence(body, spans, lineno))
    return sentences


def entity_scores(gold: Sequence[Sequence[Entity]], predicted: Sequence[Sequence[Entity]]) -> dict:
    """Strict entity-level precision, recall and F1 (x 100): an entity counts only with the exact
    start, end and type; overall (micro) and per type."""
    gold_set = {(i, e) for i, es in enumerate(gold) for e in es}
    pred_set = {(i, e) for i, es in enumerate(predicted) for e in es}
    types = sorted({e.type for _, e in gold_set | pred_set})

    def prf(g: set, p: set) -> dict:
        hit = len(g & p)
        precision = hit / len(p) if p else 0.0
        recall = hit / len(g) if g else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
        return {"precision": round(100 * precision, 2), "recall": round(100 * recall, 2), "f1": round(100 * f1, 2),
                "n_gold": len(g), "n_predicted": len(p)}

    per_type = {t: prf({x for x in gold_set if x[1].type == t}, {x for x in pred_set if x[1].type == t}) for t in types}
    return {**prf(gold_set, pred_set), "per_type": per_type}
