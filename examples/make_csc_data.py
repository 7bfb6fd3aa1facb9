"""Write the spelling-correction training data of bertkit-zh-csc, from train splits only.

    python examples/make_csc_data.py -o runs/csc

- ``train.tsv`` / ``dev.tsv``: ../shared/data/csc/sighan13_14_15_train.tsv, shuffled with a fixed
  seed and split (``--dev-size`` pairs for dev: the SIGHAN test sets are never read).  SIGHAN's
  training pairs almost all contain errors while half of a test set is correct sentences, so
  dev also gets each of its targets as a correct sentence (target<TAB>target): over-correction
  then shows on dev, as on a test set.  SIGHAN's training data repeat text (the same essay
  passage split differently, in two or three of the sets), so a drawn dev pair whose target
  equals a training pair's, or shares with one a clause of ``--min-clause`` characters or more,
  or any run of ``--ngram`` characters, goes back to train: otherwise dev scores memorising, and
  picks the model that memorises best;
- ``synthetic.txt``: correct Chinese for synthetic errors: People's Daily, the wiki sample, the
  THUCNews/reviews/STS-B train texts, and the targets of the SIGHAN *train* part (never dev).
"""

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_pretrain_corpus import SHARED, peoples_daily, tsv_column  # noqa: E402


def clauses(sentence: str, min_chars: int) -> set[str]:
    return {c for c in re.split(r"[，。！？；：、,.!?;:\s]+", sentence) if len(c) >= min_chars}


def ngrams(sentence: str, n: int) -> set[str]:
    return {sentence[i : i + n] for i in range(len(sentence) - n + 1)}


def split_dev(pairs: list[str], dev_size: int, min_clause: int, ngram: int = 10) -> tuple[list[str], list[str]]:
    """The first ``dev_size`` pairs make dev, less those whose target equals a later pair's
    target, or shares with one a clause of ``min_clause`` characters or more, or any run of
    ``ngram`` characters (those join train); a pair repeated within dev stays there once.  The
    rest are train."""
    drawn, train = pairs[:dev_size], pairs[dev_size:]
    targets = [line.split("\t")[1] for line in train]
    seen_clauses = set().union(*(clauses(t, min_clause) for t in targets))
    seen_runs = set().union(*(ngrams(t, ngram) for t in targets))
    seen_targets = set(targets)

    def seen(target: str) -> bool:
        return target in seen_targets or bool(clauses(target, min_clause) & seen_clauses or ngrams(target, ngram) & seen_runs)

    dev = list(dict.fromkeys(line for line in drawn if not seen(line.split("\t")[1])))
    kept = set(dev)
    return dev, train + [line for line in drawn if line not in kept]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--dev-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--min-clause", type=int, default=8, help="shared clause length that sends a dev pair to train")
    parser.add_argument("--ngram", type=int, default=10, help="shared character run that sends a dev pair to train")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    pairs = (SHARED / "csc/sighan13_14_15_train.tsv").read_text(encoding="utf-8").splitlines()
    random.Random(args.seed).shuffle(pairs)
    dev, train = split_dev(pairs, args.dev_size, args.min_clause, args.ngram)
    clean = [f"{t}\t{t}" for t in (line.split("\t")[1] for line in dev)]
    (out / "dev.tsv").write_text("\n".join(dev + clean) + "\n", encoding="utf-8")
    (out / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
    n = 0
    with (out / "synthetic.txt").open("w", encoding="utf-8") as fh:
        texts = [
            peoples_daily(SHARED / "corpus/peoples_daily_199801.pos.txt"),
            (l.strip() for l in (SHARED / "corpus/wiki_zh_200.txt").open(encoding="utf-8")),
            tsv_column(SHARED / "cls/thucnews_train.tsv", 1),
            tsv_column(SHARED / "cls/reviews_train.tsv", 1),
            tsv_column(SHARED / "sts/zh_stsb_train.tsv", 0, header=False),
            (line.split("\t")[1] for line in train),
        ]
        for source in texts:
            for text in source:
                if text.strip():
                    fh.write(text.replace("\t", " ").strip() + "\n")
                    n += 1
    print(f"{len(train)} train pairs, {len(dev)} dev pairs + {len(clean)} correct dev sentences, {n} lines of correct text -> {out}")


if __name__ == "__main__":
    main()
