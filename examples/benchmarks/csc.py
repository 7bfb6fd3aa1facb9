"""Spelling correction on SIGHAN15: a Soft-Masked BERT corrector (default: the shipped one), and
beside it, when one is given or trained, a plain BERT corrector trained on the same data with the
same budget; SIGHAN sentence-level scores, FPR and sentences/s.

    python examples/benchmarks/csc.py                           # the shipped corrector alone
    python examples/benchmarks/csc.py --soft DIR --plain DIR    # a pair, with a paired bootstrap
    python examples/benchmarks/csc.py --train    # retrain an equal-steps pair first (one GPU, about nine minutes)

No plain baseline is shipped: the one trained beside bertkit-zh-csc lived in a git-ignored folder
and is gone.  Soft-Masked vs plain BERT at equal steps over several seeds, on the CPU, is
examples/train_csc_control.sh with examples/benchmarks/csc_seeds.py.

--train writes the data (examples/make_csc_data.py) and runs examples/train_models_gpu.sh in its
correctors-only mode from the shipped bertkit-zh-mini, into a new folder runs/csc-train-TIME:
both stages of both kinds on one GPU, the same steps and the same choices for each, each kind's
final model and its default threshold (confusion-set decoding) picked on dev; then it scores that
pair instead of the defaults.  Both correctors run through the same `Corrector` (one process,
--threads CPU threads, each timed on the whole test set after a short warm-up; sentences/s is
the median of --repeats passes).  Scores are x 100.
Last stdout line: {"soft_masked": {det_p, det_r, det_f1, cor_p, cor_r, cor_f1, fpr, sentences_per_s, ...},
                   "plain_bert": {...}, "cor_f1_soft_minus_plain_ci95": [lo, hi], "soft_better_share": s}
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
    parser.add_argument("--soft", default=str(ROOT / "data/models/bertkit-zh-csc"))
    parser.add_argument("--plain", default=None, help="a plain BERT corrector to compare with (default: none)")
    parser.add_argument("--test", default=str(modelio.shared_data() / "csc" / "sighan15_test.tsv"))
    parser.add_argument("--threshold", type=float, default=None, help="default: each model's own")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per corrector (median)")
    parser.add_argument("--train", action="store_true", help="retrain an equal-steps pair first, on one GPU, and score it")
    args = parser.parse_args()
    if args.train:
        args.soft, args.plain = train_both()
    torch.set_num_threads(args.threads)
    pairs = read_correction_pairs(args.test)
    models = {"soft_masked": args.soft, **({"plain_bert": args.plain} if args.plain else {})}
    result, outputs = score_both(models, pairs, args.threshold, args.repeats)
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
