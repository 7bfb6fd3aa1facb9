"""Atomic file and directory writes: a reader (or a run killed mid-write) never sees half a file.

Every file bertkit writes goes through here: a file is written beside its target and renamed into
place (``os.replace`` is atomic on POSIX); a directory is filled under a temporary name and
swapped in, the previous version kept as ``NAME.old`` until the swap is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` directory to ``final``, never leaving a half-written one."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A fresh ``FINAL.tmp`` directory to fill; it replaces ``final`` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    replace_dir(tmp, final)
