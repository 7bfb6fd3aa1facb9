"""What contrastive training reads: unlabelled sentences (SG-BERT, SimCSE), scored pairs
``s1<TAB>s2<TAB>score`` (CoSENT) and ``anchor<TAB>positive`` pairs (in-batch negatives)."""

from __future__ import annotations

from typing import Sequence

from ..core.errors import BertkitError
from ..core.textio import read_lines
from ..embed.data import read_sts_pairs


def read_sentences(paths: Sequence[str]) -> list[str]:
    """The non-blank lines of every file, in order; at least two, since each sentence's negatives
    are the other sentences of its batch."""
    sentences = [text for path in paths for _, text in read_lines(path) if text.strip()]
    if len(sentences) < 2:
        where = ", ".join(paths)
        raise BertkitError(f"{where}: {len(sentences)} non-blank line{'s' if len(sentences) != 1 else ''}; contrastive "
                           "training needs at least 2 sentences (the other sentences of a batch are the negatives)")
    return sentences


def read_scored_pairs(path: str) -> tuple[list[str], list[str], list[float]]:
    """CoSENT's ``s1<TAB>s2<TAB>score`` lines (a header line is skipped); scores must be numbers."""
    first, second, scores = read_sts_pairs(path)
    if len(set(scores)) < 2:
        raise BertkitError(f"{path}: every pair has the score {scores[0]:g}; CoSENT learns from pairs that score differently")
    return first, second, scores


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    """``anchor<TAB>positive`` lines (blank lines skipped)."""
    anchors, positives = [], []
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise BertkitError(f"{path}:{lineno}: expected anchor<TAB>positive, got {len(cells)} column{'s' if len(cells) != 1 else ''}")
        anchors.append(cells[0])
        positives.append(cells[1])
    if len(anchors) < 2:
        raise BertkitError(f"{path}: {len(anchors)} pair{'s' if len(anchors) != 1 else ''}; in-batch negatives need at least 2")
    return anchors, positives
