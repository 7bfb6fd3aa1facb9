"""Stage 2: factorised word embeddings, ALBERT's embedding parameterisation.

ALBERT (Lan et al., ICLR 2020, section 3.1, "factorized embedding parameterization") splits the
V x H word-embedding table into a V x E table and an E x H projection (E << H): V*E + E*H
parameters instead of V*H.  EdgeBERT compresses ALBERT, so its 13x starts from such a table;
here it is a stage applied to a trained BERT: the table is replaced by its best rank-E
approximation (truncated SVD, Eckart-Young), U_E S_E as the new table and V_E^T as the
projection, and distillation from the uncompressed model wins back what the rank cut cost.  In
a small model the word table is most of what is left after the layers are pruned and quantized
(bertkit-zh-mini on reviews: 6,169 x 256 of 8-bit codes, 55% of the file).

Where we deviate, and why:
- ALBERT trains the factorised table from scratch during pretraining; here it starts from the
  trained table's SVD (no pretraining budget), then recovers by distillation on the task.
- Only the word table is factorised: position and token-type tables are small.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import BertkitError


class FactorizedEmbedding(nn.Module):
    """A V x H embedding as ``table`` (V x E) then ``project`` (E -> H, no bias)."""

    def __init__(self, num_embeddings: int, rank: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.project = nn.Linear(rank, embedding_dim, bias=False)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    @property
    def rank(self) -> int:
        return self.table.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.table(ids))

    @property
    def weight(self) -> torch.Tensor:
        """The V x H table this stands for (for code that reads ``weight``)."""
        return self.project(self.table.weight)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: int) -> "FactorizedEmbedding":
        """The best rank-``rank`` approximation of ``embedding`` (truncated SVD)."""
        v, h = embedding.weight.shape
        if not 1 <= rank < min(v, h):
            raise BertkitError(f"--embedding-rank must be between 1 and {min(v, h) - 1}, not {rank}")
        u, s, vt = torch.linalg.svd(embedding.weight.detach().to(torch.float32), full_matrices=False)
        new = cls(v, rank, h, padding_idx=embedding.padding_idx).to(embedding.weight.device)
        with torch.no_grad():
            new.table.weight.copy_(u[:, :rank] * s[:rank])
            new.project.weight.copy_(vt[:rank].T)
        return new


def factorize_embeddings(model: nn.Module, rank: int | None = None) -> dict:
    """``model``'s word-embedding table becomes a :class:`FactorizedEmbedding` of ``rank`` (default:
    a quarter of the hidden size), in place; the stage's record with the share of the table's
    energy (squared singular values) the rank keeps."""
    embeddings = model.base_model.embeddings
    table = embeddings.word_embeddings
    if not isinstance(table, nn.Embedding):
        raise BertkitError("factorise the word embeddings once, before quantizing them")
    rank = rank or table.embedding_dim // 4
    new = FactorizedEmbedding.from_embedding(table, rank)
    s = torch.linalg.svdvals(table.weight.detach().to(torch.float32))
    embeddings.word_embeddings = new
    return {"stage": "factorize", "rank": rank, "hidden": table.embedding_dim, "rows": table.num_embeddings,
            "energy_kept": round(float((s[:rank] ** 2).sum() / (s**2).sum()), 4)}
