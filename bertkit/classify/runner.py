"""The classification runner: class probabilities in input order, and accuracy / macro-F1.

Texts longer than ``max_length`` are split into windows and the windows' probabilities averaged.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..core import modelio
from ..core.device import module_device
from ..core.encoding import TextEncoder, TokenWindow
from ..core.metrics import accuracy, macro_f1
from ..core.runner import Runner
from ..core.textio import map_in_order
from .data import Example, as_example, check_labels
from .model import load_classifier


class Classifier(Runner):
    """A loaded classification model with its tokenizer; predicts in input order."""

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64):
        self.model, self.tokenizer = model, tokenizer
        size = min(max_length, model.config.max_position_embeddings)
        make = getattr(model, "text_encoder", None)  # a model that builds its own inputs (Lattice-BERT: lattices)
        self.encoder = make(tokenizer, size) if make is not None else TextEncoder(tokenizer, size)
        self.batch_size = batch_size
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def load(cls, path: str | None = None, **options) -> "Classifier":
        path = modelio.resolve_model(path, layouts=modelio.TASK_LAYOUTS)
        return cls(load_classifier(path).eval(), modelio.load_tokenizer(path), **options)

    def _probabilities(self, batch: Sequence[list[TokenWindow]]) -> list[torch.Tensor]:
        windows = [w for item in batch for w in item]
        inputs = self.encoder.pad_batch(windows)
        device = module_device(self.model)
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits
        probs = logits.float().softmax(-1).cpu()
        out, i = [], 0
        for item in batch:
            out.append(probs[i : i + len(item)].mean(0))
            i += len(item)
        return out

    def predict(self, texts) -> Iterator[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) for each text (a str or a (text_a, text_b) pair), in input order."""
        for probs in self.predict_proba(texts):
            yield self.labels[int(probs.argmax())], dict(zip(self.labels, probs.tolist()))

    def predict_proba(self, examples) -> Iterator[torch.Tensor]:
        """Class probabilities of each example (an Example, a str or a pair), in input order (windows averaged)."""
        self.model.eval()
        encoded = self.encoder.encode_stream((ex.text, ex.text_b) for ex in map(as_example, examples))
        yield from map_in_order(
            encoded, self._probabilities, length=lambda ws: sum(map(len, ws)), batch_size=self.batch_size
        )

    def evaluate(self, examples: Sequence[Example], source: str = "the data") -> dict[str, float]:
        """Accuracy and macro-F1 over ``examples`` (from ``source``, named in errors), whose labels
        must all be the model's."""
        check_labels(examples, self.labels, source, "model's")
        pred = [self.labels[int(p.argmax())] for p in self.predict_proba(examples)]
        gold = [ex.label for ex in examples]
        return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels=self.labels), "n": len(gold)}
