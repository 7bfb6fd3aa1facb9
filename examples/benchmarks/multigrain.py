"""Lattice-BERT (`bertkit pretrain --multigrain`) against character-only masked-LM pretraining, the
same layers, hidden size, corpus, starting point and wall-clock budget, then both fine-tuned with
the same recipe on four Chinese tasks.

Stages (each skipped when its output exists, so an interrupted run goes on where it stopped and
one command reproduces the whole):
1. corpus: `examples/make_pretrain_corpus.py` (the shipped base's corpus: train splits only);
2. pretrain: both arms continue from the shipped bertkit-zh-mini for --steps steps each (the same
   linear schedule to zero at --pretrain-lr, batches of 64 sequences of 128 units), side by side
   (--jobs 2) on --threads threads each, so that both see the same machine:
   char = `bertkit pretrain` (its masked LM, whole-word masking, 128 WordPieces a sequence),
   lattice = `bertkit pretrain --multigrain` (jieba's dictionary, the --words most used words,
   128 characters + words a sequence).  Equal steps, not equal minutes: a schedule cut by the
   clock ends at a different rate in each arm; the wall-clock each arm took is reported, and the
   lattice arm's extra time is the step-time ratio.  One pretraining run per arm: the 2 cores
   allow no more (the issue accepts it).  Step time = training seconds / steps from each run's
   trainer_state.json;
3. fine-tune: each arm on THUCNews (train minus 1,000 held-out rows as test: the THUCNews test
   split is kept from us), reviews, People's Daily NER (--pd-sentences of its ~36,000 training
   sentences, seed 0: a full epoch is half an hour a run at 1 thread, 12 runs) and Weibo NER, --seeds seeds each, the rate
   the base records for both (5e-4) and --epochs / --ner-epochs; dev picks checkpoints;
4. score on each task's test split (chose nothing): accuracy (classification) or strict entity F1
   (NER), x 100.

    python examples/benchmarks/multigrain.py [--steps 600] [--seeds 42,1,2] [--jobs 2] [--threads 1]

Last stdout line: {"tasks": {"thucnews": {"char": {"mean", "spread", "runs"}, "lattice": {...},
"gain"}, ...}, "avg_gain": lattice minus char (points, mean over the four tasks),
"step_time_ratio": lattice / char seconds per step, "pretrain": {...}}
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, bertkit

from bertkit.core import modelio  # noqa: E402

BASE = str(ROOT / "data/models/bertkit-zh-mini")
DATA = modelio.shared_data()
ARMS = ("char", "lattice")
FINE_TUNE_LR = "5e-4"  # the rate the base records for both tasks (its bertkit.json); pretraining outputs do not carry it
CLASSIFY = ("thucnews", "reviews")
NER = ("pd", "weibo")


def corpus(out: Path) -> Path:
    path = out / "corpus.txt"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "examples/make_pretrain_corpus.py"), "-o", str(path)], check=True)
    return path


def pretrain(arm: str, text: Path, out: Path, steps: int, threads: int, words: int, lr: str) -> Path:
    directory = out / f"pretrain-{arm}"
    if not (directory / "trainer_state.json").exists():
        extra = ["--multigrain", "--words", str(words)] if arm == "lattice" else []
        resume = "--resume" if (directory / "checkpoints/last").exists() else "--overwrite"
        bertkit("pretrain", str(text), "-m", BASE, "-o", str(directory), resume, "--max-steps", str(steps),
                "--epochs", "1", "--lr", lr, "--threads", str(threads), "--seed", "42", *extra, log=out / f"pretrain-{arm}.log")
    return directory


def step_seconds(directory: Path) -> float:
    state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    return state["train_seconds_this_run"] / max(1, state["step"])


def thucnews_split(out: Path) -> dict:
    """THUCNews train minus 1,000 rows (seed 0) to train on, those rows as test, dev as dev."""
    train, test = out / "thucnews_train_part.tsv", out / "thucnews_test_part.tsv"
    if not test.exists():
        header, *rows = (DATA / "cls/thucnews_train.tsv").read_text(encoding="utf-8").splitlines()
        random.Random(0).shuffle(rows)
        test.write_text("\n".join([header, *rows[:1000]]) + "\n", encoding="utf-8")
        train.write_text("\n".join([header, *rows[1000:]]) + "\n", encoding="utf-8")
    return {"train": train, "dev": DATA / "cls/thucnews_dev.tsv", "test": test}


def sample_sentences(source: Path, target: Path, count: int) -> Path:
    """`count` sentences of a CoNLL file (seed 0), in their original order (made again when the
    file is older than its source)."""
    if count < 1:
        raise SystemExit(f"error: --pd-sentences must be 1 or more, not {count}")
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        sentences = [s for s in source.read_text(encoding="utf-8").split("\n\n") if s.strip()]
        keep = sorted(random.Random(0).sample(range(len(sentences)), min(count, len(sentences))))
        target.write_text("\n\n".join(sentences[i].strip("\n") for i in keep) + "\n", encoding="utf-8")
    return target


def tasks(out: Path, pd_sentences: int) -> dict:
    pd = out / "peoples_daily"
    subprocess.run([sys.executable, str(ROOT / "examples/ner_peoples_daily.py"), "--out", str(pd)], check=True,
                   stdout=subprocess.DEVNULL)
    pd_train = sample_sentences(pd / "train.conll", out / f"pd_train_{pd_sentences}.conll", pd_sentences)
    return {"thucnews": thucnews_split(out),
            "reviews": {s: DATA / f"cls/reviews_{s}.tsv" for s in ("train", "dev", "test")},
            "pd": {"train": pd_train, "dev": pd / "dev.conll", "test": pd / "test.conll"},
            "weibo": {s: DATA / f"ner/weibo_{s}.conll" for s in ("train", "dev", "test")}}


def finetune(task: str, files: dict, model: Path, directory: Path, seed: int, threads: int, epochs: str) -> float:
    log = directory.with_suffix(".log")
    if not (directory / "trainer_state.json").exists():
        resume = ["--resume"] if (directory / "checkpoints/last").exists() else ["--overwrite"]
        ner = ["--task", "ner", "--fix-tags"] if task in NER else []
        bertkit("train", str(files["train"]), *ner, "--dev", str(files["dev"]), "-m", str(model), "-o", str(directory),
                "--seed", str(seed), "--threads", str(threads), "--epochs", epochs, "--max-length", "128",
                "--lr", FINE_TUNE_LR, *resume,
                log=log)
    scores = json.loads(bertkit("eval", str(files["test"]), "-m", str(directory), "--threads", str(threads), log=log))
    return scores["f1"] if task in NER else round(100 * scores["accuracy"], 2)  # NER's eval reports points already


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2), "spread": [min(values), max(values)], "runs": values}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600, help="pretraining steps per arm (about 20 minutes at 1 thread)")
    parser.add_argument("--words", type=int, default=20000, help="lattice arm's word vocabulary")
    parser.add_argument("--pretrain-lr", default="1e-4", help="both arms: a continued pretraining, gentler than 5e-4")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--epochs", default="1", help="fine-tuning epochs, classification")
    parser.add_argument("--ner-epochs", default="1", help="fine-tuning epochs, People's Daily NER")
    parser.add_argument("--weibo-epochs", default="10",
                        help="fine-tuning epochs, Weibo NER (1,350 sentences: one epoch is 43 steps and scores F1 0; "
                             "the base's NER rate was chosen at 10)")
    parser.add_argument("--pd-sentences", type=int, default=8000,
                        help="People's Daily training sentences (of ~36,000: a full epoch is ~30 min a run at 1 thread)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (the two pretraining arms, then fine-tuning)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--out", default=str(ROOT / "runs" / "multigrain"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = corpus(out)
    with ThreadPoolExecutor(args.jobs) as pool:  # each arm is a subprocess: threads only wait
        built = pool.map(lambda arm: pretrain(arm, text, out, args.steps, args.threads, args.words,
                                              args.pretrain_lr), ARMS)
        models = dict(zip(ARMS, built))
    files = tasks(out, args.pd_sentences)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(task, arm, seed) for task in (*CLASSIFY, *NER) for arm in ARMS for seed in seeds]

    def run(job):
        task, arm, seed = job
        start = time.time()
        epochs = args.weibo_epochs if task == "weibo" else args.ner_epochs if task in NER else args.epochs
        score = finetune(task, files[task], models[arm], out / f"{task}-{arm}-{seed}", seed, args.threads, epochs)
        print(f"{task} {arm} seed {seed}: {score} ({time.time() - start:.0f}s)", file=sys.stderr, flush=True)
        return score

    with ThreadPoolExecutor(args.jobs) as pool:  # each job is a subprocess: threads only wait
        scores = dict(zip(jobs, pool.map(run, jobs)))
    table = {}
    for task in (*CLASSIFY, *NER):
        row = {arm: summary([scores[task, arm, s] for s in seeds]) for arm in ARMS}
        table[task] = row | {"gain": round(row["lattice"]["mean"] - row["char"]["mean"], 2)}
    step = {arm: step_seconds(models[arm]) for arm in ARMS}
    print(json.dumps({
        "tasks": table, "avg_gain": round(statistics.mean(r["gain"] for r in table.values()), 2),
        "step_time_ratio": round(step["lattice"] / step["char"], 3),
        "pretrain": {arm: {"steps": args.steps, "seconds_per_step": round(step[arm], 3),
                           "minutes": round(step[arm] * args.steps / 60, 1)} for arm in ARMS},
        "seeds": seeds, "pd_train_sentences": args.pd_sentences, "epochs": args.epochs, "ner_epochs": args.ner_epochs, "weibo_epochs": args.weibo_epochs, "threads": args.threads,
        "goal": {"avg_gain": 1.5, "step_time_ratio": 1.3}, "out": str(out)}))


if __name__ == "__main__":
    main()
