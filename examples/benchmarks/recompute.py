"""Activation recomputation on a BERT-base-shaped classifier: memory saved vs time paid.

12 layers, hidden 768, 12 heads, FFN 3072, random init, sequence 512, batch 4, dropout on,
CPU, 2 threads.  Every bertkit policy and Hugging Face's ``activation_checkpointing_enable()``
(the peer) is measured twice, with and without per-sample attention checkpointing (a switch of
its own, see bertkit.training.recompute), so each policy is compared with HF under the same
attention treatment.  In one run it measures:
- peak activation memory of forward+backward (profiler memory events, see
  bertkit.training.recompute), with gradients already allocated, so what is counted is
  activations and their temporaries;
- the time of a full training step (forward, backward, AdamW) over several rounds.  Each round
  times every configuration once, the order rotating from round to round so that drift in the
  machine's speed touches all alike; a ratio is taken within each round and reported as the
  median with its spread (min, max) over the rounds.  A ratio whose spread contains 1 is a tie.

    python examples/benchmarks/recompute.py [--rounds 5] [--threads 2]

Last stdout line: JSON with, for every configuration ("full", "full+per-sample", "hf", ...):
peak MiB, memory ratio and step-time ratio against plain training (``none``, no per-sample
attention), with spread; ``best``, the fastest bertkit configuration with memory ratio >= 5 and
its time ratio; ``vs_hf``, each policy against HF with the same attention treatment (memory
hf/policy, time policy/hf with spread, and whether the time is a tie).
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

PER_SAMPLE = "+per-sample"


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
    """Switch ``model`` to a configuration: a bertkit policy or "hf" (HF's own checkpointing),
    with per-sample attention when the name ends in +per-sample."""
    policy, per_sample = name.removesuffix(PER_SAMPLE), name.endswith(PER_SAMPLE)
    if model.is_activation_checkpointing:
        model.activation_checkpointing_disable()
    if policy == "hf":
        apply_recompute(model, "none", per_sample_attention=per_sample)
        model.activation_checkpointing_enable()  # HF's default: every layer, non-reentrant
    else:
        apply_recompute(model, policy, per_sample_attention=per_sample)


def spread(values) -> dict:
    values = sorted(values)
    return {"median": round(statistics.median(values), 3), "min": round(values[0], 3), "max": round(values[-1], 3)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, batch = build(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    base = list(POLICIES) + ["hf"]
    names = [n + suffix for n in base for suffix in ("", PER_SAMPLE)]

    def forward_backward() -> None:
        model(**batch).loss.backward()

    def step() -> float:
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: they are not activations
        return time.perf_counter() - start

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
        for name in names[r % len(names):] + names[: r % len(names)]:  # a rotating order
            use(model, name)
            times[name].append(step())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), file=sys.stderr)

    def time_ratio(a: str, b: str) -> dict:
        return spread([x / y for x, y in zip(times[a], times[b])])

    result = {n: {"peak_mib": round(peaks[n] / 2**20, 1), "memory_ratio": round(peaks["none"] / peaks[n], 2),
                  "step_s": spread(times[n]), "time_ratio": time_ratio(n, "none")} for n in names}
    ours = [n for n in names if not n.startswith(("none", "hf"))]
    reaching = [n for n in ours if result[n]["memory_ratio"] >= 5.0]
    best = min(reaching, key=lambda n: result[n]["time_ratio"]["median"]) if reaching else max(
        ours, key=lambda n: result[n]["memory_ratio"])
    vs_hf = {}
    for n in ours:
        hf = "hf" + (PER_SAMPLE if n.endswith(PER_SAMPLE) else "")
        ratio = time_ratio(n, hf)
        vs_hf[n] = {"memory_hf_over_ours": round(peaks[hf] / peaks[n], 2), "time_ours_over_hf": ratio,
                    "time_tie": ratio["min"] <= 1.0 <= ratio["max"]}
    summary = {
        "shape": f"{args.layers}x{args.hidden}, seq {args.seq_len}, batch {args.batch_size}, {args.threads} threads, "
                 f"CPU, {args.rounds} rounds",
        "configs": result,
        "best": {"config": best, "memory_ratio": result[best]["memory_ratio"], "time_ratio": result[best]["time_ratio"]},
        "hf": {k: result["hf"][k] for k in ("memory_ratio", "time_ratio")},
        "hf+per-sample": {k: result["hf" + PER_SAMPLE][k] for k in ("memory_ratio", "time_ratio")},
        "vs_hf": vs_hf,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
