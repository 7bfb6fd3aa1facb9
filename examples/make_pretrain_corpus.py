"""Write the pretraining corpus of bertkit-zh-mini: shared corpora + the text of train splits only.

    python examples/make_pretrain_corpus.py -o runs/corpus/zh_pretrain.txt

Never reads a dev or test split. People's Daily loses its word/POS tags (jieba segments
everything alike); SIGHAN contributes only its corrected (target) side.
"""

import argparse
import re
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def peoples_daily(path):
    for line in path.open(encoding="utf-8"):
        words = [re.sub(r"/[A-Za-z]+$", "", tok) for tok in line.split()]
        text = "".join(w.lstrip("[") for w in words)
        text = re.sub(r"\][a-z]+", "", text)  # bracketed compound tags like [中央/n 电视台/n]nt
        if text:
            yield text


def tsv_column(path, column, header=True):
    with path.open(encoding="utf-8") as fh:
        if header:
            next(fh)
        for line in fh:
            cells = line.rstrip("\n").split("\t")
            if len(cells) > column and cells[column].strip():
                yield cells[column].strip()


def sources():
    yield from peoples_daily(SHARED / "corpus/peoples_daily_199801.pos.txt")
    yield from (l.strip() for l in (SHARED / "corpus/wiki_zh_200.txt").open(encoding="utf-8") if l.strip())
    yield from tsv_column(SHARED / "cls/thucnews_train.tsv", 1)
    yield from tsv_column(SHARED / "cls/reviews_train.tsv", 1)
    yield from tsv_column(SHARED / "csc/sighan13_14_15_train.tsv", 1, header=False)
    yield from tsv_column(SHARED / "sts/zh_stsb_train.tsv", 0, header=False)
    yield from tsv_column(SHARED / "sts/zh_stsb_train.tsv", 1, header=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = chars = 0
    with out.open("w", encoding="utf-8") as fh:
        for text in sources():
            fh.write(text.replace("\t", " ") + "\n")
            n += 1
            chars += len(text)
    print(f"{n} lines, {chars} characters -> {out}")


if __name__ == "__main__":
    main()
