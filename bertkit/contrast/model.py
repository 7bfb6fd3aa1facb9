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

Each method is a module whose ``forward(**batch)`` is its training loss over a BERT (``.bert``,
the encoder that is saved); the parts used in training only (SG-BERT's frozen copy and projection
head, SimCSE's MLP) live beside it and are never saved.  :data:`METHODS` holds each method's
defaults from its paper and the pooling its embeddings use.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

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


# ---------------------------------------------------------------- the methods as trainable modules


@dataclass(frozen=True)
class Method:
    """A method's defaults (from its paper or reference code) and the data it trains on."""

    name: str
    data: str  # "sentences" (unlabelled), "scored-pairs" (s1, s2, score) or "pairs" (anchor, positive)
    pooling: str  # the embedding the trained model gives (saved as its pipeline's pooling)
    lr: float
    batch_size: int
    max_length: int


METHODS = {
    # SG-BERT's released training script: lr 5e-5, batch 16, 1 epoch; [CLS] is the embedding
    "sg": Method("sg", "sentences", "cls", lr=5e-5, batch_size=16, max_length=32),
    # SimCSE (Gao et al. 2021, section 3 and appendix A): lr 3e-5, batch 64, max length 32
    "simcse": Method("simcse", "sentences", "cls", lr=3e-5, batch_size=64, max_length=32),
    # text2vec's CoSENT recipe: lr 2e-5, batch 64, max length 64, mean pooling
    "cosent": Method("cosent", "scored-pairs", "mean", lr=2e-5, batch_size=64, max_length=64),
    # sentence-transformers' MultipleNegativesRankingLoss with its default mean pooling
    "mnrl": Method("mnrl", "pairs", "mean", lr=2e-5, batch_size=64, max_length=64),
}


class SelfGuided(nn.Module):
    """SG-BERT with the SG-OPT objective (Kim et al. 2021, section 3).

    ``bert`` is trained; a frozen copy taken at the start supplies, for each sentence, the
    max-pooled hidden states of every layer (its embedding output included, as the released code
    does), which are the positives of the trainable copy's [CLS] (:func:`sg_opt_loss`).  Both
    pass through one :class:`ProjectionHead`, and ``drift_weight`` x :func:`weight_drift` keeps
    the trainable copy near the frozen one.  The trainable copy's embedding layer stays fixed, as
    in the released code.  The frozen copy runs without dropout.
    Deviation: none in the method; the head keeps the paper's width 4096 whatever the hidden size.
    """

    def __init__(self, bert: nn.Module, temperature: float = 0.01, drift_weight: float = 0.1, head_width: int = 4096):
        super().__init__()
        self.bert = bert
        self.frozen = copy.deepcopy(bert).eval().requires_grad_(False)
        self.bert.embeddings.requires_grad_(False)
        self.head = ProjectionHead(bert.config.hidden_size, head_width)
        for layer in (self.head.net[0], self.head.net[2]):  # as the released code initialises it
            nn.init.normal_(layer.weight, std=bert.config.initializer_range)
            nn.init.zeros_(layer.bias)
        self.temperature, self.drift_weight = temperature, drift_weight

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()  # the guide never uses dropout
        return self

    def forward(self, input_ids, attention_mask, token_type_ids):
        with torch.no_grad():
            states = self.frozen(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 output_hidden_states=True).hidden_states
            pooled = torch.stack([masked_max(h, attention_mask) for h in states], dim=1)  # (B, L+1, H)
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids).last_hidden_state[:, 0]
        loss = sg_opt_loss(self.head(cls), self.head(pooled), self.temperature)
        return loss + self.drift_weight * weight_drift(self.bert, self.frozen)


class SimCSE(nn.Module):
    """Unsupervised SimCSE (Gao et al. 2021, section 3): each sentence passes twice in one batch,
    so only the dropout masks differ between its two views; [CLS] through an MLP (Linear, tanh)
    in training, plain [CLS] afterwards (the paper's "w/ MLP (train)")."""

    def __init__(self, bert: nn.Module, temperature: float = 0.05):
        super().__init__()
        self.bert = bert
        hidden = bert.config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.temperature = temperature

    def views(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views' [CLS] vectors (before the MLP): the batch stacked on itself, one pass."""
        doubled = [torch.cat([t, t]) for t in (input_ids, attention_mask, token_type_ids)]
        cls = self.bert(input_ids=doubled[0], attention_mask=doubled[1], token_type_ids=doubled[2]).last_hidden_state[:, 0]
        return cls.chunk(2)

    def forward(self, input_ids, attention_mask, token_type_ids):
        first, second = self.views(input_ids, attention_mask, token_type_ids)
        return simcse_loss(self.mlp(first), self.mlp(second), self.temperature)


class PairObjective(nn.Module):
    """Labelled pairs: CoSENT over (s1, s2, score), or in-batch negatives over (anchor, positive).
    Both sentences of every pair are encoded in one pass and mean-pooled."""

    def __init__(self, bert: nn.Module, loss: str, scale: float = 20.0):
        super().__init__()
        self.bert, self.loss, self.scale = bert, loss, scale

    def forward(self, input_ids, attention_mask, token_type_ids, scores=None):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        first, second = pooled.chunk(2)
        if self.loss == "cosent":
            return cosent_loss(first, second, scores, self.scale)
        return in_batch_negatives_loss(first, second, self.scale)


def build_objective(method: str, bert: nn.Module) -> nn.Module:
    if method == "sg":
        return SelfGuided(bert)
    if method == "simcse":
        return SimCSE(bert)
    return PairObjective(bert, method)
