"""Text input and output for pipelines.

Inputs are files or stdin (``-``): ``.txt`` (one text a line), ``.tsv`` (a header line naming
the columns) or ``.jsonl`` (one object a line).  Lines are read one at a time (bounded memory)
and decoded strictly (UTF-8 unless ``--encoding`` says otherwise): invalid text and binary data
are reported with their line number, and a file in GBK gets a hint.
``map_in_order`` runs a batched function over a stream, sorting by length inside a window so
batches carry little padding, and yields results in input order.  Outputs go to stdout or to a
file written aside and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import BertkitError
from .files import atomic_file

T = TypeVar("T")
R = TypeVar("R")


_encoding = "utf-8"  # of every input file: the commands' --encoding


def use_encoding(name: str | None) -> None:
    """Decode input files with ``name`` from now on (``--encoding``; default UTF-8).

    Inputs are read line by line, so the encoding must write a newline as the one byte 0x0A:
    UTF-8, GB18030/GBK, Big5 and the single-byte encodings do; UTF-16 does not.
    """
    global _encoding
    name = name or "utf-8"
    try:
        codec = codecs.lookup(name)
        ascii_newline = "\n".encode(codec.name) == b"\n"
    except LookupError:
        raise BertkitError(f"--encoding {name}: not an encoding Python knows (e.g. utf-8, gb18030)") from None
    if not ascii_newline:
        raise BertkitError(f"--encoding {name}: bertkit reads lines and needs an encoding with one-byte newlines "
                           "(utf-8, gb18030, gbk, big5, latin-1, ...); convert the file to UTF-8 with iconv")
    _encoding = codec.name


def check_input(path: str | None) -> None:
    """Fail now, before a model loads, on an input file that reading would reject at once:
    missing, a directory, empty, or (within its first 64 KiB) binary or not in the encoding."""
    if path in (None, "-"):
        return
    p = _existing_file(path)
    if not p.is_file():
        return  # a pipe or device: reading ahead would consume it
    with open(p, "rb") as fh:
        head = fh.read(1 << 16)
    if not head:
        raise BertkitError(f"{path} is empty")
    lines = head.split(b"\n")
    complete = lines if len(head) < 1 << 16 else lines[:-1]  # the last line may be cut mid-character
    for lineno, raw in enumerate(complete, 1):
        _decode(raw, path, lineno)


def _existing_file(path: str) -> Path:
    """``path`` as a Path, or one clear error if it is missing or a directory."""
    p = Path(path)
    if not p.exists():
        raise BertkitError(f"{path}: no such file")
    if p.is_dir():
        raise BertkitError(f"{path} is a directory, not a text file")
    return p


def _binary_lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    p = _existing_file(path)
    with open(p, "rb") as fh:
        yield from fh


def _decode(raw: bytes, name: str, lineno: int) -> str:
    if b"\x00" in raw:
        raise BertkitError(f"{name}:{lineno}: NUL byte: this looks like a binary file, not text")
    try:
        return raw.decode(_encoding)
    except UnicodeDecodeError as exc:
        raise BertkitError(f"{name}:{lineno}: invalid {_encoding.upper()} at byte {exc.start}{_encoding_hint(raw, name)}") from None


def _encoding_hint(raw: bytes, name: str) -> str:
    """What to do when a file is not UTF-8 but reads as GBK/GB18030, the common Chinese encoding."""
    if _encoding != "utf-8":
        return ""
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return ""
    if not any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return ""
    source = "FILE" if name == "<stdin>" else name
    return (f"; it looks like GBK/GB18030: pass --encoding gb18030, or convert it with "
            f"`iconv -f GB18030 -t UTF-8 {source} > {Path(source).stem}.utf8{Path(source).suffix}`")


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text without its newline); fails clearly on binary data or a wrong encoding."""
    name = "<stdin>" if path == "-" else path
    empty = True
    for lineno, raw in enumerate(_binary_lines(path), 1):
        empty = False
        text = _decode(raw, name, lineno)
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
    with atomic_file(path) as fh:
        yield fh
