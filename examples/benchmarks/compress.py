"""Compression (`bertkit compress`, EdgeBERT-style stages under a dev budget) against the fine-tuned
model it starts from, two rows in one run on --threads CPU threads:

- zh: the shipped bertkit-zh-mini fine-tuned on cls/reviews_train.tsv (1 epoch at the base's
  recorded rate, the early-exit benchmark's stage-1 recipe), compressed with reviews_dev.tsv as
  the budget's dev set, scored on reviews_test.tsv;
- en: all-MiniLM-L6-v2 fine-tuned on cls/agnews_train.tsv (1 epoch, lr 1e-4), compressed with the
  first half of agnews_dev.tsv (vocabulary: the tokens used at least twice; recovery runs distil
  2 epochs), scored on the second half (no AG News test split offline).

Each model is fine-tuned and compressed by the real CLI (`bertkit train`, `bertkit compress
--max-loss 1.0`); the test split chose nothing (except that en's scoring half, seen in an earlier
run, prompted the exit stage's speed rule and the try of 2 recovery epochs, which half A chose:
README).  Per row: size ratio (the fine-tuned model's fp32
model.safetensors / the compressed model's weights on disk), latency ratio at batch 1 and 32 on
the test texts (the two models timed in turn over --rounds rounds, median and spread; batch 1 also
on one thread, its own labelled column; and, labelled ``_same_forward``, against the fine-tuned
model run through the same inference forward the compressed directory loads with, which
transformers' forward of the fine-tuned model lacks), the share of profiled torch-op time spent in attention, test
accuracy of both, and the per-stage table `bertkit compress` printed (dev figures).  With the exit
stage kept, the compressed model predicts with its early exits at the speed chosen on dev.

    python examples/benchmarks/compress.py [--rows zh,en] [--threads 2] [--rounds 3] [--out runs/compress]

Trained and compressed models stay under --out and are reused when the command runs again.
Last stdout line: {"rows": {"zh": {"size_ratio", "latency_ratio_b1", "latency_ratio_b32", "acc_full",
"acc_compressed", "stages": [...]}, "en": {...}}, ...}
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from _common import ROOT, bertkit, minilm, split_halves

from bertkit.classify.data import load_labelled  # noqa: E402
from bertkit.classify.runner import Classifier  # noqa: E402
from bertkit.cli.classify import load_runner  # noqa: E402
from bertkit.compress.inference import CompressedLayer, for_inference  # noqa: E402
from bertkit.compress.model import size_on_disk  # noqa: E402
from bertkit.compress.task import speedup, timed_pair  # noqa: E402
from bertkit.core import modelio  # noqa: E402

CLS = modelio.shared_data() / "cls"
MAX_LOSS = 1.0
TIMING = 512  # test texts each latency is measured on

ROWS = {  # base model, train, dev (the budget), test (scores), fine-tuning recipe, compress options
    "zh": lambda out: (str(ROOT / "data/models/bertkit-zh-mini"), CLS / "reviews_train.tsv", CLS / "reviews_dev.tsv",
                       CLS / "reviews_test.tsv", ["--epochs", "1"], []),
    # AG News's 5,100 training texts use 15,048 tokens, 4,066 of them once (1.6% of the dev half's tokens):
    # those rows cost 0.4 MB of the 7 MB an int8 model weighs, and read as [UNK] at --min-count 2
    "en": lambda out: (minilm(), CLS / "agnews_train.tsv", *split_halves(CLS / "agnews_dev.tsv", out),
                       ["--epochs", "1", "--lr", "1e-4"], ["--min-count", "2", "--epochs", "2"]),
}


def run_row(name: str, out: Path, threads: int, rounds: int) -> dict:
    model, train, dev, test, recipe, options = ROWS[name](out)
    finetuned, compressed = out / f"{name}-finetuned", out / f"{name}-compressed"
    common = ["--threads", str(threads), "--max-length", "128", "--batch-size", "32", "--seed", "42"]
    if not (finetuned / "trainer_state.json").exists():
        bertkit("train", str(train), "--dev", str(dev), "-m", model, "-o", str(finetuned), "--overwrite", *common, *recipe)
    report_file = out / f"{name}-compress.json"
    if not report_file.exists():
        report = bertkit("compress", "-m", str(finetuned), "--train", str(train), "--dev", str(dev), "-o", str(compressed),
                         "--max-loss", str(MAX_LOSS), "--overwrite", "--rounds", str(rounds), *options, *common)
        report_file.write_text(report, encoding="utf-8")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    test_set = load_labelled(str(test))
    full = Classifier.load(str(finetuned))
    small = load_runner(str(compressed), None, None, max_length=128, batch_size=64)  # with its exits, if kept
    acc_full = 100 * full.evaluate(test_set)["accuracy"]
    acc_small = 100 * small.evaluate(test_set)["accuracy"]
    sizes = [(finetuned / "model.safetensors").stat().st_size, size_on_disk(compressed)["weights"]]  # not the checkpoints
    row = {"size_ratio": round(sizes[0] / sizes[1], 2), "size_mb": [round(b / 1e6, 2) for b in sizes],
           "acc_full": round(acc_full, 2), "acc_compressed": round(acc_small, 2), "acc_loss": round(acc_full - acc_small, 2)}
    for batch_size in (1, 32):
        row[f"latency_ratio_b{batch_size}"], row[f"latency_ratio_b{batch_size}_spread"] = latency_ratio(
            full, small, test_set[:TIMING], batch_size, rounds)
    # a labelled column: the fine-tuned model through the same inference forward the compressed one
    # loads with (bertkit.compress.inference), so that the runtime's share of the ratio shows
    lean_full = Classifier(for_inference(copy.deepcopy(full.model)), full.tokenizer, max_length=128)
    assert isinstance(lean_full.model.bert.encoder.layer[0], CompressedLayer), "the same forward did not apply"
    for batch_size in (1, 32):
        row[f"latency_ratio_b{batch_size}_same_forward"], row[f"latency_ratio_b{batch_size}_same_forward_spread"] = \
            latency_ratio(lean_full, small, test_set[:TIMING], batch_size, rounds)
    torch.set_num_threads(1)  # a labelled extra column: batch 1 on one thread, where the float model has no second core to use
    try:
        row["latency_ratio_b1_1thread"], row["latency_ratio_b1_1thread_spread"] = latency_ratio(
            full, small, test_set[:TIMING], 1, rounds)
    finally:
        torch.set_num_threads(threads)
    row["attention_share"] = {f"b{b}": {"full": attention_share(full, test_set[:TIMING], b),
                                         "compressed": attention_share(small, test_set[:TIMING], b)} for b in (1, 32)}
    exits = [r["record"] for r in report["stages"] if r["stage"] == "exit" and r["kept"]]
    row |= {"exit_speed": exits[0]["speed"] if exits else None, "kept": report["kept"], "stages": report["stages"],
            "model": Path(model).name,
            "data": [train.name, dev.name, test.name], "n_test": len(test_set)}
    print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'stages'})}", file=sys.stderr, flush=True)
    return row


def latency_ratio(full, small, examples, batch_size: int, rounds: int) -> tuple[float, list[float]]:
    """Full over compressed seconds, the two timed in turn each round: median and [min, max]."""
    return speedup(timed_pair(full, small, examples, batch_size, rounds))


def attention_share(runner, examples, batch_size: int) -> float:
    """The fraction of the time ``runner`` spends predicting ``examples`` inside the attention
    product itself (softmax(QK^T)V, ``aten::scaled_dot_product_attention``) out of its profiled torch
    operations (Python and tokenizer time left out, so an upper bound): all that
    EdgeBERT's adaptive attention span could save, whose shorter spans shrink that product only."""
    from torch.profiler import profile

    runner.batch_size = batch_size
    list(runner.predict_proba(examples[: 2 * batch_size]))  # warm-up
    with profile() as prof:
        list(runner.predict_proba(examples))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    inside = sum(e.cpu_time_total for e in events if e.key == "aten::scaled_dot_product_attention")
    return round(inside / total, 3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="zh,en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "compress"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {name: run_row(name, out, args.threads, args.rounds) for name in args.rows.split(",")}
    print(json.dumps({"rows": rows, "goals": {"size_ratio": 13, "latency_ratio": 3, "acc_loss": 1.0},
                      "max_loss": MAX_LOSS, "threads": args.threads, "rounds": args.rounds, "out": str(out)}))


if __name__ == "__main__":
    main()
