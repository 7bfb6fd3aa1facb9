"""Atomic file and directory writes: a reader (or a run killed mid-write) never sees half a file.

Every file bertkit writes goes through here: a file is written beside its target and renamed into
place (``os.replace`` is atomic on POSIX); a directory is filled under a temporary name and
swapped in, the previous version kept as ``NAME.old`` until the swap is done.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from .errors import BertkitError
from .progress import log


def default_mode() -> int:
    """The mode a plain ``open()`` gives a new file: 0o666 less the umask.

    Temporary files (``mkstemp``) and safetensors' writer create files 0600; an output must not
    come out more private than the user's umask asks for.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def settle_mode(tmp: Path | str, target: Path | str) -> None:
    """Give ``tmp`` the mode of the file it will replace, or a new file's mode if there is none."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = default_mode()
    os.chmod(tmp, mode)


def replace_file(tmp: Path | str, target: Path | str) -> None:
    """Rename a fully written ``tmp`` onto ``target`` (atomic on POSIX), with the right mode."""
    settle_mode(tmp, target)
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(path: Path | str, binary: bool = False) -> Iterator[IO]:
    """A file handle whose content appears at ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else io.open(fd, "w", encoding="utf-8", newline="\n")) as fh:
            yield fh
        replace_file(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_output_file(path: str | None, overwrite: bool) -> None:
    """Refuse, before any work, to write ``-o FILE`` over an existing file without ``--overwrite``."""
    if path in (None, "-"):
        return
    target = Path(path)
    if target.is_dir():
        raise BertkitError(f"-o {path} is a directory: give a file name")
    if target.exists() and not overwrite:
        raise BertkitError(f"{path} exists: pass --overwrite to replace it")
    _say_new_parent(target)


def check_output_dir(path: Path | str, overwrite: bool, resume: bool | None = None) -> None:
    """Refuse, before any work, to write a model into a non-empty directory without ``--overwrite``
    (or, for a training run, ``--resume``: ``resume`` is None for commands that cannot resume)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise BertkitError(f"-o {path} is a file: give a directory for the model")
    if target.is_dir() and any(target.iterdir()) and not overwrite and not resume:
        also = " (or --resume to continue the training run there)" if resume is not None else ""
        raise BertkitError(f"{path} exists and is not empty: pass --overwrite to replace its model{also}")
    _say_new_parent(target)


def _say_new_parent(target: Path) -> None:
    """A typo in a directory name should not pass unnoticed: say when -o creates directories."""
    if not target.parent.exists():
        log(f"creating directory {target.parent}")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)


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
    settle_dir_modes(tmp)
    replace_dir(tmp, final)


def settle_dir_modes(directory: Path) -> None:
    """Give every file in a freshly written directory a new file's mode (see :func:`default_mode`)."""
    mode = default_mode()
    for path in Path(directory).rglob("*"):
        if path.is_file():
            os.chmod(path, mode)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, for renames that must happen together (one
    interrupted between them would leave two versions mixed); each signal caught meanwhile is
    raised again right after, to whatever handled it before.  Handlers are set from the main
    thread only: elsewhere the block runs as it is.  (Blocking the signals with ``pthread_sigmask``
    would not do: the kernel hands them to another thread, e.g. one of torch's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


@contextlib.contextmanager
def atomic_entries(directory: Path, last: str | tuple[str, ...] | None = None) -> Iterator[Path]:
    """A fresh staging directory inside ``directory``; if the block succeeds, each entry written
    there replaces its namesake in ``directory`` by one rename, ``last`` after all the others (a
    tuple: in its order, after all the others), and
    no Ctrl-C or SIGTERM gets in between.  ``directory``'s other entries stay (e.g. a training run's
    ``checkpoints/`` beside the model it is updating), which :func:`atomic_dir` would drop."""
    directory = Path(directory)
    staging = directory / ".staging.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    order = (last,) if isinstance(last, str) else tuple(last or ())
    entries = sorted(staging.iterdir(), key=lambda entry: order.index(entry.name) if entry.name in order else -1)
    with signals_held():
        for entry in entries:
            (replace_dir if entry.is_dir() else os.replace)(entry, directory / entry.name)
        staging.rmdir()
