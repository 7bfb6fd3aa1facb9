"""Classification data: ``label<TAB>text`` (or ``label<TAB>text_a<TAB>text_b``) TSV with a header,
JSONL with the same keys, or plain text to predict; and the prediction record written per line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..core.errors import BertkitError
from ..core.textio import input_format, read_records


@dataclass
class Example:
    text: str
    text_b: str | None = None
    label: str | None = None
    lineno: int = 0


def as_example(item) -> Example:
    """An :class:`Example` from what a library caller has: a text, a (text_a, text_b) pair, or an Example."""
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        return Example(item)
    text, text_b = item
    return Example(text, text_b)


def _field(record: dict, name: str, path: str, lineno: int) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise BertkitError(f"{path}:{lineno}: missing text field {name!r}")
    return value


def read_examples(path: str, labelled: bool) -> Iterator[Example]:
    """Examples from txt (texts only), tsv (header) or jsonl; streaming."""
    fmt = input_format(path)
    if labelled and fmt == "txt":
        raise BertkitError(f"{path}: labelled data must be .tsv (header: label<TAB>text) or .jsonl")
    for lineno, record in read_records(path, fmt):
        if labelled and "label" not in record:
            raise BertkitError(f"{path}:{lineno}: no 'label' column (expected a header like label<TAB>text)")
        if "text_a" in record:
            text, text_b = _field(record, "text_a", path, lineno), _field(record, "text_b", path, lineno)
        else:
            text, text_b = _field(record, "text", path, lineno), None
        label = str(record["label"]) if "label" in record else None
        if labelled and not label.strip():
            raise BertkitError(f"{path}:{lineno}: empty label")
        if labelled and not text.strip():
            raise BertkitError(f"{path}:{lineno}: empty text")
        yield Example(text, text_b, label, lineno)


def load_labelled(path: str) -> list[Example]:
    examples = list(read_examples(path, labelled=True))
    if not examples:
        raise BertkitError(f"{path} has a header but no examples")
    return examples


def check_labels(examples: Sequence[Example], known: Sequence[str], path: str, what: str) -> None:
    known_set = set(known)
    for ex in examples:
        if ex.label not in known_set:
            raise BertkitError(
                f"{path}:{ex.lineno}: label {ex.label!r} is not among the {what} labels ({', '.join(sorted(known_set))})"
            )


def prediction_record(labels: Sequence[str], probs: torch.Tensor, extra: dict | None = None) -> str:
    best = int(probs.argmax())
    return json.dumps(
        {"label": labels[best], "probs": {l: round(float(p), 6) for l, p in zip(labels, probs)}, **(extra or {})},
        ensure_ascii=False,
    )
