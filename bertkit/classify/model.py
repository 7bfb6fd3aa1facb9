"""The classifier model: a plain ``BertForSequenceClassification`` ([CLS] -> pooler -> linear,
Devlin et al. 2019, section 4.1) with its label names in ``config.json``, so transformers loads it
as is."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from ..core import modelio
from ..core.errors import BertkitError


def new_classifier(path: str, labels: list[str], seed: int):
    """The encoder at ``path`` with a new classification head over ``labels`` (seeded init)."""
    torch.manual_seed(seed)  # the new classification head's init is part of the seeded run
    return modelio.load_model(
        path, AutoModelForSequenceClassification, dtype=torch.float32, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )


def load_classifier(path: str):
    """A fine-tuned single-label classifier from ``path`` (already resolved); one-line errors."""
    if modelio.Manifest.read(path).kind != "classifier":
        raise BertkitError(f"{path} is not a fine-tuned classifier (train one with `bertkit train`)")
    net = modelio.load_model(path, AutoModelForSequenceClassification, dtype=torch.float32)
    if getattr(net.config, "problem_type", None) not in (None, "single_label_classification"):
        raise BertkitError(f"{path} is not a single-label classifier")
    return net
