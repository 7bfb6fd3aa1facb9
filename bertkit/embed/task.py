"""Fitting the pipeline's transforms: BERT-whitening in closed form, BERT-flow by maximum
likelihood over the shared training loop (see :mod:`.flow` for the method)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..core.errors import BertkitError
from ..training import TrainConfig, Trainer
from .flow import Glow, save_flow
from .model import FlowTransform, PoolingSpec, Whitening


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
    if n < 64:
        raise BertkitError(f"flow needs at least 64 sentences to fit, got {n}")
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


def fit_transform(spec: PoolingSpec, vectors: torch.Tensor, work_dir: Path | None):
    """Whitening (closed form) or flow (trained) for ``spec`` from pooled ``vectors``."""
    if spec.flow:
        if work_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                return fit_flow(vectors, Path(tmp) / "flow")
        return fit_flow(vectors, work_dir)
    keep = spec.keep if spec.keep is None or spec.keep <= vectors.shape[1] else None
    if spec.keep and keep is None:
        raise BertkitError(f"{spec.name}: the model has only {vectors.shape[1]} dimensions")
    return Whitening.fit(vectors.numpy(), keep)
