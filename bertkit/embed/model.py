"""The sentence-embedding pipeline after the encoder: poolings and the fitted transforms.

Poolings (``--pooling``), over the tokens the attention mask keeps, [CLS] and [SEP] included as
sentence-transformers does:
- ``cls``: the last layer's [CLS] vector (Devlin et al. 2019);
- ``mean``, ``max``, ``mean_sqrt_len`` (sum / sqrt(length)): of the last layer, as in
  sentence-transformers' Pooling;
- ``first-last-avg``: mean over tokens of the average of the first transformer layer's and the
  last layer's outputs (BERT-flow, Li et al. EMNLP 2020, section 5 and its released code);
- ``last2avg``: the same with the last two layers;
- ``whitening`` / ``whitening-K``: BERT-whitening (Su et al. 2021, section 3): a base pooling
  (``--base-pooling``, first-last-avg by default as in the paper), then x -> (x - mu) W with
  W = U diag(1/sqrt(s)) from the SVD of the covariance, keeping the first K columns for
  ``whitening-K``.  Fitted on unlabelled text with ``--fit`` and saved in the model directory as
  a sentence-transformers ``Dense`` module, so sentence-transformers loads the whole pipeline.
- ``flow``: BERT-flow (Li et al. 2020, section 4): a Glow trained by maximum likelihood on the
  frozen encoder's pooled vectors (``--base-pooling``) maps them to an isotropic Gaussian; the
  latent is the embedding (see :mod:`.flow`).  Fitted with ``--fit`` like whitening.

:func:`combine_windows` joins the windows of a text longer than the model's limit (see
:mod:`.runner`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..core.errors import BertkitError
from ..core.progress import log

BASE_POOLINGS = ("cls", "mean", "max", "mean_sqrt_len", "first-last-avg", "last2avg")
ST_POOLING_MODES = {  # sentence-transformers Pooling config keys
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}


@dataclass(frozen=True)
class PoolingSpec:
    base: str  # one of BASE_POOLINGS
    whiten: bool = False
    keep: int | None = None  # dimensions kept by whitening-K
    flow: bool = False

    @property
    def fitted(self) -> bool:
        return self.whiten or self.flow

    @property
    def name(self) -> str:
        if self.flow:
            return "flow"
        if not self.whiten:
            return self.base
        return f"whitening-{self.keep}" if self.keep else "whitening"


def parse_pooling(name: str, base: str = "first-last-avg") -> PoolingSpec:
    if name in BASE_POOLINGS:
        return PoolingSpec(name)
    if name == "flow" or name == "whitening" or name.startswith("whitening-"):
        if base not in BASE_POOLINGS:
            raise BertkitError(f"unknown --base-pooling {base!r} ({', '.join(BASE_POOLINGS)})")
        if name == "flow":
            return PoolingSpec(base, flow=True)
        keep = None
        if name != "whitening":
            try:
                keep = int(name.split("-", 1)[1])
            except ValueError:
                raise BertkitError(f"--pooling {name}: expected whitening-K with K a whole number") from None
            if keep < 1:
                raise BertkitError("whitening-K needs K >= 1")
        return PoolingSpec(base, True, keep)
    raise BertkitError(f"unknown pooling {name!r}: choose from {', '.join(BASE_POOLINGS)}, whitening, whitening-K, flow")


# ---------------------------------------------------------------- pooling one batch of windows


def pool_windows(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor, base: str) -> torch.Tensor:
    """Pool each window of a batch: returns (windows, hidden)."""
    m = mask.unsqueeze(-1).to(hidden_states[-1].dtype)
    if base == "cls":
        return hidden_states[-1][:, 0]
    if base == "max":
        return hidden_states[-1].masked_fill(m == 0, float("-inf")).max(1).values
    if base == "first-last-avg":
        tokens = (hidden_states[1] + hidden_states[-1]) / 2
    elif base == "last2avg":
        tokens = (hidden_states[-2] + hidden_states[-1]) / 2
    else:
        tokens = hidden_states[-1]
    summed = (tokens * m).sum(1)
    count = m.sum(1).clamp(min=1)
    return summed / (count.sqrt() if base == "mean_sqrt_len" else count)


def combine_windows(vectors: torch.Tensor, lengths: Sequence[int], base: str) -> torch.Tensor:
    """One vector from a text's windows (see the module docstring)."""
    if len(lengths) == 1:
        return vectors[0]
    if base == "max":
        return vectors.max(0).values
    if base == "cls":
        return vectors.mean(0)
    weights = torch.tensor(lengths, dtype=vectors.dtype).unsqueeze(1)
    if base == "mean_sqrt_len":  # undo each window's sqrt, sum, divide by sqrt of the total
        return (vectors * weights.sqrt()).sum(0) / math.sqrt(sum(lengths))
    return (vectors * weights).sum(0) / weights.sum()

ALL_POOLINGS = ("cls", "mean", "max", "mean_sqrt_len", "first-last-avg", "last2avg", "whitening", "whitening-256", "flow")


# ---------------------------------------------------------------- whitening


@dataclass
class Whitening:
    """x -> (x - mean) @ matrix, as a Linear layer: weight = matrix.T, bias = -mean @ matrix."""

    mean: np.ndarray  # (d,)
    matrix: np.ndarray  # (d, k)

    @classmethod
    def fit(cls, vectors: np.ndarray, keep: int | None = None) -> "Whitening":
        """Su et al. 2021, section 3: W = U diag(1/sqrt(s)) from the SVD of the covariance, its first
        ``keep`` columns.  Only the kept directions need variance, so whitening-K fits on fewer
        sentences than dimensions (more than K: :func:`.task.sentences_needed`).  A kept direction
        without variance (repeated sentences; the zero-sum direction of a randomly initialised
        BERT's LayerNorm) is mapped to 0, never divided by its zero singular value."""
        n, d = vectors.shape
        if keep is not None and keep > d:
            raise BertkitError(f"whitening-{keep}: the model has only {d} dimensions")
        k = keep or d
        x = vectors.astype(np.float64)
        mean = x.mean(0)
        centred = x - mean
        u, s, _ = np.linalg.svd(centred.T @ centred / max(n - 1, 1))  # the covariance
        s = s[:k]
        varying = s > s[0] * d * np.finfo(np.float32).eps ** 2  # above the float32 vectors' rounding
        rank = int(varying.sum())
        if rank < k:
            log(f"whitening: the {n} vectors vary in {rank} of the {k} kept directions; the other {k - rank} are set to 0")
        scale = np.divide(1.0, np.sqrt(s), out=np.zeros_like(s), where=varying)
        return cls(mean, u[:, :k] * scale)

    def weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = torch.from_numpy(self.matrix.T.copy()).float()
        bias = torch.from_numpy(-(self.mean @ self.matrix)).float()
        return weight, bias

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight_bias()
        return vectors @ weight.T + bias


class FlowTransform:
    """A trained :class:`bertkit.embed.flow.Glow` used as an embedding transform."""

    def __init__(self, flow):
        self.flow = flow.eval()

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            z, _ = self.flow(vectors.unsqueeze(0) if vectors.dim() == 1 else vectors)
        return z[0] if vectors.dim() == 1 else z
