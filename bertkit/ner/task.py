"""Fine-tuning a character-level NER model over the shared loop; dev entity F1 picks the
checkpoint.  Training sentences longer than the window are split into consecutive windows, each
a training example (an entity cut by a window edge keeps its I- tags), never cut.  From a
Lattice-BERT directory the tagger is a Lattice-BERT one (:mod:`bertkit.multigrain.heads`): each
window becomes a lattice, its characters labelled and its words context only."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForTokenClassification

from ..core import modelio
from ..core.errors import BertkitError
from ..core.progress import log
from ..training import TrainConfig, Trainer
from .data import NerData, read_ner
from .model import label_set, spans_to_tags
from .runner import KIND, NerTagger


class NerTask:
    def __init__(self, tagger: NerTagger, train: NerData, dev: NerData | None, save_dtype=None):
        self.tagger, self.model, self.dev, self.save_dtype = tagger, tagger.model, dev, save_dtype
        label_id = {label: i for i, label in enumerate(tagger.labels)}
        encoder, size = tagger.encoder, tagger.window
        self.examples = []
        for sentence in train.sentences:
            tags = spans_to_tags(len(sentence.text), sentence.entities, train.scheme)
            pos = tagger.chars.positions(sentence.text)
            for s in range(0, len(pos), size):
                piece = pos[s : s + size]
                self.examples.append((encoder.encode(sentence.text, piece), [label_id[tags[p]] for p in piece]))

    def length(self, example) -> int:
        return len(example[0]) + 2  # ids (BERT) or units (Lattice-BERT), [CLS] and [SEP]

    def collate(self, examples, generator):
        return self.tagger.encoder.batch([inputs for inputs, _ in examples], [labels for _, labels in examples])

    def evaluate(self, model) -> dict:
        if not self.dev:
            return {}
        scores = self.tagger.evaluate(self.dev.sentences)
        return {k: scores[k] for k in ("f1", "precision", "recall")}

    def save(self, model, directory: Path) -> None:
        modelio.save_model(model, self.tagger.tokenizer, directory, KIND, dtype=self.save_dtype)


def run_ner_training(train_path: str, dev_path: str | None, model: str | None, cfg: TrainConfig,
                     max_length: int = 128, save_fp16: bool = False, fix_tags: bool = False) -> dict:
    train = read_ner(train_path, fix_tags)
    if not train.types:
        raise BertkitError(f"{train_path} has no entities to learn")
    dev = read_ner(dev_path, fix_tags) if dev_path else None
    if dev:
        unseen = sorted(set(dev.types) - set(train.types))
        if unseen:
            raise BertkitError(f"{dev_path}: entity type{'s' if len(unseen) > 1 else ''} {', '.join(unseen)} never "
                               f"occur{'' if len(unseen) > 1 else 's'} in {train_path}")
    labels = label_set(train.types, train.scheme)
    path = modelio.resolve_model(model, layouts=modelio.TASK_LAYOUTS)
    torch.manual_seed(cfg.seed)  # the new tagging head's init is part of the seeded run
    net = modelio.load_model(path, AutoModelForTokenClassification, dtype=torch.float32, num_labels=len(labels),
                             id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    tagger = NerTagger(net, modelio.load_tokenizer(path), max_length=max_length)
    task = NerTask(tagger, train, dev, save_dtype=torch.float16 if save_fp16 else None)
    n_entities = sum(len(s.entities) for s in train.sentences)
    log(f"{len(train.sentences)} training sentences ({len(task.examples)} windows), {n_entities} entities, "
        f"{train.scheme} tags over {', '.join(train.types)}; {len(dev.sentences) if dev else 0} dev sentences")
    if dev:
        cfg.metric = cfg.metric or "f1"
    return Trainer(task, task.examples, cfg).fit()
