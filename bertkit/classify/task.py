"""Sequence classification: fine-tuning, prediction and evaluation.

Training data is TSV with a header, ``label<TAB>text`` or ``label<TAB>text_a<TAB>text_b`` for
pairs (JSONL with the same keys works too).  The classifier is a plain
``BertForSequenceClassification`` ([CLS] → pooler → linear, Devlin et al. 2019, section 4.1),
saved with its label names in ``config.json`` so ``transformers`` loads it as is.  Texts longer
than ``--max-length`` are split into windows: each window is a training example with the
text's label, and at prediction time the windows' probabilities are averaged.  From a
Lattice-BERT directory (``bertkit pretrain --multigrain``) the classifier is a Lattice-BERT one
(:mod:`bertkit.multigrain.heads`), its texts turned into lattices instead of tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..core import modelio
from ..core.errors import BertkitError
from ..core.progress import log
from ..training import TrainConfig, Trainer
from .data import Example, check_labels, load_labelled
from .model import new_classifier
from .runner import Classifier


class ClassifyTask:
    """Fine-tuning a sequence classifier with the shared trainer."""

    def __init__(self, classifier: Classifier, train: Sequence[Example], dev: Sequence[Example],
                 save_dtype: torch.dtype | None = None):
        self.classifier, self.save_dtype = classifier, save_dtype
        self.model = classifier.model
        label_id = {label: i for i, label in enumerate(classifier.labels)}
        self.examples = [
            (w, label_id[ex.label]) for ex in train for w in classifier.encoder.encode(ex.text, ex.text_b)
        ]
        self.dev = dev

    def length(self, item) -> int:
        return len(item[0])

    def collate(self, items, generator):
        batch = self.classifier.encoder.pad_batch([w for w, _ in items])
        batch["labels"] = torch.tensor([y for _, y in items], dtype=torch.long)
        return batch

    def evaluate(self, model) -> dict[str, float]:
        return self.classifier.evaluate(self.dev, source="dev") if self.dev else {}

    def save(self, model, directory: Path) -> None:
        modelio.save_model(model, self.classifier.tokenizer, directory, "classifier", dtype=self.save_dtype)


def run_training(train_path: str, dev_path: str | None, model: str | None, cfg: TrainConfig,
                 max_length: int = 128, save_fp16: bool = False) -> dict:
    train = load_labelled(train_path)
    labels = sorted({ex.label for ex in train})
    if len(labels) < 2:
        raise BertkitError(f"{train_path}: only one label ({labels[0]}); classification needs at least two")
    dev = load_labelled(dev_path) if dev_path else []
    check_labels(dev, labels, dev_path or "", "training")
    path = modelio.resolve_model(model, layouts=modelio.TASK_LAYOUTS)
    net = new_classifier(path, labels, cfg.seed)
    classifier = Classifier(net, modelio.load_tokenizer(path), max_length=max_length)
    task = ClassifyTask(classifier, train, dev, save_dtype=torch.float16 if save_fp16 else None)
    if classifier.encoder.truncated_pairs:
        log(f"warning: {classifier.encoder.truncated_pairs} training pairs exceed --max-length and were truncated longest-first")
    split = len(task.examples) - len(train)
    if split:
        log(f"{split} extra windows from training texts longer than --max-length {classifier.encoder.max_length}")
    log(f"{len(train)} training examples, {len(dev)} dev examples, labels: {', '.join(labels)}")
    if dev:
        cfg.metric = cfg.metric or "accuracy"
    return Trainer(task, task.examples, cfg).fit()
