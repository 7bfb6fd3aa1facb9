"""The pretraining recipe: build or load a BERT, read, segment and pack the corpus, hold out a
dev share, and train with masked-LM over the shared loop.  The method: :mod:`.model`."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch
from transformers import BertForMaskedLM

from ..core import modelio
from ..core.errors import BertkitError
from ..core.progress import log
from ..core.vocab import SPECIAL_TOKENS, make_tokenizer, shrink_embeddings
from ..training import TrainConfig, Trainer
from .data import PackedSequence, collate_mlm, prune_corpus_vocab, read_corpus
from .model import MaskedLMPretrainer, ModelShape, new_bert
from .runner import MaskedLanguageModel


class PretrainTask:
    """Masked-LM pretraining for the shared trainer; evaluated by the masked-LM runner."""

    def __init__(self, mlm: BertForMaskedLM, tokenizer, dev: list[PackedSequence], head: str = "masked",
                 save_dtype: torch.dtype | None = None, eval_batch_size: int = 64):
        self.model = MaskedLMPretrainer(mlm, head)
        self.tokenizer = tokenizer
        self.runner = MaskedLanguageModel(self.model, tokenizer, batch_size=eval_batch_size)
        self.dev, self.save_dtype = dev, save_dtype

    def length(self, seq: PackedSequence) -> int:
        return len(seq.ids)

    def collate(self, examples, generator):
        return collate_mlm(examples, self.runner.masker, self.tokenizer, generator)

    def evaluate(self, model: MaskedLMPretrainer) -> dict[str, float]:
        """Masked-token accuracy and loss on held-out sequences, with fixed masks."""
        return self.runner.evaluate(self.dev)

    def save(self, model: MaskedLMPretrainer, directory: Path) -> None:
        modelio.save_pretrained(model.mlm, self.tokenizer, directory, dtype=self.save_dtype)
        modelio.Manifest("masked-lm").save(directory)


def run_pretraining(
    corpus: Sequence[str],
    cfg: TrainConfig,
    init_model: str | None = None,
    vocab: str | None = None,
    shape: ModelShape = ModelShape(),
    prune: bool = False,
    max_length: int = 128,
    dev_fraction: float = 0.005,
    head: str = "masked",
    save_dtype: torch.dtype | None = None,
) -> dict:
    """Build or load a BERT, read and mask the corpus, and train with the shared loop."""
    if init_model:
        path = modelio.resolve_model(init_model)
        tokenizer = modelio.load_tokenizer(path)
        mlm = modelio.load_model(path, BertForMaskedLM, dtype=torch.float32)
    else:
        vocab_path = Path(vocab) if vocab else modelio.shared_data() / "vocab" / "bert-base-chinese-vocab.txt"
        if not vocab_path.exists():
            raise BertkitError(f"vocabulary {vocab_path} not found; pass --vocab or set BERTKIT_SHARED_DATA")
        tokenizer = make_tokenizer(str(vocab_path))
        mlm = None
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise BertkitError(f"the vocabulary lacks the special tokens {', '.join(missing)}")
    if max_length < 8:
        raise BertkitError("--max-length must be at least 8")
    log(f"reading and segmenting {len(corpus)} corpus file(s)")
    sequences = read_corpus(corpus, tokenizer, max_length)
    if prune:
        tokenizer, keep = prune_corpus_vocab(sequences, tokenizer)
        log(f"pruned the vocabulary to {len(keep)} tokens")
        if mlm is not None:
            shrink_embeddings(mlm, keep)
    if mlm is None:
        mlm = new_bert(len(tokenizer), shape, cfg.seed)
    if max_length > mlm.config.max_position_embeddings:
        raise BertkitError(f"--max-length {max_length} exceeds the model's {mlm.config.max_position_embeddings} positions")
    rng = random.Random(cfg.seed)
    rng.shuffle(sequences)
    n_dev = int(len(sequences) * dev_fraction) if dev_fraction > 0 else 0
    dev, train = sequences[:n_dev], sequences[n_dev:]
    log(f"{len(train)} training sequences, {len(dev)} held out; {sum(len(s.ids) for s in train)} tokens")
    task = PretrainTask(mlm, tokenizer, dev, head=head, save_dtype=save_dtype)
    cfg.metric = cfg.metric or ("mlm_accuracy" if dev else None)
    return Trainer(task, train, cfg).fit()
