"""Sequence classification: fine-tuning, prediction and evaluation.

Training data is TSV with a header, ``label<TAB>text`` or ``label<TAB>text_a<TAB>text_b`` for
pairs (JSONL with the same keys works too).  The classifier is a plain
``BertForSequenceClassification`` ([CLS] → pooler → linear, Devlin et al. 2019, section 4.1),
saved with its label names in ``config.json`` so ``transformers`` loads it as is.  Texts longer
than ``--max-length`` are split into windows: each window is a training example with the
text's label, and at prediction time the windows' probabilities are averaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from . import modelio
from .encoding import TextEncoder, Window
from .errors import BertkitError
from .metrics import accuracy, macro_f1
from .progress import log
from .recompute import RecomputeOptions, setup_recompute
from .textio import input_format, map_in_order, read_records
from .trainer import TrainConfig, Trainer


@dataclass
class Example:
    text: str
    text_b: str | None = None
    label: str | None = None
    lineno: int = 0


def _field(record: dict, name: str, path: str, lineno: int) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise BertkitError(f"{path}:{lineno}: missing text field {name!r}")
    return value


def read_examples(path: str, labelled: bool) -> Iterator[Example]:
    """Examples from txt (texts only), tsv (header) or jsonl; streaming."""
    fmt = input_format(path)
    if labelled and fmt == "txt":
        raise BertkitError(f"{path}: labelled data must be .tsv (header: label<TAB>text) or .jsonl")
    for lineno, record in read_records(path, fmt):
        if labelled and "label" not in record:
            raise BertkitError(f"{path}:{lineno}: no 'label' column (expected a header like label<TAB>text)")
        if "text_a" in record:
            text, text_b = _field(record, "text_a", path, lineno), _field(record, "text_b", path, lineno)
        else:
            text, text_b = _field(record, "text", path, lineno), None
        label = str(record["label"]) if "label" in record else None
        if labelled and not label.strip():
            raise BertkitError(f"{path}:{lineno}: empty label")
        if labelled and not text.strip():
            raise BertkitError(f"{path}:{lineno}: empty text")
        yield Example(text, text_b, label, lineno)


def load_labelled(path: str) -> list[Example]:
    examples = list(read_examples(path, labelled=True))
    if not examples:
        raise BertkitError(f"{path} has a header but no examples")
    return examples


def check_labels(examples: Sequence[Example], known: Sequence[str], path: str, what: str) -> None:
    known_set = set(known)
    for ex in examples:
        if ex.label not in known_set:
            raise BertkitError(
                f"{path}:{ex.lineno}: label {ex.label!r} is not among the {what} labels ({', '.join(sorted(known_set))})"
            )


class Classifier:
    """A loaded classification model with its tokenizer; predicts in input order."""

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64):
        self.model, self.tokenizer = model, tokenizer
        limit = model.config.max_position_embeddings
        self.encoder = TextEncoder(tokenizer, min(max_length, limit))
        self.batch_size = batch_size
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def load(cls, model: str | None, **kwargs) -> "Classifier":
        path = modelio.resolve_model(model)
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")) if Path(path).is_dir() else {}
        if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
            raise BertkitError(f"{path} is not a fine-tuned classifier (train one with `bertkit train`)")
        net = modelio.load_model(path, AutoModelForSequenceClassification, dtype=torch.float32)
        if getattr(net.config, "problem_type", None) not in (None, "single_label_classification"):
            raise BertkitError(f"{path} is not a single-label classifier")
        return cls(net.eval(), modelio.load_tokenizer(path), **kwargs)

    def _probabilities(self, batch: Sequence[list[Window]]) -> list[torch.Tensor]:
        windows = [w for item in batch for w in item]
        inputs = self.encoder.pad_batch(windows)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits
        probs = logits.float().softmax(-1).cpu()
        out, i = [], 0
        for item in batch:
            out.append(probs[i : i + len(item)].mean(0))
            i += len(item)
        return out

    def predict_proba(self, examples) -> Iterator[torch.Tensor]:
        """Class probabilities of each example, in input order (windows averaged)."""
        self.model.eval()
        encoded = (self.encoder.encode(ex.text, ex.text_b) for ex in examples)
        yield from map_in_order(
            encoded, self._probabilities, length=lambda ws: sum(len(w.input_ids) for w in ws), batch_size=self.batch_size
        )

    def evaluate(self, examples: Sequence[Example]) -> dict[str, float]:
        pred = [self.labels[int(p.argmax())] for p in self.predict_proba(examples)]
        gold = [ex.label for ex in examples]
        return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels=self.labels), "n": len(gold)}


class ClassifyTask:
    """Fine-tuning a sequence classifier with the shared trainer."""

    def __init__(self, classifier: Classifier, train: Sequence[Example], dev: Sequence[Example]):
        self.classifier = classifier
        self.model = classifier.model
        label_id = {label: i for i, label in enumerate(classifier.labels)}
        self.examples = [
            (w, label_id[ex.label]) for ex in train for w in classifier.encoder.encode(ex.text, ex.text_b)
        ]
        self.dev = dev

    def length(self, item) -> int:
        return len(item[0].input_ids)

    def collate(self, items, generator):
        batch = self.classifier.encoder.pad_batch([w for w, _ in items])
        batch["labels"] = torch.tensor([y for _, y in items], dtype=torch.long)
        return batch

    def evaluate(self, model) -> dict[str, float]:
        return self.classifier.evaluate(self.dev) if self.dev else {}

    def save(self, model, directory: Path) -> None:
        modelio.save_pretrained(model, self.classifier.tokenizer, directory)


def run_training(train_path: str, dev_path: str | None, model: str | None, cfg: TrainConfig,
                 max_length: int = 128, recompute: RecomputeOptions = RecomputeOptions()) -> dict:
    train = load_labelled(train_path)
    labels = sorted({ex.label for ex in train})
    if len(labels) < 2:
        raise BertkitError(f"{train_path}: only one label ({labels[0]}); classification needs at least two")
    dev = load_labelled(dev_path) if dev_path else []
    check_labels(dev, labels, dev_path or "", "training")
    path = modelio.resolve_model(model)
    torch.manual_seed(cfg.seed)  # the new classification head's init is part of the seeded run
    net = modelio.load_model(
        path, AutoModelForSequenceClassification, dtype=torch.float32, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )
    classifier = Classifier(net, modelio.load_tokenizer(path), max_length=max_length)
    task = ClassifyTask(classifier, train, dev)
    if classifier.encoder.truncated_pairs:
        log(f"warning: {classifier.encoder.truncated_pairs} training pairs exceed --max-length and were truncated longest-first")
    split = len(task.examples) - len(train)
    if split:
        log(f"{split} extra windows from training texts longer than --max-length {classifier.encoder.max_length}")
    log(f"{len(train)} training examples, {len(dev)} dev examples, labels: {', '.join(labels)}")
    if dev:
        cfg.metric = cfg.metric or "accuracy"
    setup_recompute(task, task.examples, cfg, recompute)
    return Trainer(task, task.examples, cfg).fit()


def prediction_record(labels: Sequence[str], probs: torch.Tensor) -> str:
    best = int(probs.argmax())
    return json.dumps(
        {"label": labels[best], "probs": {l: round(float(p), 6) for l, p in zip(labels, probs)}}, ensure_ascii=False
    )
