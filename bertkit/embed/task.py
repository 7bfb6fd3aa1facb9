"""Fitting the pipeline's transforms: BERT-whitening in closed form, BERT-flow by maximum
likelihood over the shared training loop (see :mod:`.flow` for the method)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core.errors import BertkitError
from ..core.textio import read_texts
from ..training import TrainConfig, Trainer
from .flow import Glow, save_flow
from .model import FlowTransform, PoolingSpec, Whitening

FLOW_MIN_SENTENCES = 64  # fit_flow's floor: a dev split of 1 in 20, about two batches of 32 to train on


class FlowTask:
    """Maximum-likelihood training of a Glow on fixed vectors, with the shared trainer."""

    def __init__(self, flow: Glow, dev: torch.Tensor | None):
        self.flow, self.dev = flow, dev
        self.model = _NllModule(flow)

    def length(self, vector) -> int:
        return 1

    def collate(self, vectors, generator):
        return {"vectors": torch.stack(list(vectors))}

    def evaluate(self, model) -> dict[str, float]:
        if self.dev is None or len(self.dev) == 0:
            return {}
        return {"neg_dev_nll": -float(model.flow.nll(self.dev))}

    def save(self, model, directory: Path) -> None:
        save_flow(model.flow, Path(directory))


class _NllModule(nn.Module):
    def __init__(self, flow: Glow):
        super().__init__()
        self.flow = flow

    def forward(self, vectors):
        return self.flow.nll(vectors)


def fit_flow(vectors: torch.Tensor, work_dir: Path, seed: int = 42, epochs: float = 2.0) -> FlowTransform:
    """Train a Glow on ``vectors`` (maximum likelihood) with the shared training loop."""
    n = len(vectors)
    if n < FLOW_MIN_SENTENCES:
        raise BertkitError(f"flow needs at least {FLOW_MIN_SENTENCES} sentences to fit; {n} given")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_dev = max(1, n // 20)
    dev, train = vectors[order[:n_dev]], vectors[order[n_dev:]]
    torch.manual_seed(seed)
    task = FlowTask(Glow(vectors.shape[1]), dev)
    cfg = TrainConfig(output_dir=work_dir, epochs=epochs, batch_size=32, lr=1e-3, warmup_ratio=0.05,
                      weight_decay=0.0, seed=seed, metric="neg_dev_nll", eval_every=0)
    Trainer(task, list(train), cfg).fit()
    return FlowTransform(task.flow)


def read_fit_corpus(path: str) -> list[str]:
    """The sentences to fit on: the corpus's non-blank lines (a blank line is no sentence; each
    would add the empty text's vector).  Read whole, before the model loads, so their count is
    checked before any encoding; the pooled vectors the fit keeps are larger than these texts."""
    return [text for text in read_texts(path) if text.strip()]


def sentences_needed(spec: PoolingSpec, dim: int) -> int:
    """The fewest sentences ``spec``'s transform fits on.  n centred vectors span at most n - 1
    directions, so whitening-K (Su et al. 2021: the top K directions of the covariance's SVD) needs
    K + 1 for every kept direction to have non-zero variance, whatever the hidden size; full
    whitening keeps all ``dim``.  A flow needs FLOW_MIN_SENTENCES."""
    if spec.flow:
        return FLOW_MIN_SENTENCES
    return (spec.keep or dim) + 1


def fit_shortfall(spec: PoolingSpec, dim: int, count: int, corpus: str) -> str | None:
    """Why ``spec``'s transform cannot be fitted on ``count`` sentences of ``corpus`` with a
    ``dim``-wide model, or None: known from the count alone, so it is checked before encoding."""
    if spec.keep and spec.keep > dim:
        return f"keeps {spec.keep} dimensions; the model has only {dim}"
    need = sentences_needed(spec, dim)
    if count >= need:
        return None
    least = f"at least {need}" if spec.flow else f"more than {need - 1}"
    return f"needs {least} sentences to fit; {corpus} has {count}"


def fit_shortfalls(specs: Sequence[PoolingSpec], dim: int, count: int, corpus: str) -> dict[str, str]:
    """{pooling: why it cannot be fitted} for the fitted poolings of ``specs`` that cannot."""
    reasons = {s.name: fit_shortfall(s, dim, count, corpus) for s in specs if s.fitted}
    return {name: reason for name, reason in reasons.items() if reason}


def require_fit(specs: Sequence[PoolingSpec], dim: int, count: int, corpus: str) -> None:
    """Fail, before any encoder pass, when a transform of ``specs`` cannot be fitted on the corpus."""
    for name, reason in fit_shortfalls(specs, dim, count, corpus).items():
        raise BertkitError(f"{name} {reason}")


def fit_transform(spec: PoolingSpec, vectors: torch.Tensor, work_dir: Path | None):
    """Whitening (closed form) or flow (trained) for ``spec`` from pooled ``vectors``."""
    if spec.flow:
        if work_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                return fit_flow(vectors, Path(tmp) / "flow")
        return fit_flow(vectors, work_dir)
    return Whitening.fit(vectors.numpy(), spec.keep)
