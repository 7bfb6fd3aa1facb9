"""Text input and output for pipelines.

Inputs are files or stdin (``-``): ``.txt`` (one text a line), ``.tsv`` (a header line naming
the columns) or ``.jsonl`` (one object a line).  Lines are read one at a time (bounded memory)
and decoded strictly: invalid UTF-8 and binary data are reported with their line number.
``map_in_order`` runs a batched function over a stream, sorting by length inside a window so
batches carry little padding, and yields results in input order.  Outputs go to stdout or to a
file written aside and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import BertkitError

T = TypeVar("T")
R = TypeVar("R")


def _binary_lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    p = Path(path)
    if not p.exists():
        raise BertkitError(f"{path}: no such file")
    if p.is_dir():
        raise BertkitError(f"{path} is a directory, not a text file")
    with open(p, "rb") as fh:
        yield from fh


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text without its newline); fails clearly on binary data or bad UTF-8."""
    name = "<stdin>" if path == "-" else path
    empty = True
    for lineno, raw in enumerate(_binary_lines(path), 1):
        empty = False
        if b"\x00" in raw:
            raise BertkitError(f"{name}:{lineno}: NUL byte: this looks like a binary file, not UTF-8 text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BertkitError(f"{name}:{lineno}: invalid UTF-8 at byte {exc.start}") from None
        if lineno == 1:
            text = text.lstrip("\ufeff")
        yield lineno, text.rstrip("\r\n")
    if empty:
        raise BertkitError(f"{name} is empty")


def input_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    return {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "txt")


def read_records(path: str, fmt: str | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every line; a txt line becomes ``{"text": line}``.

    Blank lines in txt input are kept (as empty texts) so outputs stay line-aligned; in tsv and
    jsonl, where a record must have fields, they are errors.
    """
    fmt = input_format(path, fmt)
    name = "<stdin>" if path == "-" else path
    lines = read_lines(path)
    if fmt == "txt":
        for lineno, text in lines:
            yield lineno, {"text": text}
        return
    if fmt == "tsv":
        _, header_line = next(lines)
        header = header_line.split("\t")
        for lineno, text in lines:
            if not text.strip():
                raise BertkitError(f"{name}:{lineno}: blank line in a TSV file")
            cells = text.split("\t")
            if len(cells) != len(header):
                raise BertkitError(f"{name}:{lineno}: {len(cells)} columns, the header has {len(header)}")
            yield lineno, dict(zip(header, cells))
        return
    if fmt == "jsonl":
        for lineno, text in lines:
            if not text.strip():
                raise BertkitError(f"{name}:{lineno}: blank line in a JSONL file")
            try:
                record = json.loads(text)
            except ValueError:
                raise BertkitError(f"{name}:{lineno}: not valid JSON") from None
            if not isinstance(record, dict):
                raise BertkitError(f"{name}:{lineno}: expected a JSON object")
            yield lineno, record
        return
    raise BertkitError(f"unknown input format {fmt!r} (txt, tsv or jsonl)")


def read_texts(path: str) -> Iterator[str]:
    """Just the text of each line of a plain text file (streaming)."""
    for _, text in read_lines(path):
        yield text


def map_in_order(
    items: Iterable[T],
    fn: Callable[[Sequence[T]], Sequence[R]],
    length: Callable[[T], int],
    batch_size: int = 64,
    window: int = 4096,
) -> Iterator[R]:
    """Apply ``fn`` to batches of ``items`` sorted by ``length`` within windows; yield in input order.

    Memory is bounded by ``window`` items and their results, whatever the stream's size.
    """
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= window:
            yield from _run_window(buffer, fn, length, batch_size)
            buffer = []
    if buffer:
        yield from _run_window(buffer, fn, length, batch_size)


def _run_window(buffer, fn, length, batch_size):
    order = sorted(range(len(buffer)), key=lambda i: length(buffer[i]))
    results = [None] * len(buffer)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, result in zip(idx, fn([buffer[i] for i in idx])):
            results[i] = result
    return results


@contextlib.contextmanager
def output_stream(path: str | None):
    """A text stream to stdout (``None`` or ``-``) or to ``path``, renamed into place only on success."""
    if path in (None, "-"):
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with io.open(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
