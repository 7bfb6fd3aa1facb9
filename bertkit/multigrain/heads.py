"""Lattice-BERT fine-tuned for sequence classification and NER, behind the kit's own classification
and NER code: ``bertkit train`` (``--task classify`` / ``ner``), ``predict`` and ``eval`` take a
Lattice-BERT directory as they take a BERT one.

The models here look, to :mod:`bertkit.classify` and :mod:`bertkit.ner`, like transformers'
``BertForSequenceClassification`` / ``BertForTokenClassification``:

* ``config`` (:class:`LatticeTaskConfig`) has the names transformers' configs use that those
  modules read (``id2label``, ``num_labels``, ``max_position_embeddings``);
* ``forward(**batch, labels=None)`` returns transformers' ``SequenceClassifierOutput`` /
  ``TokenClassifierOutput`` (``.loss``, ``.logits``);
* :func:`build_task_model` is what :func:`bertkit.core.modelio.load_model` runs for a Lattice-BERT
  directory asked for ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``:
  with ``id2label`` a new head on the directory's encoder (pretrained or fine-tuned), without it
  the fine-tuned model the directory holds;
* the one thing that differs, how a text becomes model inputs, the model hands out itself:
  ``text_encoder`` / ``char_encoder`` give the lattice encoders of :mod:`.encoding`, built with the
  model's word vocabulary (``words``, the directory's ``words.txt``), so inference builds lattices
  exactly as training did;
* saving (``save_model_dir``, which :func:`bertkit.core.modelio.save_model` calls) writes a
  Lattice-BERT directory (:func:`.io.save_lattice_dir`) whose manifest kind is ``classifier`` or
  ``ner``, its labels in ``lattice_config.json``.

Heads (as BERT's, Devlin et al. 2019, sections 4.1 and 5.3): classification is ``[CLS]``'s last
hidden state -> dense + tanh (BERT's pooler; new, since a masked-LM checkpoint has none, as
transformers does for such a BERT) -> dropout -> linear.  Token classification is dropout ->
linear on every unit; only character units are labelled (``[CLS]``, ``[SEP]``, words and padding
get -100), so words are context only, and the logits of character ``k`` are at row ``1 + k``, as
in a BERT batch: the NER runner's windowing and constrained Viterbi decoding run unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from ..core.errors import BertkitError
from .encoding import LatticeCharEncoder, LatticeEncoder
from .io import WORDS_FILE, check_words, load_lattice_dir, read_words, save_lattice_dir
from .model import LatticeConfig, LatticeModel, init_weights, register_model


@dataclass
class LatticeTaskConfig(LatticeConfig):
    """A fine-tuned model's config: the encoder's plus its label names, in id order."""

    labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if (not isinstance(self.labels, list) or not self.labels or len(set(self.labels)) != len(self.labels)
                or not all(isinstance(label, str) and label for label in self.labels)):
            raise ValueError(f"labels must be a list of distinct non-empty strings, not {self.labels!r}")

    # the names of transformers' configs, which the classification and NER runners read
    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def max_position_embeddings(self) -> int:
        return self.max_position

    @classmethod
    def for_encoder(cls, config: LatticeConfig, labels: Sequence[str]) -> LatticeTaskConfig:
        return cls(**{f.name: getattr(config, f.name) for f in fields(LatticeConfig)}, labels=list(labels))


class LatticeTaskModel(nn.Module):
    """The encoder, a task head and the word vocabulary its lattices are built with."""

    config_class = LatticeTaskConfig

    def __init__(self, config: LatticeTaskConfig, words: Sequence[str] = (), lattice: LatticeModel | None = None):
        super().__init__()
        self.config = config
        self.lattice = lattice if lattice is not None else LatticeModel(config)
        self.words = list(words)
        self.dropout = nn.Dropout(config.dropout)

    @classmethod
    def from_encoder(cls, encoder: LatticeModel, labels: Sequence[str], words: Sequence[str]) -> LatticeTaskModel:
        """A new head (initialised from the global torch RNG, as BERT's) over ``encoder``, which is used as is."""
        return cls(LatticeTaskConfig.for_encoder(encoder.config, labels), words, lattice=encoder)

    def save_model_dir(self, tokenizer, directory: Path, kind: str, dtype: torch.dtype | None = None) -> None:
        save_lattice_dir(self, tokenizer, self.words, directory, dtype=dtype, kind=kind)


@register_model("classifier")
class LatticeForSequenceClassification(LatticeTaskModel):
    def __init__(self, config: LatticeTaskConfig, words: Sequence[str] = (), lattice: LatticeModel | None = None):
        super().__init__(config, words, lattice)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.pooler, config.initializer_range)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids, starts, ends, is_word=None, attention_mask=None, token_type_ids=None,
                labels=None) -> SequenceClassifierOutput:
        hidden = self.lattice(input_ids, starts, ends, is_word, attention_mask, token_type_ids)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def text_encoder(self, tokenizer, max_length: int) -> LatticeEncoder:
        """The encoder :class:`bertkit.classify.runner.Classifier` uses for this model."""
        return LatticeEncoder(tokenizer, self.words, max_length)


@register_model("ner")
class LatticeForTokenClassification(LatticeTaskModel):
    def __init__(self, config: LatticeTaskConfig, words: Sequence[str] = (), lattice: LatticeModel | None = None):
        super().__init__(config, words, lattice)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids, starts, ends, is_word=None, attention_mask=None, token_type_ids=None,
                labels=None) -> TokenClassifierOutput:
        """Logits for every unit [batch, units, labels]; row ``1 + k`` is character ``k``."""
        hidden = self.lattice(input_ids, starts, ends, is_word, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(hidden))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)

    def char_encoder(self, tokenizer) -> LatticeCharEncoder:
        """The encoder :class:`bertkit.ner.runner.NerTagger` uses for this model."""
        return LatticeCharEncoder(tokenizer, self.words)


# what the kit's commands ask modelio.load_model for -> the Lattice-BERT model that does it
TASK_CLASSES = {AutoModelForSequenceClassification: LatticeForSequenceClassification,
                AutoModelForTokenClassification: LatticeForTokenClassification,
                LatticeForSequenceClassification: LatticeForSequenceClassification,
                LatticeForTokenClassification: LatticeForTokenClassification}


def build_task_model(directory: Path, cls, dtype: torch.dtype | None = None, num_labels: int | None = None,
                     id2label: dict | None = None, label2id: dict | None = None, **options) -> LatticeTaskModel:
    """A classification or token classification model from a Lattice-BERT directory, as
    ``cls.from_pretrained(directory, ...)`` would give one from a BERT directory: with ``id2label``
    a new head (seeded by the caller) on the directory's encoder, whatever model it holds; without,
    the fine-tuned model of that class the directory holds.  One-line BertkitErrors otherwise."""
    task_cls = TASK_CLASSES.get(cls)
    if task_cls is None:
        raise BertkitError(f"{directory} holds a Lattice-BERT model, not a {getattr(cls, '__name__', cls)}")
    if options or dtype not in (None, torch.float32):
        raise BertkitError(f"{directory} is a Lattice-BERT model: it loads in float32, without "
                           f"{', '.join(options) or 'dtype ' + str(dtype)}")
    bundle = load_lattice_dir(directory)  # checks the tokenizer and words.txt against the model
    saved = bundle.model
    if id2label is None:
        if not isinstance(saved, task_cls):
            raise BertkitError(f"{directory} holds a {type(saved).__name__}, not a fine-tuned {task_cls.__name__}")
        return saved
    labels = [id2label[i] for i in range(len(id2label))]
    if num_labels is not None and num_labels != len(labels):
        raise BertkitError(f"num_labels {num_labels} but {len(labels)} label names")
    encoder = saved if isinstance(saved, LatticeModel) else saved.lattice
    return task_cls.from_encoder(encoder, labels, bundle.words).float()


def directory_words(directory: Path, config: LatticeConfig) -> list[str]:
    """A fine-tuned model's word vocabulary: the directory's ``words.txt``, checked against the model."""
    words = read_words(Path(directory) / WORDS_FILE)
    check_words(words, config.word_vocab_size, str(Path(directory) / WORDS_FILE))
    return words
