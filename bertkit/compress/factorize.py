"""Stage 2: factorised word embeddings, ALBERT's embedding parameterisation.

ALBERT (Lan et al., ICLR 2020, section 3.1, "factorized embedding parameterization") splits the
V x H word-embedding table into a V x E table and an E x H projection (E << H): V*E + E*H
parameters instead of V*H.  EdgeBERT compresses ALBERT, so its 13x starts from such a table;
here it is a stage applied to a trained BERT: the table is replaced by its best rank-E
approximation (truncated SVD, Eckart-Young), U_E S_E as the new table and V_E^T as the
projection, and distillation from the uncompressed model wins back what the rank cut cost.  In
a small model the word table is most of what is left after the layers are pruned and quantized
(bertkit-zh-mini on reviews: 6,169 x 256 of 8-bit codes, 55% of the file).

Rows are weighted by how often the task reads them (``row_weights``: token counts in the training
texts): the factorisation minimises sum_i w_i ||e_i - e'_i||^2, the error a forward pass over the
task's text meets, not the plain Frobenius error, in which the thousands of rare rows count as
much as [CLS] and the common words.  With one weight per row the weighted problem still has an
exact solution, the truncated SVD of diag(sqrt w) E, rows scaled back after (the row-wise case of
FWSVD, Hsu et al., ICLR 2022, "Language model compression with weighted low-rank factorization",
which weighs rows by their Fisher information; a table row's Fisher information is a sum over the
row's occurrences, so its count is the cheap proxy).  A one-off check (session 13, not a shipped
benchmark): all-MiniLM-L6-v2 fine-tuned on AG News, vocabulary pruned, rank 96, before any
recovery, first dev half: accuracy 85.6 unweighted, 87.4 weighted by count (88.8 unfactorised).

Where we deviate, and why:
- ALBERT trains the factorised table from scratch during pretraining; here it starts from the
  trained table's (weighted) SVD (no pretraining budget), then recovers by distillation on the task.
- Only the word table is factorised: position and token-type tables are small.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..core.errors import BertkitError
from .vocab import token_ids


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
    def from_embedding(cls, embedding: nn.Embedding, rank: int,
                       row_weights: torch.Tensor | None = None) -> "FactorizedEmbedding":
        """The best rank-``rank`` approximation of ``embedding`` (truncated SVD), each row's error
        weighted by ``row_weights`` (positive, one per row; None: all 1)."""
        return cls._from_svd(embedding, rank, row_weights)[0]

    @classmethod
    def _from_svd(cls, embedding: nn.Embedding, rank: int, row_weights: torch.Tensor | None):
        """:meth:`from_embedding`, and the share of the weighted table's energy (squared singular
        values) the rank keeps."""
        v, h = embedding.weight.shape
        if not 1 <= rank < min(v, h):
            raise BertkitError(f"--embedding-rank must be between 1 and {min(v, h) - 1}, not {rank}")
        weight = embedding.weight.detach().to(torch.float32)
        scale = _row_scale(row_weights, v).to(weight.device)
        u, s, vt = torch.linalg.svd(weight * scale[:, None], full_matrices=False)
        new = cls(v, rank, h, padding_idx=embedding.padding_idx).to(embedding.weight.device)
        with torch.no_grad():
            new.table.weight.copy_(u[:, :rank] * s[:rank] / scale[:, None])
            new.project.weight.copy_(vt[:rank].T)
        return new, float((s[:rank] ** 2).sum() / (s**2).sum())


def _row_scale(row_weights: torch.Tensor | None, rows: int) -> torch.Tensor:
    """sqrt of the row weights, checked (all ones without weights)."""
    if row_weights is None:
        return torch.ones(rows)
    w = torch.as_tensor(row_weights, dtype=torch.float32)
    if w.shape != (rows,) or not bool((w > 0).all()):
        raise ValueError(f"row weights must be {rows} positive numbers, one per row")
    return w.sqrt()


def factorize_embeddings(model: nn.Module, rank: int | None = None, row_weights: torch.Tensor | None = None) -> dict:
    """``model``'s word-embedding table becomes a :class:`FactorizedEmbedding` of ``rank`` (default:
    a quarter of the hidden size), each row's error weighted by ``row_weights`` (e.g.
    :func:`row_counts`), in place; the stage's record with the share of the (weighted) table's
    energy, its squared singular values, the rank keeps."""
    embeddings = model.base_model.embeddings
    table = embeddings.word_embeddings
    if not isinstance(table, nn.Embedding):
        raise BertkitError("factorise the word embeddings once, before quantizing them")
    rank = rank or table.embedding_dim // 4
    new, energy = FactorizedEmbedding._from_svd(table, rank, row_weights)
    embeddings.word_embeddings = new
    return {"stage": "factorize", "rank": rank, "hidden": table.embedding_dim, "rows": table.num_embeddings,
            "row_weights": "none" if row_weights is None else "token counts + 1",
            "energy_kept": round(energy, 4)}


def row_counts(tokenizer, texts: Iterable[str | tuple[str, str]], rows: int) -> torch.Tensor:
    """How often each of ``rows`` token ids occurs in ``texts``, plus one, so that no row weighs 0:
    the row weights for :func:`factorize_embeddings`.  [CLS] and [SEP] count as a text without
    windows reads them (a long text split into windows reads them once more a window: they
    dominate the counts either way)."""
    texts = list(texts)
    ids = torch.tensor([i for text in token_ids(tokenizer, texts) for i in text], dtype=torch.long)
    counts = 1 + torch.bincount(ids[ids < rows], minlength=rows).to(torch.float32)
    specials = (tokenizer.cls_token_id, tokenizer.sep_token_id)
    if any(i is None or not 0 <= i < rows for i in specials):
        raise BertkitError("the tokenizer's [CLS] and [SEP] are not rows of the table: not a BERT WordPiece vocabulary")
    pairs = sum(not isinstance(t, str) for t in texts)
    counts[tokenizer.cls_token_id] += len(texts)
    counts[tokenizer.sep_token_id] += len(texts) + pairs
    return counts
