"""Masked-LM pretraining of a Chinese BERT with whole-word masking.

Method: BERT (Devlin et al., NAACL 2019, section 3.1 "Task #1: Masked LM" and appendix A.1):
15% of the tokens of a sequence are chosen for prediction; a chosen token becomes [MASK] 80% of
the time, a random token 10%, and stays unchanged 10%.  The tokens are chosen by *whole word*
(Cui et al., "Pre-Training with Whole Word Masking for Chinese BERT", 2019/2021, section 3.1):
Chinese words from the jieba segmenter are masked as a unit, although the model sees single
characters.  As in Google's ``run_pretraining.py`` (``gather_indexes``), the MLM head runs only
on the masked positions, not over the whole sequence: its output layer is the largest matrix
product of a small model (vocab x hidden per token), so this saves most of the head's time.

Deviations, and why:
- No next-sentence prediction: RoBERTa (Liu et al. 2019, section 4.2) found it does not help,
  and our corpora are mostly single sentences and titles.
- Dynamic masking (RoBERTa section 4.1): masks are drawn anew for each step from a generator
  seeded by the step, instead of being fixed once when the data is written.  This gives more
  distinct examples from a small corpus while staying exactly reproducible.
- Consecutive lines are packed into sequences of up to ``max_length`` tokens (RoBERTa's
  FULL-SENTENCES), wasting no compute on padding.
"""

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
