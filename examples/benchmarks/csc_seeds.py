"""Soft-Masked BERT vs plain BERT across training seeds: is the paper's gain larger than the
spread between two runs of the same recipe?

One pair of correctors (examples/benchmarks/csc.py) cannot say: on SIGHAN15 the 95% interval of
one pair's correction-F1 difference is about 4.5 points wide, and a new seed moves a small model's
F1 by more than the paper's +1.5.  This scores every pair that examples/train_csc_control.sh
trained (RUNS/s2-soft-SEED and RUNS/s2-plain-SEED: the same data, steps and schedule for both
kinds, one seed per pair; a seed fixes the synthetic errors, the batch order and the detector's
initialisation) on each test set, each model at its own dev-tuned threshold with confusion-set
decoding, and reports the per-seed differences, their mean and the number of seeds where the
Soft-Masked model is ahead.  Scores are x 100.

    bash examples/train_csc_control.sh runs/control 1 2 3 4     # CPU, about 25 minutes a seed
    python examples/benchmarks/csc_seeds.py --runs runs/control --test ../shared/data/csc/sighan15_test.tsv --test runs/s13.tsv

Last stdout line: {"seeds": [...], "<test>": {"soft_masked": {cor_f1, det_f1, fpr: per-seed lists},
"plain_bert": {...}, "cor_f1_soft_minus_plain": [per seed], "cor_f1_soft_minus_plain_mean": m,
"cor_f1_soft_minus_plain_sd": s, "cor_f1_soft_minus_plain_ci95": [lo, hi] (t interval over the seeds,
2 to 10 seeds), "soft_ahead_seeds": k}, ...}
"""

import argparse
import json
import re
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402
from bertkit.correct.data import read_correction_pairs  # noqa: E402
from bertkit.correct.runner import Corrector  # noqa: E402

KINDS = {"soft_masked": "soft", "plain_bert": "plain"}
REPORTED = ("cor_f1", "det_f1", "fpr")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t, 97.5%


def seeds_in(runs: Path) -> list[str]:
    """Seeds with a finished model of both kinds (a pair missing one kind is left out, and said so)."""
    found = {kind: {m.group(1) for p in runs.glob(f"s2-{kind}-*") if (m := re.fullmatch(rf"s2-{kind}-(\w+)", p.name))
                    and modelio.Manifest.read(p).kind == "corrector"} for kind in KINDS.values()}
    both = found["soft"] & found["plain"]
    for seed in sorted((found["soft"] | found["plain"]) - both):
        print(f"seed {seed}: only one kind finished, left out", file=sys.stderr)
    return sorted(both, key=lambda s: (len(s), s))


def score(model: Path, tests: dict[str, list]) -> dict[str, dict[str, float]]:
    """One model's scores on each test set (the model loads once)."""
    corrector = Corrector.load(str(model))
    result = {}
    for name, pairs in tests.items():
        scores = asdict(corrector.scores(pairs))
        result[name] = {k: round(scores[k] * 100, 2) for k in REPORTED}
    return result


def summarise(per_seed: dict[str, dict[str, dict]], seeds: list[str]) -> dict:
    out = {name: {k: [per_seed[name][s][k] for s in seeds] for k in REPORTED} for name in KINDS}
    diffs = [round(a - b, 2) for a, b in zip(out["soft_masked"]["cor_f1"], out["plain_bert"]["cor_f1"])]
    out["cor_f1_soft_minus_plain"] = diffs
    out["cor_f1_soft_minus_plain_mean"] = round(statistics.mean(diffs), 2)
    out["cor_f1_soft_minus_plain_sd"] = round(statistics.stdev(diffs), 2) if len(diffs) > 1 else None
    if 1 < len(diffs) <= len(T975) + 1:  # the seeds as a sample of training runs: t interval of the mean difference
        half = T975[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
        out["cor_f1_soft_minus_plain_ci95"] = [round(statistics.mean(diffs) - half, 2), round(statistics.mean(diffs) + half, 2)]
    out["soft_ahead_seeds"] = sum(d > 0 for d in diffs)
    for name in KINDS:
        out[name]["cor_f1_mean"] = round(statistics.mean(out[name]["cor_f1"]), 2)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=str(ROOT / "runs/control"))
    parser.add_argument("--test", action="append", help="source<TAB>target file; repeat for several "
                        "(default: SIGHAN15 test)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    seeds = seeds_in(runs)
    if not seeds:
        sys.exit(f"no finished pairs s2-soft-SEED / s2-plain-SEED in {runs}: run examples/train_csc_control.sh first")
    tests = args.test or [str(modelio.shared_data() / "csc" / "sighan15_test.tsv")]
    tests = {Path(test).name: read_correction_pairs(test) for test in tests}
    scores = {name: {s: score(runs / f"s2-{kind}-{s}", tests) for s in seeds} for name, kind in KINDS.items()}
    result = {"seeds": seeds}
    for test in tests:
        result[test] = summarise({name: {s: scores[name][s][test] for s in seeds} for name in KINDS}, seeds)
        print(f"{test}: {result[test]}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
