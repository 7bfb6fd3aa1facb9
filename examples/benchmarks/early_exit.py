"""Early exit (FastBERT self-distillation, `bertkit distill`) against the full model, two rows in
one run on --threads CPU threads:

- zh: the shipped bertkit-zh-mini (4 layers) on cls/reviews_{train,dev,test}.tsv, Chinese
  product and book reviews (FastBERT's own kind of data);
- en: all-MiniLM-L6-v2 (6 layers) on cls/agnews_{train,dev}.tsv; the dev file is split in two
  halves, the first chooses, the second scores (there is no AG News test split offline).

Each model is trained by the real CLI (both stages: fine-tuning, then self-distillation of the
students), then the speed is chosen on dev by `--target-loss 0.5` (the largest speed whose dev
accuracy stays within 0.5 points of the full model) and PABEE's patience likewise (the smallest
patience within 0.5 points), and both are scored on the test split, which chose nothing.
Per row: full-model and early-exit accuracy (points), mean exit layer, FLOPs ratio (full / early
exit, torch.utils.flop_counter) and wall-clock speedup at batch 1 and batch 32, the full model
(the same BertForSequenceClassification forward) and early exit timed in turn over --rounds
rounds, median with its spread.

    pip install -e '.[bench]'
    python examples/benchmarks/early_exit.py [--rows zh,en] [--threads 2] [--rounds 3]

Last stdout line: {"rows": {"zh": {"speed", "acc_full", "acc_exit", "flops_ratio", "speedup_b1",
"speedup_b32", ..., "pabee": {...}}, "en": {...}}, "threads": ..}
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import ROOT, bertkit, minilm, split_halves

from bertkit.classify.data import load_labelled  # noqa: E402
from bertkit.core import modelio  # noqa: E402
from bertkit.distill.curve import choose_speed, exit_curve, plot_curve  # noqa: E402
from bertkit.distill.model import ExitRule  # noqa: E402
from bertkit.distill.runner import EarlyExitRunner  # noqa: E402

CLS = modelio.shared_data() / "cls"
SPEEDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TARGET_LOSS = 0.5


# model, train, dev (chooses), test (scores), recipe: 1 fine-tuning epoch (what 2 cores allow), 3 epochs
# of self-distillation (dev student accuracy, en: 87.2 -> 88.6 at layer 1 over 1 epoch; zh: see README)
ROWS = {
    "zh": lambda out: (str(ROOT / "data/models/bertkit-zh-mini"), CLS / "reviews_train.tsv", CLS / "reviews_dev.tsv",
                       CLS / "reviews_test.tsv", ["--epochs", "1", "--lr", "5e-4", "--student-epochs", "3"]),
    "en": lambda out: (minilm(), CLS / "agnews_train.tsv", *split_halves(CLS / "agnews_dev.tsv", out),
                       ["--epochs", "1", "--lr", "1e-4", "--student-epochs", "3"]),
}


def train(model: str, train_file: Path, dev: Path, out: Path, recipe: list[str], threads: int) -> None:
    if (out / "bertkit.json").exists():
        print(f"{out} exists: reusing it", file=sys.stderr)
        return
    bertkit("distill", str(train_file), "--dev", str(dev), "-m", model, "-o", str(out), "--batch-size", "32",
            "--max-length", "128", "--threads", str(threads), "--seed", "42", "--target-loss", str(TARGET_LOSS), *recipe)


def best_patience(runner: EarlyExitRunner, dev, full_accuracy: float) -> int:
    """PABEE's patience chosen on dev the way the speed is: the smallest within the loss budget."""
    for patience in range(1, runner.model.num_layers):
        acc = runner.evaluate(dev, ExitRule(patience=patience), rounds=0)["accuracy"]
        if 100 * (full_accuracy - acc) <= TARGET_LOSS:
            return patience
    return runner.model.num_layers - 1


def score(runner: EarlyExitRunner, test, rule: ExitRule, rounds: int) -> dict:
    b32 = runner.evaluate(test, rule, batch_size=32, rounds=rounds)
    b1 = runner.evaluate(test, rule, batch_size=1, rounds=rounds)
    return {"acc_full": round(100 * b32["accuracy_full"], 2), "acc_exit": round(100 * b32["accuracy"], 2),
            "mean_exit_layer": round(b32["mean_exit_layer"], 3), "layers": b32["layers"],
            "flops_ratio": round(b32["flops_ratio"], 3),
            "speedup_b1": round(b1["speedup"], 3), "speedup_b1_spread": [round(b1["speedup_min"], 3), round(b1["speedup_max"], 3)],
            "speedup_b32": round(b32["speedup"], 3), "speedup_b32_spread": [round(b32["speedup_min"], 3), round(b32["speedup_max"], 3)],
            "n_test": b32["n"]}


def run_row(name: str, out: Path, threads: int, rounds: int) -> dict:
    model, train_file, dev_file, test_file, recipe = ROWS[name](out)
    directory = out / name
    start = time.perf_counter()
    train(model, train_file, dev_file, directory, recipe, threads)
    trained = time.perf_counter() - start
    runner = EarlyExitRunner.load(str(directory), speed=0.0)
    dev, test = load_labelled(str(dev_file)), load_labelled(str(test_file))
    curve = exit_curve(runner, dev, SPEEDS, batch_size=32, rounds=0, source=str(dev_file))  # choosing needs no clock
    plot_curve(curve, out / f"{name}_dev_curve.png", f"{name}: early exit on {dev_file.name} (dev)")
    speed = choose_speed(curve, TARGET_LOSS)
    patience = best_patience(runner, dev, curve[0]["accuracy_full"] / 100)
    row = {"speed": speed, **score(runner, test, ExitRule(speed=speed), rounds),
           "pabee": {"patience": patience, **score(runner, test, ExitRule(patience=patience), rounds)},
           "dev_curve": curve, "train_minutes": round(trained / 60, 1), "model": Path(model).name,
           "data": [train_file.name, dev_file.name, test_file.name]}
    print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'dev_curve'})}", file=sys.stderr)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="zh,en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="work folder (default: runs/early_exit-TIME); reused if it has the models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "runs" / time.strftime("early_exit-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    rows = {name: run_row(name, out, args.threads, args.rounds) for name in args.rows.split(",")}
    print(json.dumps({"rows": rows, "threads": args.threads, "rounds": args.rounds, "target_loss": TARGET_LOSS,
                      "out": str(out)}))


if __name__ == "__main__":
    main()
