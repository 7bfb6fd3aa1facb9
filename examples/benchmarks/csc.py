"""Spelling correction on SIGHAN15: the shipped Soft-Masked BERT vs a plain BERT corrector trained
on the same data with the same budget; SIGHAN sentence-level scores, FPR and sentences/s.

    python examples/benchmarks/csc.py [--soft data/models/bertkit-zh-csc] [--plain runs/ft2/csc-plain]
    python examples/benchmarks/csc.py --train    # first retrain (GPU, then CPU) and dev-tune both

--train runs examples/train_models_gpu.sh in its correctors-only mode (stage 1: both models side
by side on one GPU, 2.4 minutes each, from the shipped bertkit-zh-mini, on synthetic errors plus
the SIGHAN pairs), fine-tunes each for 1,800 steps on the SIGHAN pairs alone (stage 2, CPU), then
tunes each model's default threshold on dev for confusion-set decoding. Both correctors run through the same `Corrector`
(one process, --threads CPU threads, each timed on the whole test set after a short warm-up).
Scores are x 100.
Last stdout line: {"soft_masked": {det_p, det_r, det_f1, cor_p, cor_r, cor_f1, fpr, sentences_per_s, ...},
                   "plain_bert": {...}}
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit import modelio  # noqa: E402
from bertkit.correct import Corrector, read_pairs  # noqa: E402
from bertkit.metrics import csc_scores  # noqa: E402

# stage 2, as in the paper: fine-tune each stage-1 corrector on the SIGHAN pairs alone (CPU)
FINE_TUNE = ["train", "--task", "correct", "runs/csc/train.tsv", "--dev", "runs/csc/dev.tsv", "--max-steps", "1800",
             "--batch-size", "32", "--lr", "5e-5", "--warmup", "0.1", "--eval-every", "200", "--save-every", "100",
             "--seed", "42", "--threads", "1", "--bf16", "--save-fp16"]


def train_both() -> tuple[str, str]:
    subprocess.run([sys.executable, "examples/make_csc_data.py", "-o", "runs/csc"], cwd=ROOT, check=True)
    env = {**os.environ, "BASE": str(ROOT / "data/models/bertkit-zh-mini"), "CSC": "runs/csc", "RUNS": "runs/gpu",
           "CORRECT_MINUTES": "2.4"}
    subprocess.run(["bash", "examples/train_models_gpu.sh"], cwd=ROOT, env=env, check=True)
    for name, extra in (("csc-soft", ["--detector-lr", "10"]), ("csc-plain", ["--plain"])):
        subprocess.run([sys.executable, "-m", "bertkit.cli", *FINE_TUNE, "-m", f"runs/gpu/{name}", "-o", f"runs/ft2/{name}",
                        *extra], cwd=ROOT, check=True)
        # each corrector's default threshold: the best on dev for the decoding the benchmark uses
        subprocess.run([sys.executable, "-m", "bertkit.cli", "correct", "--eval", "runs/csc/dev.tsv", "-m",
                        f"runs/ft2/{name}", "--tune"], cwd=ROOT, check=True)
    return str(ROOT / "runs/ft2/csc-soft"), str(ROOT / "runs/ft2/csc-plain")


def score(model_dir: str, pairs, threshold: float | None) -> dict:
    kwargs = {} if threshold is None else {"threshold": threshold}
    corrector = Corrector.load(model_dir, **kwargs)
    list(corrector.correct([p.source for p in pairs[:64]]))  # warm-up
    start = time.perf_counter()
    hyps = [text for text, _ in corrector.correct([p.source for p in pairs])]
    seconds = time.perf_counter() - start
    scores = {k: round(v * 100, 2) for k, v in asdict(csc_scores([p.source for p in pairs], [p.target for p in pairs], hyps)).items()}
    scores["sentences_per_s"] = round(len(pairs) / seconds, 1)
    scores["threshold"] = corrector.threshold
    return scores


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--soft", default=str(ROOT / "data/models/bertkit-zh-csc"))
    parser.add_argument("--plain", default=str(ROOT / "runs/ft2/csc-plain"))
    parser.add_argument("--test", default=str(modelio.shared_data() / "csc" / "sighan15_test.tsv"))
    parser.add_argument("--threshold", type=float, default=None, help="default: each model's own")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="retrain both correctors first: stage 1 on a GPU (runs/gpu), stage 2 on the CPU (runs/ft)")
    args = parser.parse_args()
    if args.train:
        args.soft, args.plain = train_both()
    torch.set_num_threads(args.threads)
    pairs = read_pairs(args.test)
    result = {}
    for name, model in (("soft_masked", args.soft), ("plain_bert", args.plain)):
        result[name] = score(model, pairs, args.threshold)
        print(f"{name} ({model}): {result[name]}", file=sys.stderr)
    result["test"] = Path(args.test).name
    result["threads"] = args.threads
    print(json.dumps(result))


if __name__ == "__main__":
    main()
