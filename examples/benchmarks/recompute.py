"""Activation recomputation on a BERT-base-shaped classifier: memory saved vs time paid.

12 layers, hidden 768, 12 heads, FFN 3072, random init, sequence 512, batch 4, dropout on,
CPU, 2 threads.  For every bertkit policy and for Hugging Face's ``gradient_checkpointing_enable()``
(the peer) it measures, in one run:
- peak activation memory of forward+backward (profiler memory events, see bertkit.training.recompute),
  with gradients already allocated, so what is counted is activations and their temporaries;
- the median time of a full training step (forward, backward, AdamW) and of forward+backward,
  timing the policies round-robin so machine noise hits all alike.

    python examples/benchmarks/recompute.py [--rounds 3] [--threads 2]

Last stdout line: JSON with every policy, `best: {policy, memory_ratio, time_ratio}` (the
fastest policy with memory ratio >= 5, else the one with the highest ratio) and
`hf: {memory_ratio, time_ratio}`; ratios against `none` (memory none/policy, time policy/none).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bertkit.training.recompute import POLICIES, apply_recompute, format_bytes, peak_allocated_during  # noqa: E402


def build(args):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=21128, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                        max_position_embeddings=512)
    model = BertForSequenceClassification(config).train()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 21128, (args.batch_size, args.seq_len), generator=g),
             "labels": torch.randint(0, 2, (args.batch_size,), generator=g)}
    return model, batch


def use(model, name: str) -> None:
    """Switch ``model`` to a bertkit policy, or to HF's own checkpointing ("hf")."""
    if name == "hf":
        apply_recompute(model, "none")
        model.activation_checkpointing_enable()  # HF's default: every layer, non-reentrant
    else:
        if model.is_gradient_checkpointing:
            model.activation_checkpointing_disable()
        apply_recompute(model, name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, batch = build(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    names = list(POLICIES) + ["hf"]

    def forward_backward() -> None:
        model(**batch).loss.backward()

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        model(**batch).loss.backward()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: they are not activations
        return middle - start, time.perf_counter() - start

    step()  # allocates gradients and AdamW state
    peaks = {}
    for name in names:
        use(model, name)
        step()
        peaks[name] = peak_allocated_during(forward_backward)  # AdamW's temporaries are not activations
        optimizer.zero_grad(set_to_none=False)
        print(f"{name}: peak activations {format_bytes(peaks[name])}", file=sys.stderr)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            use(model, name)
            times[name].append(step())
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    total = {n: statistics.median(t[1] for t in times[n]) for n in names}
    fwd_bwd = {n: statistics.median(t[0] for t in times[n]) for n in names}
    result = {}
    for n in names:
        result[n] = {
            "peak_mib": round(peaks[n] / 2**20, 1),
            "step_s": round(total[n], 3),
            "memory_ratio": round(peaks["none"] / peaks[n], 3),
            "time_ratio": round(total[n] / total["none"], 3),
            "fwd_bwd_time_ratio": round(fwd_bwd[n] / fwd_bwd["none"], 3),
        }
    ours = [n for n in POLICIES if n != "none"]
    reaching = [n for n in ours if result[n]["memory_ratio"] >= 5.0]
    best = min(reaching, key=lambda n: result[n]["time_ratio"]) if reaching else max(
        ours, key=lambda n: result[n]["memory_ratio"])
    summary = {
        "shape": f"{args.layers}x{args.hidden}, seq {args.seq_len}, batch {args.batch_size}, {args.threads} threads, CPU",
        "policies": {n: result[n] for n in POLICIES},
        "best": {"policy": best, **{k: result[best][k] for k in ("memory_ratio", "time_ratio", "fwd_bwd_time_ratio")}},
        "hf": {k: result["hf"][k] for k in ("memory_ratio", "time_ratio", "fwd_bwd_time_ratio", "peak_mib")},
    }
    summary["best_beats_hf"] = (result[best]["memory_ratio"] > result["hf"]["memory_ratio"]
                                and result[best]["time_ratio"] < result["hf"]["time_ratio"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
