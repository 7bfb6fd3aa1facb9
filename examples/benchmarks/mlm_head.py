"""MLM head on masked positions only (BERT's gather_indexes) vs over every position.

Same model (the bertkit-zh-mini shape and vocabulary), same whole-word-masked batches from the
pretraining corpus, full training steps (forward, backward, AdamW), alternating the two heads
in one run so machine load affects both alike.

    python examples/benchmarks/mlm_head.py [--model data/models/bertkit-zh-mini] [--steps 20] [--threads 2]

Last stdout line: {"speedup": tokens/s masked ÷ tokens/s all, ...}
"""

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertForMaskedLM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402
from bertkit.pretrain.data import WholeWordMasker, collate_mlm, read_corpus  # noqa: E402
from bertkit.pretrain.model import MaskedLMPretrainer  # noqa: E402

CORPUS = modelio.shared_data() / "corpus" / "peoples_daily_199801.pos.txt"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "bertkit-zh-mini"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = modelio.load_tokenizer(args.model)
    mlm = modelio.load_model(args.model, BertForMaskedLM, dtype=torch.float32)
    text = Path(tempfile.mkdtemp()) / "corpus.txt"
    lines = [" ".join(t.rsplit("/", 1)[0] for t in l.split()) for l in CORPUS.open(encoding="utf-8")][:4000]
    text.write_text("\n".join(l.replace(" ", "") for l in lines if l), encoding="utf-8")
    sequences = read_corpus([str(text)], tokenizer, args.max_length)
    masker, gen = WholeWordMasker(tokenizer), torch.Generator().manual_seed(0)
    batches = [collate_mlm(sequences[i * args.batch_size:(i + 1) * args.batch_size], masker, tokenizer, gen)
               for i in range(args.steps + 2)]
    runners = {}
    for head in ("masked", "all"):
        model = MaskedLMPretrainer(copy.deepcopy(mlm), head).train()
        runners[head] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    seconds = {"masked": 0.0, "all": 0.0}
    tokens = 0
    for i, batch in enumerate(batches):
        for head, (model, opt) in runners.items():
            start = time.perf_counter()
            model(**batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:  # the first two steps warm up allocators and kernels
                seconds[head] += time.perf_counter() - start
        if i >= 2:
            tokens += int(batch["attention_mask"].sum())
    rates = {head: tokens / s for head, s in seconds.items()}
    print(json.dumps({
        "speedup": round(rates["masked"] / rates["all"], 3),
        "masked_tokens_per_s": round(rates["masked"], 1),
        "all_tokens_per_s": round(rates["all"], 1),
        "vocab_size": mlm.config.vocab_size, "hidden": mlm.config.hidden_size,
        "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps, "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
