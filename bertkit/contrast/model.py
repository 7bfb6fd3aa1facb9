"""Losses and parts for contrastive sentence embeddings (issue 17, first step: the objectives).

- SG-OPT (Kim et al., ACL 2021, "Self-Guided Contrastive Learning for BERT Sentence
  Representations", section 3): a trainable BERT's [CLS] c_i is pulled towards the max-pooled
  hidden states h_{i,k} of a frozen copy, layer by layer, and away from the other sentences'
  h_{j,k} of every layer; both pass through a projection head used in training only; a
  regulariser keeps the trainable copy's weights near the frozen ones (lambda * sum ||T - F||^2).
- Unsupervised SimCSE (Gao et al., EMNLP 2021, section 3): the same sentence encoded twice with
  different dropout masks is the positive pair, the batch's other sentences the negatives
  (NT-Xent over cosine similarity, temperature 0.05).
- CoSENT (Su 2022, as text2vec trains it): for labelled pairs, a ranking loss on cosine
  similarities, log(1 + sum over (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i))).
- In-batch negatives for anchor/positive pairs (sentence-transformers'
  MultipleNegativesRankingLoss): cross-entropy over scaled cosine similarities, the positive on
  the diagonal.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[i, j] = cos(a_i, b_j)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def sg_opt_loss(cls: torch.Tensor, pooled: torch.Tensor, temperature: float) -> torch.Tensor:
    """SG-OPT (section 3.2): ``cls`` (B, H) from the trainable BERT, ``pooled`` (B, L, H) the frozen
    BERT's max-pooled layers.  Each (c_i, h_{i,k}) is a positive; its negatives are c_i against
    every other sentence's h_{j,k'} of every layer k', shared by the L positives of sentence i."""
    b, layers, _ = pooled.shape
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=cls.device)
    sims = [cosine_matrix(cls, pooled[:, k]) for k in range(layers)]  # each (B, B)
    positives = torch.stack([s.diagonal() for s in sims], dim=1)  # (B, L)
    negatives = torch.cat([s[off_diagonal].view(b, b - 1) for s in sims], dim=1)  # (B, L*(B-1))
    logits = torch.cat([positives.reshape(b * layers, 1),
                        negatives.repeat_interleave(layers, dim=0)], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(b * layers, dtype=torch.long, device=cls.device))


def simcse_loss(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Unsupervised SimCSE (equation 1): row i of ``first`` against all of ``second``, positive at i."""
    logits = cosine_matrix(first, second) / temperature
    return F.cross_entropy(logits, torch.arange(len(first), device=first.device))


def in_batch_negatives_loss(anchors: torch.Tensor, positives: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """MultipleNegativesRankingLoss: each anchor's positive against the batch's other positives."""
    logits = cosine_matrix(anchors, positives) * scale
    return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))


def cosent_loss(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: log(1 + sum_{score_i > score_j} exp(scale * (cos_j - cos_i))) over the batch's pairs."""
    cos = F.cosine_similarity(first, second, dim=-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    ordered = scores[:, None] > scores[None, :]  # pairs (i, j) where i should score higher
    terms = diff[ordered]
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


def masked_max(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Max-pooling over the tokens a mask keeps: (B, T, H) -> (B, H)."""
    return hidden.masked_fill(attention_mask[..., None] == 0, torch.finfo(hidden.dtype).min).max(dim=1).values


class ProjectionHead(nn.Module):
    """SG-BERT's projection head (training only): Linear -> GELU -> Linear -> GELU."""

    def __init__(self, hidden: int, width: int = 4096):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def weight_drift(trainable: nn.Module, frozen: nn.Module) -> torch.Tensor:
    """SG-BERT's regulariser: sum over parameters of ||theta_T - theta_F||^2."""
    frozen_params = dict(frozen.named_parameters())
    return sum(((p - frozen_params[name].detach()) ** 2).sum() for name, p in trainable.named_parameters())
