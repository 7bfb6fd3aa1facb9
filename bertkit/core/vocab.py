"""Vocabularies: WordPiece tokenizers, and pruning a vocabulary (and a model's embedding rows) to
the tokens a corpus uses (TextPruner's vocabulary pruning; used by pretraining with
``--prune-vocab``, and by compression)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import torch
from torch import nn
from transformers import BertTokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_OPTIONS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars")


def make_tokenizer(vocab, like=None) -> BertTokenizer:
    """A WordPiece tokenizer over ``vocab``: bert-base-chinese's settings (lower-case, CJK characters
    split), or those of the tokenizer ``like`` when a pruned vocabulary replaces its own."""
    options = {"do_lower_case": True, "tokenize_chinese_chars": True}
    if like is not None:
        options.update({k: like.init_kwargs[k] for k in TOKENIZER_OPTIONS if k in like.init_kwargs})
    return BertTokenizer(vocab=vocab, **options)


def prune_vocab(id_lists: Iterable[list[int]], tokenizer, min_count: int = 1) -> tuple[BertTokenizer, list[int]]:
    """Keep the special tokens and the tokens seen ``min_count`` times in ``id_lists``.

    Returns (new tokenizer, kept old ids in new order); :func:`remap` moves ids to the new vocabulary.
    """
    counts = Counter(i for ids in id_lists for i in ids)
    vocab = tokenizer.get_vocab()
    inverse = {i: t for t, i in vocab.items()}
    keep = sorted({vocab[t] for t in SPECIAL_TOKENS} | {i for i, c in counts.items() if c >= min_count})
    new_vocab = {inverse[old]: new for new, old in enumerate(keep)}
    return make_tokenizer(new_vocab, like=tokenizer), keep


def remap(ids: list[int], keep: list[int], unk_id: int) -> list[int]:
    """Old ids -> ids in the pruned vocabulary (``unk_id``, an old id, for pruned tokens)."""
    new_id = {old: new for new, old in enumerate(keep)}
    unk = new_id[unk_id]
    return [new_id.get(i, unk) for i in ids]


def shrink_embeddings(model: nn.Module, keep: list[int]) -> None:
    """Keep only the rows of ``keep`` in the word embeddings and, for a masked LM, its output bias
    (the decoder stays tied to the embeddings, as in BERT)."""
    index = torch.tensor(keep)
    old = model.get_input_embeddings()
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=None)
    new.weight.data = old.weight.data.index_select(0, index).clone()
    model.set_input_embeddings(new)
    head = getattr(getattr(model, "cls", None), "predictions", None)
    if head is not None:
        bias = head.bias.data.index_select(0, index).clone()
        head.decoder.weight = new.weight
        head.bias = nn.Parameter(bias)
        head.decoder.bias = head.bias
        head.decoder.out_features = len(keep)
    model.config.vocab_size = len(keep)
