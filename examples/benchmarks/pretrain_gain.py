"""Does pretraining help? bertkit-zh-mini fine-tuned on THUCNews headlines vs the same
architecture from random init, each side at its own best learning rate, scored on a split that
chose nothing; both through the real `bertkit train` / `bertkit eval`.

- THUCNews train (9,000 headlines) is split once, with a fixed seed, into 8,000 for training and
  1,000 held out as a test set; THUCNews dev (1,000) picks the checkpoint within a run (the loop
  keeps the dev-best) and each side's learning rate from the same grid (--lrs).  The test split
  is read only to report the chosen runs.
- Same recipe otherwise: --epochs 3, --batch-size 32, --max-length 64, the seed.
- Runs go --jobs at a time, each on --threads threads (default 2 x 1 on 2 cores).

    python examples/benchmarks/pretrain_gain.py [--lrs 5e-5,1e-4,2e-4,5e-4] [--seed 42] [--jobs 2]

Last stdout line: {"pretrained": {"lr", "dev_acc", "test_acc"}, "random_init": {...},
"gain_test": pretrained - random init test accuracy, "runs": every (side, lr): dev and test}.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from _common import ROOT, bertkit
from transformers import AutoConfig, AutoModelForMaskedLM

from bertkit.core import modelio  # noqa: E402


def random_twin(model_dir: str, out: Path, seed: int) -> Path:
    """Same config and tokenizer as ``model_dir``, freshly initialised weights."""
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(model_dir)
    modelio.save_pretrained(AutoModelForMaskedLM.from_config(config), modelio.load_tokenizer(model_dir), out)
    return out


def split_train(train: Path, out: Path, test_size: int = 1000, seed: int = 0) -> tuple[Path, Path]:
    """THUCNews train -> (train part, held-out test part), the same split for every run."""
    header, *rows = train.read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(rows)
    parts = {"train_part.tsv": rows[test_size:], "test_part.tsv": rows[:test_size]}
    for name, part in parts.items():
        (out / name).write_text("\n".join([header, *part]) + "\n", encoding="utf-8")
    return out / "train_part.tsv", out / "test_part.tsv"


def accuracy(model: Path, data: Path) -> float:
    out = bertkit("eval", str(data), "-m", str(model), log=model / "eval.log")
    return round(json.loads(out.strip().splitlines()[-1])["accuracy"] * 100, 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "bertkit-zh-mini"))
    parser.add_argument("--lrs", default="5e-5,1e-4,2e-4,5e-4", help="the grid each side's learning rate is chosen from")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--seed", default="42")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", default="1", help="threads per run")
    args = parser.parse_args()
    cls = modelio.shared_data() / "cls"
    dev = cls / "thucnews_dev.tsv"
    recipe = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--seed", args.seed,
              "--threads", args.threads, "--max-length", "64"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, test = split_train(cls / "thucnews_train.tsv", tmp)
        inits = {"pretrained": args.model, "random_init": str(random_twin(args.model, tmp / "random", int(args.seed)))}
        grid = [(side, lr) for side in inits for lr in args.lrs.split(",")]

        def run(job):
            side, lr = job
            start, out = time.time(), tmp / f"{side}-{lr}"
            bertkit("train", str(train), "--dev", str(dev), "-m", inits[side], "-o", str(out), "--lr", lr, *recipe,
                    log=tmp / f"{side}-{lr}.log")  # runs go on in parallel: a log each
            result = {"dev_acc": accuracy(out, dev), "test_acc": accuracy(out, test)}
            print(f"{side} lr {lr}: {result} ({time.time() - start:.0f}s)", file=sys.stderr)
            return result

        with ThreadPoolExecutor(args.jobs) as pool:
            runs = dict(zip(grid, pool.map(run, grid)))
    chosen = {}
    for side in inits:  # each side's rate chosen on dev; ties go to the smaller rate (the grid's order)
        lr = max((lr for s, lr in grid if s == side), key=lambda lr: runs[side, lr]["dev_acc"])
        chosen[side] = {"lr": lr, **runs[side, lr]}
    print(json.dumps({
        **chosen,
        "gain_test": round(chosen["pretrained"]["test_acc"] - chosen["random_init"]["test_acc"], 2),
        "gain_dev": round(chosen["pretrained"]["dev_acc"] - chosen["random_init"]["dev_acc"], 2),
        "runs": {f"{side} {lr}": r for (side, lr), r in runs.items()},
        "recipe": " ".join(recipe), "train": "THUCNews train minus 1,000 held out (seed 0)", "test": "those 1,000",
    }))


if __name__ == "__main__":
    main()
