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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import jieba
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from . import modelio
from .errors import BertkitError
from .progress import log
from .recompute import RecomputeOptions, setup_recompute
from .textio import read_texts
from .trainer import TrainConfig, Trainer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

jieba.setLogLevel(60)  # jieba logs its dictionary loading on stderr at INFO


# ---------------------------------------------------------------- the model with a masked-only head


class MaskedLMPretrainer(nn.Module):
    """Wraps a ``BertForMaskedLM``; ``forward`` returns the MLM loss.

    ``head="masked"`` gathers the hidden states of the masked positions before the MLM head
    (BERT's ``gather_indexes``); ``head="all"`` runs the head over every position, as
    ``BertForMaskedLM.forward`` does.  Both give the same loss.
    """

    def __init__(self, mlm: BertForMaskedLM, head: str = "masked"):
        super().__init__()
        if head not in ("masked", "all"):
            raise ValueError(f"head must be 'masked' or 'all', not {head!r}")
        self.mlm, self.head = mlm, head

    def forward(self, input_ids, attention_mask, mlm_positions, mlm_labels):
        hidden = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        flat = hidden.reshape(-1, hidden.size(-1))
        if self.head == "masked":
            logits = self.mlm.cls(flat.index_select(0, mlm_positions))
            return F.cross_entropy(logits.float(), mlm_labels)
        logits = self.mlm.cls(flat)
        labels = torch.full((flat.size(0),), -100, dtype=torch.long, device=flat.device)
        labels[mlm_positions] = mlm_labels
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)

    def masked_logits(self, input_ids, attention_mask, mlm_positions):
        hidden = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.mlm.cls(hidden.reshape(-1, hidden.size(-1)).index_select(0, mlm_positions))


# ---------------------------------------------------------------- corpus → sequences with word starts


@dataclass
class Sequence_:
    ids: list[int]
    word_start: list[bool]


def segment_line(line: str, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of ``line`` and, for each, whether it starts a jieba word."""
    starts, pos = set(), 0
    for word in jieba.cut(line):
        starts.add(pos)
        pos += len(word)
    enc = tokenizer(line, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    flags = [begin in starts or (begin, end) == (0, 0) for begin, end in enc["offset_mapping"]]
    return ids, flags


def pack(lines: Iterable[tuple[list[int], list[bool]]], max_tokens: int) -> list[Sequence_]:
    """Concatenate consecutive lines into sequences of at most ``max_tokens`` tokens."""
    out, ids, flags = [], [], []
    for line_ids, line_flags in lines:
        while line_ids:
            room = max_tokens - len(ids)
            take = line_ids[:room] if len(line_ids) > room and ids else line_ids[:max_tokens]
            ids += take
            flags += line_flags[: len(take)]
            line_ids, line_flags = line_ids[len(take) :], line_flags[len(take) :]
            if line_flags:
                line_flags = [True] + line_flags[1:]  # a cut word starts afresh
            if len(ids) >= max_tokens or line_ids:
                out.append(Sequence_(ids, flags))
                ids, flags = [], []
    if ids:
        out.append(Sequence_(ids, flags))
    return out


def read_corpus(paths: Sequence[str], tokenizer, max_length: int) -> list[Sequence_]:
    lines = []
    for path in paths:
        for text in read_texts(path):
            text = text.strip()
            if text:
                lines.append(segment_line(text, tokenizer))
    if not lines:
        raise BertkitError("the pretraining corpus has no text")
    return pack(lines, max_length - 2)


# ---------------------------------------------------------------- vocabulary pruning


def prune_vocab(sequences: list[Sequence_], tokenizer, min_count: int = 1):
    """Keep the special tokens and the tokens seen ``min_count`` times; remap ``sequences`` in place.

    Returns (new tokenizer, kept old ids in new order).
    """
    counts = Counter(i for s in sequences for i in s.ids)
    vocab = tokenizer.get_vocab()
    inverse = {i: t for t, i in vocab.items()}
    keep = sorted({vocab[t] for t in SPECIAL_TOKENS} | {i for i, c in counts.items() if c >= min_count})
    new_id = {old: new for new, old in enumerate(keep)}
    unk = new_id[vocab["[UNK]"]]
    for s in sequences:
        s.ids = [new_id.get(i, unk) for i in s.ids]
    new_vocab = {inverse[old]: new for new, old in enumerate(keep)}
    return make_tokenizer(new_vocab, like=tokenizer), keep


TOKENIZER_OPTIONS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars")


def make_tokenizer(vocab, like=None) -> BertTokenizer:
    """A WordPiece tokenizer over ``vocab``: bert-base-chinese's settings (lower-case, CJK characters
    split), or those of the tokenizer ``like`` when a pruned vocabulary replaces its own."""
    options = {"do_lower_case": True, "tokenize_chinese_chars": True}
    if like is not None:
        options.update({k: like.init_kwargs[k] for k in TOKENIZER_OPTIONS if k in like.init_kwargs})
    return BertTokenizer(vocab=vocab, **options)


def shrink_embeddings(mlm: BertForMaskedLM, keep: list[int]) -> None:
    """Keep only the rows of ``keep`` in the word embeddings and the MLM output bias."""
    index = torch.tensor(keep)
    old = mlm.get_input_embeddings()
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=None)
    new.weight.data = old.weight.data.index_select(0, index).clone()
    mlm.set_input_embeddings(new)
    decoder = mlm.cls.predictions.decoder
    bias = mlm.cls.predictions.bias.data.index_select(0, index).clone()
    decoder.weight = new.weight  # tied, as in BERT
    mlm.cls.predictions.bias = nn.Parameter(bias)
    decoder.bias = mlm.cls.predictions.bias
    decoder.out_features = len(keep)
    mlm.config.vocab_size = len(keep)


# ---------------------------------------------------------------- masking


class WholeWordMasker:
    """Chooses whole words up to ``rate`` of the tokens; 80% [MASK], 10% random, 10% unchanged."""

    def __init__(self, tokenizer, rate: float = 0.15):
        self.rate = rate
        self.mask_id = tokenizer.convert_tokens_to_ids("[MASK]")
        special = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.random_ids = [i for i in range(len(tokenizer)) if i not in special]

    def __call__(self, seq: Sequence_, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
        """(input ids with masks, positions chosen, original ids at those positions)."""
        words, current = [], []
        for i, start in enumerate(seq.word_start):
            if start and current:
                words.append(current)
                current = []
            current.append(i)
        if current:
            words.append(current)
        rng.shuffle(words)
        budget = max(1, round(len(seq.ids) * self.rate))
        chosen: list[int] = []
        for word in words:
            if len(chosen) >= budget:
                break
            if len(chosen) + len(word) > budget:
                continue
            chosen.extend(word)
        if not chosen:  # every word is longer than the budget: mask part of one
            chosen = words[0][:budget]
        chosen.sort()
        ids = list(seq.ids)
        for pos in chosen:
            r = rng.random()
            if r < 0.8:
                ids[pos] = self.mask_id
            elif r < 0.9:
                ids[pos] = rng.choice(self.random_ids)
        return ids, chosen, [seq.ids[p] for p in chosen]


def collate_mlm(examples: Sequence[Sequence_], masker: WholeWordMasker, tokenizer, generator: torch.Generator):
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    cls, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    width = max(len(s.ids) for s in examples) + 2
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    positions, labels = [], []
    for row, seq in enumerate(examples):
        ids, chosen, originals = masker(seq, rng)
        input_ids[row, : len(ids) + 2] = torch.tensor([cls, *ids, sep])
        attention[row, : len(ids) + 2] = 1
        positions += [row * width + p + 1 for p in chosen]
        labels += originals
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mlm_positions": torch.tensor(positions, dtype=torch.long),
        "mlm_labels": torch.tensor(labels, dtype=torch.long),
    }


# ---------------------------------------------------------------- the task the trainer runs


class PretrainTask:
    def __init__(self, mlm: BertForMaskedLM, tokenizer, dev: list[Sequence_], head: str = "masked",
                 save_dtype: torch.dtype | None = None, eval_batch_size: int = 64):
        self.model = MaskedLMPretrainer(mlm, head)
        self.tokenizer = tokenizer
        self.masker = WholeWordMasker(tokenizer)
        self.dev, self.save_dtype, self.eval_batch_size = dev, save_dtype, eval_batch_size

    def length(self, seq: Sequence_) -> int:
        return len(seq.ids)

    def collate(self, examples, generator):
        return collate_mlm(examples, self.masker, self.tokenizer, generator)

    def evaluate(self, model: MaskedLMPretrainer) -> dict[str, float]:
        """Masked-token accuracy and loss on held-out sequences, with fixed masks."""
        if not self.dev:
            return {}
        gen = torch.Generator().manual_seed(1234)
        correct = total = 0
        loss_sum = 0.0
        device = next(model.parameters()).device
        for start in range(0, len(self.dev), self.eval_batch_size):
            batch = {k: v.to(device) for k, v in self.collate(self.dev[start : start + self.eval_batch_size], gen).items()}
            logits = model.masked_logits(batch["input_ids"], batch["attention_mask"], batch["mlm_positions"]).float()
            loss_sum += float(F.cross_entropy(logits, batch["mlm_labels"], reduction="sum"))
            correct += int((logits.argmax(-1) == batch["mlm_labels"]).sum())
            total += len(batch["mlm_labels"])
        return {"mlm_accuracy": correct / total, "mlm_loss": loss_sum / total}

    def save(self, model: MaskedLMPretrainer, directory: Path) -> None:
        modelio.save_pretrained(model.mlm, self.tokenizer, directory, dtype=self.save_dtype)


@dataclass
class ModelShape:
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int | None = None
    max_position: int = 512


def new_bert(vocab_size: int, shape: ModelShape, seed: int) -> BertForMaskedLM:
    if shape.hidden < 1 or shape.layers < 1 or shape.heads < 1 or shape.hidden % shape.heads:
        raise BertkitError(f"--hidden {shape.hidden} must be a positive multiple of --heads {shape.heads}")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate or 4 * shape.hidden,
        max_position_embeddings=shape.max_position,
    )
    return BertForMaskedLM(config)


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
    recompute: RecomputeOptions = RecomputeOptions(),
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
        tokenizer, keep = prune_vocab(sequences, tokenizer)
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
    setup_recompute(task, train, cfg, recompute)
    return Trainer(task, train, cfg).fit()
