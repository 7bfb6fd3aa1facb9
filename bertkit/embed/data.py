"""Embedding data: STS pairs (``s1<TAB>s2<TAB>score``) to evaluate on, and the vectors written out
(TSV, JSON lines or .npy, at a chosen precision), streamed in input order."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..core.errors import BertkitError
from ..core.files import atomic_file
from ..core.textio import output_stream, read_lines


StsPairs = tuple[list[str], list[str], list[float]]  # first sentences, second sentences, gold scores


def read_sts_pairs(path: str) -> StsPairs:
    """s1<TAB>s2<TAB>score lines (a header line is skipped if its score is not a number)."""
    s1, s2, scores = [], [], []
    for lineno, line in read_lines(path):
        cells = line.split("\t")
        if len(cells) != 3:
            raise BertkitError(f"{path}:{lineno}: expected s1<TAB>s2<TAB>score, got {len(cells)} columns")
        try:
            score = float(cells[2])
        except ValueError:
            if lineno == 1:
                continue
            raise BertkitError(f"{path}:{lineno}: score {cells[2]!r} is not a number") from None
        s1.append(cells[0])
        s2.append(cells[1])
        scores.append(score)
    if not scores:
        raise BertkitError(f"{path} has no pairs")
    return s1, s2, scores


PRECISIONS = ("float32", "float16", "int8", "binary")


def vectors_at_precision(v: np.ndarray, precision: str) -> np.ndarray:
    if precision == "float32":
        return v.astype(np.float32)
    if precision == "float16":
        return v.astype(np.float16)
    if precision == "int8":
        return np.clip(np.round(v * 127), -127, 127).astype(np.int8)
    return np.packbits(v > 0)


def write_vectors(vectors: Iterable[torch.Tensor], output: str | None, normalize: bool, precision: str) -> int:
    """Write one vector per input, in order, as TSV (stdout default), JSON lines or .npy."""
    if precision not in PRECISIONS:
        raise BertkitError(f"unknown --precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision == "int8" and not normalize:
        raise BertkitError("--precision int8 needs --normalize (it maps [-1, 1] to [-127, 127])")
    fmt = "tsv" if output in (None, "-") else Path(output).suffix.lower().lstrip(".")
    if fmt not in ("tsv", "jsonl", "npy", "txt"):
        raise BertkitError(f"-o {output}: use .npy, .jsonl or .tsv")

    def rows():
        for v in vectors:
            if normalize:
                v = torch.nn.functional.normalize(v, dim=-1)
            yield vectors_at_precision(v.float().numpy(), precision)

    if fmt == "npy":
        return _write_npy(rows(), Path(output))
    n = 0
    with output_stream(output) as out:
        for row in rows():
            values = row.tolist()
            if fmt == "jsonl":
                out.write(json.dumps(values) + "\n")
            else:
                out.write("\t".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in values) + "\n")
            n += 1
    return n


def _write_npy(rows: Iterable[np.ndarray], path: Path) -> int:
    """Stream rows to disk, then prepend the .npy header: memory stays flat for any input size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".raw")
    n, first = 0, None
    try:
        with os.fdopen(fd, "wb") as raw:
            for row in rows:
                first = row if first is None else first
                raw.write(np.ascontiguousarray(row).tobytes())
                n += 1
        if first is None:
            raise BertkitError("no input lines: nothing to write")
        header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": (n, first.shape[0])}
        with atomic_file(path, binary=True) as out, open(raw_name, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            while chunk := raw.read(1 << 20):
                out.write(chunk)
    finally:
        if os.path.exists(raw_name):
            os.unlink(raw_name)
    return n
