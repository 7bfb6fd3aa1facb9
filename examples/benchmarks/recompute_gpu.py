"""Largest batch that trains BERT-large (24 layers, hidden 1024, seq 512, bf16 autocast) in a
32 GiB cap, without recomputation and with each bertkit policy, on one CUDA GPU.

The cap is `torch.cuda.set_per_process_memory_fraction(32 GiB / total)`: allocations beyond it
raise out-of-memory as on a 32 GB card.  A batch size "trains" when a full step (forward,
backward, AdamW with fp32 master weights) completes; the search doubles, then bisects.

    python examples/benchmarks/recompute_gpu.py [--cap-gib 32] [--policies none,full,ffn-keep]

Last stdout line: {"none": {"max_batch": ..}, "<policy>": {...}, "best": {"policy", "max_batch", "ratio"}}
The seed claim to beat: batch 8 without recomputation (BERT-large, seq 512, 32 GB).
"""

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bertkit.training.recompute import apply_recompute  # noqa: E402


def trains(model, optimizer, batch_size: int, seq_len: int) -> tuple[bool, float]:
    device = torch.device("cuda")
    try:
        ids = torch.randint(1000, 30000, (batch_size, seq_len), device=device)
        labels = torch.randint(0, 2, (batch_size,), device=device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return True, time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        return False, float("nan")
    finally:
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(model, optimizer, seq_len: int, limit: int) -> tuple[int, float]:
    size, low, high, seconds = 8, 0, None, float("nan")
    while high is None:
        ok, t = trains(model, optimizer, size, seq_len)
        if ok:
            low, seconds = size, t
            if size >= limit:
                return low, seconds
            size *= 2
        else:
            high = size
    while high - low > max(1, low // 32):  # within ~3%
        mid = (low + high) // 2
        ok, t = trains(model, optimizer, mid, seq_len)
        if ok:
            low, seconds = mid, t
        else:
            high = mid
    return low, seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap-gib", type=float, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--policies", default="none,full,ffn-keep,selective")
    parser.add_argument("--limit", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("recompute_gpu.py needs a CUDA GPU")
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=512)
    model = BertForSequenceClassification(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    results = {}
    for policy in args.policies.split(","):
        apply_recompute(model, policy)
        batch, seconds = largest_batch(model, optimizer, args.seq_len, args.limit)
        results[policy] = {"max_batch": batch, "step_s": round(seconds, 3),
                           "tokens_per_s": round(batch * args.seq_len / seconds, 1) if batch else 0}
        print(policy, results[policy], file=sys.stderr, flush=True)
    best = max((p for p in results if p != "none"), key=lambda p: results[p]["max_batch"])
    results["best"] = {"policy": best, "max_batch": results[best]["max_batch"],
                       "ratio": round(results[best]["max_batch"] / max(1, results["none"]["max_batch"]), 2)}
    results["device"] = torch.cuda.get_device_name(0)
    results["cap_gib"] = args.cap_gib
    print(json.dumps(results))


if __name__ == "__main__":
    main()
