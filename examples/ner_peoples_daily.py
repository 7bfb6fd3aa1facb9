"""Build a Chinese news NER data set (PER / LOC / ORG, character-level BIO) from People's Daily.

    python examples/ner_peoples_daily.py [--corpus PATH] [--out DIR] [--force]

Input: ../shared/data/corpus/peoples_daily_199801.pos.txt, People's Daily of January 1998 with
PKU part-of-speech tags: 19,484 lines, one paragraph a line, ``word/POS`` tokens separated by two
spaces.  This release has no article ids, no blank lines and no ``[...]nt`` bracketed compounds
(checked: no ``[`` anywhere in the file).  A few tokens are separated by one space or have a
space before them, so lines are split on any whitespace.

Entities: ``nr`` -> PER, ``ns`` -> LOC, ``nt`` -> ORG.  PKU cuts a person's name into surname and
given name (``江/nr  泽民/nr``), so a run of consecutive ``nr`` tokens is one person; but runs of 4
or more tokens are lists of names written without separators (``江/nr 泽民/nr 李/nr 鹏/nr ...``
in headlines and bylines, ~300 runs), so those are cut into surname + given name pairs (a
one-character token is a surname and takes the next token; a longer token is a whole name).
Every ``ns`` / ``nt`` token is an entity of its own.  Other releases of the corpus bracket
compounds (``[中央/n  电视台/n]nt``): a ``]nt`` / ``]ns`` / ``]nr`` bracket is one entity of its type
and the tokens inside lose their own; the tokens of a bracket of another type keep theirs.

Output: ``train.conll``, ``dev.conll``, ``test.conll`` in --out (default runs/ner/peoples_daily),
one ``char<TAB>tag`` a line, a blank line after each sentence, UTF-8; characters are written as
they are (full-width kept), whitespace never.  A paragraph is cut into sentences after 。！？
(with the closing quotes / brackets that follow), a sentence over 150 characters also after ；,
never inside an entity.  Nothing is written when all three files exist and are newer than this
script (``exists``), unless --force.  Counts go to stderr and, as the last stdout line, JSON.

Articles: the split is by article, so that no article's text is in two splits.  The file has no
article ids, so boundaries are found from the page layout that survives in it: an article opens
with a *heading* (a short paragraph, at most 50 characters once a trailing ``（附图片１张）``-like
note is dropped, that does not end like running text: 。！？；：，、…—), often followed by a
subtitle or byline, and a news story's first paragraph carries a dateline (``新华社北京１月２日电``,
``本报讯``, ``据新华社...电``).  But features also have short section headings inside them, so a
run of heading paragraphs after running text opens an article only when there is evidence of a
new article: the run has two or more paragraphs (title + subtitle / byline), or a picture note
(``（图片）``, ``（附图片…）``), or the paragraph after it is a dateline, or the paragraph before it
closes an article (a credit or note in brackets: ``（新华社记者…摄）``, ``（新华社北京…电）``,
``（苏宁）``); a numbered heading (``二、…``) never does.  A dateline paragraph that follows running
text (a story printed without a heading) opens an article too.  Erring this way merges some short
undated items into the article before them, which only makes a split's units coarser, while a
feature cut at its section headings could put one article into two splits.  The rule finds
3,034 articles in the January 1998 file.  An article goes to a split by the MD5 hash of its
first paragraph, modulo 10: 8 -> dev, 9 -> test, else train (about 80/10/10 by article, the same
on every run; a recurring column title such as 天气趋势分析 always lands in the same split).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "peoples_daily_199801.pos.txt"
DEFAULT_OUT = REPO / "runs" / "ner" / "peoples_daily"
SPLITS = ("train", "dev", "test")
ENTITY = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
TYPES = ("PER", "LOC", "ORG")

MAX_NAME_RUN = 3  # longer nr runs are unseparated lists of names
MAX_SENTENCE = 150
STOPS = "。！？"
CLOSERS = "”’』」》）"
MAX_HEADING = 50
RUNNING_TEXT_END = "。！？；：，、…—"

TOKEN_RE = re.compile(r"(\[?)(.+)/([A-Za-z]+)(?:\]([A-Za-z]+))?$")
NOTE_RE = re.compile(r"（[^（）]{0,30}）$")
PICTURE_RE = re.compile(r"（附?图片")
NUMBERED_RE = re.compile(r"^[一二三四五六七八九十0-9０-９]+[、．.]")
DATELINE_RE = re.compile(r"^据?(新华社|本报|中新社)[^，。：]{0,25}?[电讯]")


# ---- tokens and entities ------------------------------------------------------------------


def parse_line(line: str) -> tuple[list[str], list[str], list[tuple[int, int, str]]]:
    """Words, POS tags and bracketed compounds ``(first, end, type)`` (token indices) of a line."""
    words, tags, brackets, opened = [], [], [], None
    for token in line.split():
        m = TOKEN_RE.match(token)
        if not m:  # no tag: keep the text, it is no entity
            words.append(token)
            tags.append("")
            continue
        bracket, word, pos, closing = m.groups()
        if bracket:
            opened = len(words)
        words.append(word)
        tags.append(pos)
        if closing and opened is not None:
            brackets.append((opened, len(words), closing))
            opened = None
    return words, tags, brackets


def split_names(words: list[str], start: int, end: int) -> list[tuple[int, int]]:
    """Token spans of the persons in a run of nr tokens: one person, or for a long run (a list
    of names) surname + given name pairs."""
    if end - start <= MAX_NAME_RUN:
        return [(start, end)]
    spans, i = [], start
    while i < end:
        step = 2 if len(words[i]) == 1 and i + 1 < end else 1  # 1-char token: a surname
        spans.append((i, i + step))
        i += step
    return spans


def entity_spans(words: list[str], tags: list[str], brackets=()) -> list[tuple[int, int, str]]:
    """Entities ``(first, end, type)`` as token spans, sorted."""
    spans = [(s, e, ENTITY[t]) for s, e, t in brackets if t in ENTITY]
    inside = {i for s, e, _ in spans for i in range(s, e)}
    i = 0
    while i < len(tags):
        if i in inside or tags[i] not in ENTITY:
            i += 1
            continue
        end = i + 1
        if tags[i] == "nr":
            while end < len(tags) and tags[end] == "nr" and end not in inside:
                end += 1
            spans += [(s, e, "PER") for s, e in split_names(words, i, end)]
        else:
            spans.append((i, end, ENTITY[tags[i]]))
        i = end
    return sorted(spans)


def bio_tags(words: list[str], spans) -> list[tuple[str, str]]:
    """``(char, tag)`` for every non-whitespace character of the words."""
    tags = [["O"] * len(word) for word in words]
    for s, e, kind in spans:
        prefix = "B-"
        for i in range(s, e):
            for c, ch in enumerate(words[i]):
                if not ch.isspace():
                    tags[i][c] = prefix + kind
                    prefix = "I-"
    return [(ch, tag) for word, word_tags in zip(words, tags) for ch, tag in zip(word, word_tags) if not ch.isspace()]


# ---- sentences ----------------------------------------------------------------------------


def _cuts_after(words, marks, allowed):
    """Cut points (a token index to cut before) after each token ending in one of ``marks``,
    moved past closing quotes / brackets, kept only where ``allowed``."""
    cuts = []
    for i, word in enumerate(words):
        if word and word[-1] in marks:
            k = i + 1
            while k < len(words) and words[k] and all(c in CLOSERS for c in words[k]):
                k += 1
            if k < len(words) and allowed(k) and (not cuts or cuts[-1] < k):
                cuts.append(k)
    return cuts


def split_sentences(words: list[str], spans) -> list[tuple[int, int]]:
    """Token ranges of the sentences of a paragraph: cut after 。！？, a sentence longer than
    MAX_SENTENCE characters also after ；, never inside an entity; empty ones dropped."""
    inside = {k for s, e, _ in spans for k in range(s + 1, e)}
    allowed = lambda k: k not in inside  # noqa: E731
    offsets = [0]
    for word in words:
        offsets.append(offsets[-1] + sum(not c.isspace() for c in word))
    bounds = [0, *_cuts_after(words, STOPS, allowed), len(words)]
    soft = _cuts_after(words, "；", allowed)
    sentences = []
    for a, b in zip(bounds, bounds[1:]):
        sentences += _pack(offsets, a, b, [k for k in soft if a < k < b])
    return [(a, b) for a, b in sentences if offsets[b] > offsets[a]]


def _pack(offsets, a, b, cuts):
    """Split token range a..b at the fewest of ``cuts`` (greedy) so that pieces stay within
    MAX_SENTENCE characters where the cuts allow."""
    pieces, start, last = [], a, None
    for k in [*cuts, b]:
        if offsets[k] - offsets[start] > MAX_SENTENCE and last is not None:
            pieces.append((start, last))
            start = last
        last = k
    pieces.append((start, b))
    return pieces


def paragraph_sentences(line: str) -> list[list[tuple[str, str]]]:
    """The BIO-tagged sentences of one corpus line."""
    words, tags, brackets = parse_line(line)
    spans = entity_spans(words, tags, brackets)
    sentences = []
    for a, b in split_sentences(words, spans):
        inner = [(s - a, e - a, t) for s, e, t in spans if a <= s and e <= b]
        sentences.append(bio_tags(words[a:b], inner))
    return sentences


# ---- articles -----------------------------------------------------------------------------


def paragraph_kind(text: str) -> str:
    """'note' (only a bracketed note: a credit, 附图片), 'heading' or 'body' (running text)."""
    core = NOTE_RE.sub("", text)
    if not core:
        return "note"
    core = core.rstrip(CLOSERS)
    if not core or len(core) > MAX_HEADING or core[-1] in RUNNING_TEXT_END:
        return "body"
    return "heading"


def _opens_article(texts, kinds, i, j) -> bool:
    """Whether the heading run texts[i:j] (after running text) starts a new article."""
    if NUMBERED_RE.match(texts[i]):  # 二、… : a section of a longer piece
        return False
    return (
        j - i > 1  # title + subtitle or byline
        or any(PICTURE_RE.search(t) for t in texts[i:j])
        or (j < len(texts) and bool(DATELINE_RE.match(texts[j])))
        or kinds[i - 1] == "note"
        or bool(NOTE_RE.search(texts[i - 1]))  # the article before ends with a credit
    )


def article_starts(texts: list[str]) -> list[int]:
    """Indices of the paragraphs that open an article (see the module docstring)."""
    kinds = [paragraph_kind(t) for t in texts]
    starts, i = [0], 1
    while i < len(texts):
        if kinds[i] == "heading" and kinds[i - 1] != "heading":
            j = i
            while j < len(texts) and kinds[j] == "heading":
                j += 1
            if _opens_article(texts, kinds, i, j):
                starts.append(i)
            i = j + 1  # texts[j] is body (or the end): its dateline was counted above
            continue
        if kinds[i - 1] != "heading" and DATELINE_RE.match(texts[i]):
            starts.append(i)
        i += 1
    return starts


def split_of(first_paragraph: str) -> str:
    digit = int(hashlib.md5(first_paragraph.encode("utf-8")).hexdigest(), 16) % 10
    return "dev" if digit == 8 else "test" if digit == 9 else "train"


# ---- the data set -------------------------------------------------------------------------


def build(lines: list[str]):
    """``({split: [sentence, ...]}, {split: counts})`` for the corpus lines."""
    lines = [line for line in lines if line.strip()]
    texts = ["".join(parse_line(line)[0]) for line in lines]
    starts = article_starts(texts)
    data = {s: [] for s in SPLITS}
    counts = {s: Counter() for s in SPLITS}
    for a, b in zip(starts, [*starts[1:], len(lines)]):
        split = split_of(texts[a])
        counts[split]["articles"] += 1
        for line in lines[a:b]:
            for sentence in paragraph_sentences(line):
                data[split].append(sentence)
                counts[split]["sentences"] += 1
                counts[split]["characters"] += len(sentence)
                counts[split].update(tag[2:] for _, tag in sentence if tag.startswith("B-"))
    keys = ("articles", "sentences", "characters", *TYPES)
    return data, {s: {k: counts[s][k] for k in keys} for s in SPLITS}


def write_atomic(path: Path, sentences) -> None:
    """Write via a temporary file in the same directory, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for sentence in sentences:
                f.writelines(f"{ch}\t{tag}\n" for ch, tag in sentence)
                f.write("\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def up_to_date(out: Path) -> bool:
    script_time = Path(__file__).stat().st_mtime
    files = [out / f"{s}.conll" for s in SPLITS]
    return all(f.exists() and f.stat().st_mtime > script_time for f in files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="rewrite files that are up to date")
    args = parser.parse_args(argv)
    if not args.force and up_to_date(args.out):
        print("exists")
        print(json.dumps({"status": "exists", "out": str(args.out)}))
        return
    data, counts = build(args.corpus.read_text(encoding="utf-8").splitlines())
    args.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_atomic(args.out / f"{split}.conll", data[split])
    total = sum(c["articles"] for c in counts.values())
    print(f"{total} articles found in {args.corpus}", file=sys.stderr)
    for split, c in counts.items():
        print(f"{split:5s} " + "  ".join(f"{k} {v}" for k, v in c.items()), file=sys.stderr)
    print(json.dumps({"status": "written", "out": str(args.out), "articles": total, **counts}, ensure_ascii=False))


if __name__ == "__main__":
    main()
