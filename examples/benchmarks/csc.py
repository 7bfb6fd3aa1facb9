"""Spelling correction on SIGHAN15: the shipped Soft-Masked BERT corrector, and beside it, in
the same run, an equal-steps pair trained from the shipped base: Soft-Masked BERT and the
paper's plain BERT baseline, the same data, steps and schedule for both; SIGHAN sentence-level
scores, FPR, sentences/s and a paired bootstrap of the pair's difference.

    python examples/benchmarks/csc.py                   # trains the CPU pair (seed 1), about 30 min on 2 cores
    python examples/benchmarks/csc.py --seed 2          # another seed of the same pair
    python examples/benchmarks/csc.py --soft DIR --plain DIR   # score a pair you already have
    python examples/benchmarks/csc.py --train           # retrain the larger equal-steps pair on one GPU (about nine minutes)
    python examples/benchmarks/csc.py --shipped-only    # the shipped corrector alone, no baseline (seconds)

The CPU pair's budget (examples/train_csc_control.sh): both start from the shipped
bertkit-zh-mini; stage 1, 800 steps of 32 on the SIGHAN train pairs plus synthetic errors drawn
into correct text (lr 1e-4); stage 2, 300 steps of 32 on the SIGHAN pairs (lr 5e-5) from stage
1's best-on-dev checkpoint; each model's threshold tuned on dev.  The two train side by side on
one thread each, into a new folder runs/csc-cpu-TIME (data from examples/make_csc_data.py).  The
shipped corrector had a GPU budget (data/models/README.md), so it is not the pair's equal: its
row shows what the shipped model scores, the pair shows what soft masking buys at equal steps.
Over several seeds: examples/benchmarks/csc_seeds.py.

--train writes the data and runs examples/train_models_gpu.sh in its correctors-only mode from
the shipped bertkit-zh-mini, into runs/csc-train-TIME: both stages of both kinds on one GPU, the
same steps and choices for each.  Every corrector runs through the same `Corrector` (one
process, --threads CPU threads, each timed on the whole test set after a short warm-up;
sentences/s is the median of --repeats passes, alternating between correctors).  Scores x 100.
Last stdout line: {"shipped": {det_p, det_r, det_f1, cor_p, cor_r, cor_f1, fpr, sentences_per_s, ...},
                   "soft_masked": {...}, "plain_bert": {...}, "pair": "...",
                   "cor_f1_soft_minus_plain_ci95": [lo, hi], "soft_better_share": s}
(the last two from a paired bootstrap over the test sentences, 2,000 resamples).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402
from bertkit.correct.data import read_correction_pairs  # noqa: E402
from bertkit.correct.runner import Corrector  # noqa: E402
from bertkit.core.metrics import correction_outcomes, csc_scores, paired_bootstrap_cor_f1  # noqa: E402


def train_both() -> tuple[str, str]:
    subprocess.run([sys.executable, "examples/make_csc_data.py", "-o", "runs/csc"], cwd=ROOT, check=True)
    runs = ROOT / "runs" / time.strftime("csc-train-%Y%m%d-%H%M%S")
    env = {**os.environ, "BASE": str(ROOT / "data/models/bertkit-zh-mini"), "CSC": "runs/csc", "RUNS": str(runs)}
    subprocess.run(["bash", "examples/train_models_gpu.sh"], cwd=ROOT, env=env, check=True)
    return str(runs / "csc-soft"), str(runs / "csc-plain")


def train_cpu_pair(seed: int) -> tuple[str, str]:
    runs = ROOT / "runs" / time.strftime("csc-cpu-%Y%m%d-%H%M%S")
    subprocess.run([sys.executable, "examples/make_csc_data.py", "-o", str(runs / "data")], cwd=ROOT, check=True)
    env = {**os.environ, "BASE": str(ROOT / "data/models/bertkit-zh-mini"), "CSC": str(runs / "data")}
    print(f"training the CPU pair, seed {seed}, into {runs} (logs there)", file=sys.stderr)
    subprocess.run(["bash", "examples/train_csc_control.sh", str(runs), str(seed)], cwd=ROOT, env=env, check=True)
    return str(runs / f"s2-soft-{seed}"), str(runs / f"s2-plain-{seed}")


def correct_all(corrector: Corrector, pairs) -> tuple[list[str], float]:
    start = time.perf_counter()
    hyps = [text for text, _ in corrector.correct([p.source for p in pairs])]
    return hyps, time.perf_counter() - start


def score_both(models: dict[str, str], pairs, threshold: float | None, repeats: int) -> tuple[dict, dict]:
    """Each corrector's scores and outputs, and its speed as the median of `repeats` timed passes over the whole
    test set; the passes alternate between the correctors so that drift in the machine's speed
    touches both alike."""
    kwargs = {} if threshold is None else {"threshold": threshold}
    correctors = {name: Corrector.load(path, **kwargs) for name, path in models.items()}
    for corrector in correctors.values():
        list(corrector.correct([p.source for p in pairs[:64]]))  # warm-up
    outputs, seconds = {}, {name: [] for name in models}
    for _ in range(repeats):
        for name, corrector in correctors.items():
            outputs[name], took = correct_all(corrector, pairs)
            seconds[name].append(took)
    result = {}
    for name, corrector in correctors.items():
        scores = csc_scores([p.source for p in pairs], [p.target for p in pairs], outputs[name])
        result[name] = {k: round(v * 100, 2) for k, v in asdict(scores).items()}
        result[name]["sentences_per_s"] = round(len(pairs) / statistics.median(seconds[name]), 1)
        result[name]["threshold"] = corrector.threshold
        print(f"{name} ({models[name]}): {result[name]}", file=sys.stderr)
    return result, outputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shipped", default=str(ROOT / "data/models/bertkit-zh-csc"))
    parser.add_argument("--soft", default=None, help="the pair's Soft-Masked corrector (default: train the CPU pair)")
    parser.add_argument("--plain", default=None, help="the pair's plain BERT corrector (default: train the CPU pair)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the CPU pair")
    parser.add_argument("--shipped-only", action="store_true", help="score the shipped corrector alone")
    parser.add_argument("--test", default=str(modelio.shared_data() / "csc" / "sighan15_test.tsv"))
    parser.add_argument("--threshold", type=float, default=None, help="default: each model's own")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per corrector (median)")
    parser.add_argument("--train", action="store_true", help="retrain an equal-steps pair first, on one GPU, and score it")
    args = parser.parse_args()
    if (args.soft is None) != (args.plain is None):
        parser.error("give both --soft and --plain, or neither")
    pairs = read_correction_pairs(args.test)  # a bad test file fails before any training
    if args.train:
        args.soft, args.plain = train_both()
        pair = "equal steps on one GPU (examples/train_models_gpu.sh)"
    elif args.soft is None and not args.shipped_only:
        args.soft, args.plain = train_cpu_pair(args.seed)
        pair = f"equal steps on the CPU, seed {args.seed} (examples/train_csc_control.sh)"
    else:
        pair = "given" if args.soft else "none"
    torch.set_num_threads(args.threads)
    models = {"shipped": args.shipped, **({"soft_masked": args.soft, "plain_bert": args.plain} if args.soft else {})}
    result, outputs = score_both(models, pairs, args.threshold, args.repeats)
    result["pair"] = pair
    if args.plain:
        sources, targets = [p.source for p in pairs], [p.target for p in pairs]
        soft, plain = (correction_outcomes(sources, targets, outputs[k]) for k in ("soft_masked", "plain_bert"))
        boot = paired_bootstrap_cor_f1(soft, plain)
        result["cor_f1_soft_minus_plain_ci95"] = [round(v * 100, 2) for v in boot["diff_ci95"]]
        result["soft_better_share"] = round(boot["a_better"], 3)
    result["test"] = Path(args.test).name
    result["threads"] = args.threads
    print(json.dumps(result))


if __name__ == "__main__":
    main()
