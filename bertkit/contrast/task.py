"""Contrastive training of a sentence encoder over the shared loop (see :mod:`.model` for the
methods), with Spearman on dev STS pairs picking the checkpoint, saved as a sentence-transformers
pipeline that ``bertkit embed`` and ``SentenceTransformer`` load with the method's pooling.

Training sentences longer than the method's ``max_length`` are cut to their first window: the
methods' papers train on short sentences (SimCSE: 32 tokens).  Embedding afterwards never cuts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModel

from ..core import modelio
from ..core.encoding import TextEncoder
from ..core.errors import BertkitError
from ..core.progress import log
from ..embed.data import read_sts_pairs
from ..embed.model import PoolingSpec
from ..embed.pipeline import save_pipeline
from ..embed.runner import Embedder
from ..training import TrainConfig, Trainer
from .data import read_pairs, read_scored_pairs, read_sentences
from .model import METHODS, Method, build_objective

EMBED_MAX_LENGTH = 512  # the saved pipeline's window; longer texts are split, never cut


class ContrastTask:
    """One method's objective over examples of single sentences or (first, second, score) pairs."""

    def __init__(self, method: Method, objective: torch.nn.Module, tokenizer, examples: list, dev=None):
        self.method, self.model, self.tokenizer = method, objective, tokenizer
        self.examples, self.dev = examples, dev
        self.encoder = TextEncoder(tokenizer, method.max_length)
        self.spec = PoolingSpec(method.pooling)

    def length(self, example) -> int:
        return len(example.input_ids) if self.method.data == "sentences" else len(example[0].input_ids)

    def collate(self, examples, generator):
        if self.method.data == "sentences":
            return self.encoder.pad_batch(examples)
        batch = self.encoder.pad_batch([e[0] for e in examples] + [e[1] for e in examples])
        if self.method.data == "scored-pairs":
            batch["scores"] = torch.tensor([e[2] for e in examples], dtype=torch.float32)
        return batch

    def embedder(self, model) -> Embedder:
        limit = min(EMBED_MAX_LENGTH, model.bert.config.max_position_embeddings)
        return Embedder(model.bert, self.tokenizer, self.spec, max_length=limit)

    def evaluate(self, model) -> dict[str, float]:
        if not self.dev:
            return {}
        return {"spearman": self.embedder(model).evaluate(self.dev, [self.spec])[self.spec.name]}

    def save(self, model, directory: Path) -> None:
        save_pipeline(model.bert, self.tokenizer, self.embedder(model).encoder.max_length, self.spec, None, Path(directory))


def encode_examples(method: Method, inputs: Sequence[str], tokenizer) -> list:
    """Token windows (first window of each sentence) for ``method``'s kind of data."""
    encoder = TextEncoder(tokenizer, method.max_length)
    first = lambda texts: [ws[0] for ws in encoder.encode_many(texts)]  # noqa: E731
    if method.data == "sentences":
        return first(read_sentences(inputs))
    if len(inputs) != 1:
        raise BertkitError(f"--method {method.name} reads one file of pairs; {len(inputs)} given")
    if method.data == "scored-pairs":
        s1, s2, scores = read_scored_pairs(inputs[0])
        return list(zip(first(s1), first(s2), scores))
    anchors, positives = read_pairs(inputs[0])
    return list(zip(first(anchors), first(positives)))


def method_defaults(name: str, lr: float | None, batch_size: int | None, max_length: int | None) -> Method:
    """``name``'s method with the user's choices in place of its paper's defaults."""
    if name not in METHODS:
        raise BertkitError(f"unknown --method {name!r} ({', '.join(METHODS)})")
    method = METHODS[name]
    return dataclasses.replace(method, lr=lr or method.lr, batch_size=batch_size or method.batch_size,
                               max_length=max_length or method.max_length)


def run_contrast(method: Method, inputs: Sequence[str], dev_path: str | None, model: str | None,
                 cfg: TrainConfig) -> dict:
    """Train ``model`` by ``method`` on ``inputs`` into ``cfg.output_dir``; the loop's final state."""
    if method.batch_size < 2:
        raise BertkitError(f"--batch-size {method.batch_size}: --method {method.name} compares each example with the "
                           "rest of its batch; use at least 2")
    cfg.lr, cfg.batch_size = method.lr, method.batch_size
    dev = read_sts_pairs(dev_path) if dev_path else None
    path = modelio.resolve_model(model)
    tokenizer = modelio.load_tokenizer(path)
    examples = encode_examples(method, inputs, tokenizer)
    torch.manual_seed(cfg.seed)  # the heads' initialisation
    bert = modelio.load_model(path, AutoModel, dtype=torch.float32)
    if modelio.is_inference_only(bert):
        raise BertkitError(f"{path} is a compressed model: it runs inference only; train the model it came from")
    if getattr(bert, "pooler", None) is not None:
        bert.pooler.requires_grad_(False)  # unused by every method: DDP needs every trained weight used
    objective = build_objective(method.name, bert)
    task = ContrastTask(method, objective, tokenizer, examples, dev)
    log(f"{method.name}: {len(examples)} training {'sentences' if method.data == 'sentences' else 'pairs'}"
        f"{f', {len(dev[0])} dev pairs' if dev else ''}; lr {method.lr:g}, batch {method.batch_size}, "
        f"max length {method.max_length}")
    if dev:
        cfg.metric = "spearman"
    return Trainer(task, examples, cfg).fit()
