"""Does pretraining help? THUCNews dev accuracy of bertkit-zh-mini fine-tuned vs the same
architecture from random init, same recipe, both through the real `bertkit train` / `bertkit eval`.

    python examples/benchmarks/pretrain_gain.py [--model data/models/bertkit-zh-mini] [--threads 2]

Last stdout line: {"pretrained_acc": .., "random_init_acc": .., ...}
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForMaskedLM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402


def bertkit(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "bertkit.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"bertkit {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def random_twin(model_dir: str, out: Path, seed: int) -> Path:
    """Same config and tokenizer as ``model_dir``, freshly initialised weights."""
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(model_dir)
    modelio.save_pretrained(AutoModelForMaskedLM.from_config(config), modelio.load_tokenizer(model_dir), out)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "bertkit-zh-mini"))
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--lr", default="1e-4")
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--seed", default="42")
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    cls = modelio.shared_data() / "cls"
    train, dev = cls / "thucnews_train.tsv", cls / "thucnews_dev.tsv"
    recipe = ["--epochs", args.epochs, "--lr", args.lr, "--batch-size", args.batch_size, "--seed", args.seed,
              "--threads", args.threads, "--max-length", "64"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"pretrained": args.model, "random_init": str(random_twin(args.model, tmp / "random", int(args.seed)))}
        for name, init in models.items():
            start = time.time()
            bertkit("train", str(train), "--dev", str(dev), "-m", init, "-o", str(tmp / name), *recipe)
            scores = json.loads(bertkit("eval", str(dev), "-m", str(tmp / name)).strip().splitlines()[-1])
            results[name] = scores
            print(f"{name}: {scores} ({time.time() - start:.0f}s)", file=sys.stderr)
    print(json.dumps({
        "pretrained_acc": round(results["pretrained"]["accuracy"] * 100, 2),
        "random_init_acc": round(results["random_init"]["accuracy"] * 100, 2),
        "pretrained_macro_f1": round(results["pretrained"]["macro_f1"] * 100, 2),
        "random_init_macro_f1": round(results["random_init"]["macro_f1"] * 100, 2),
        "recipe": " ".join(recipe),
    }))


if __name__ == "__main__":
    main()
