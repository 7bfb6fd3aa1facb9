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

This module holds the model: ``MaskedLMPretrainer`` (the MLM loss with the head on the masked
positions) and a new BERT of a given shape; masking and packing are in :mod:`.data`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from ..core.errors import BertkitError


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
