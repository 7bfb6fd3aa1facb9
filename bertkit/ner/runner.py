"""The NER runner: entities with character offsets for each line, in input order, and strict
entity-level scores.  A line longer than the window is read in half-overlapping windows, every
character decided by the window where it has the most context, and decoded as one sequence, so
an entity across a window edge is found whole."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

from ..core import modelio
from ..core.chars import CharEncoder, CharVocab, windows
from ..core.device import module_device
from ..core.errors import BertkitError
from ..core.runner import Runner
from ..core.textio import map_in_order
from .data import Sentence, entity_scores
from .model import Entity, Transitions, scheme_of, tags_to_spans

KIND = "ner"


class NerTagger(Runner):
    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.transitions = Transitions(self.labels, scheme_of(self.labels))
        self.chars = CharVocab(tokenizer)
        make = getattr(model, "char_encoder", None)  # a model that builds its own inputs (Lattice-BERT: lattices)
        self.encoder = make(tokenizer) if make is not None else CharEncoder(self.chars)
        self.window = min(max_length, model.config.max_position_embeddings) - 2
        if self.window < 4:
            raise BertkitError("--max-length must be at least 6 for NER")
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | None = None, **options) -> "NerTagger":
        path = modelio.resolve_model(path, layouts=modelio.TASK_LAYOUTS)
        if modelio.Manifest.read(path).kind != KIND:
            raise BertkitError(f"{path} is not an NER model (train one with `bertkit train --task ner`)")
        model = modelio.load_model(path, AutoModelForTokenClassification, dtype=torch.float32).eval()
        return cls(model, modelio.load_tokenizer(path), **options)

    def _scores(self, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
        """Each text's non-space positions and their tag log-probabilities."""
        positions = [self.chars.positions(t) for t in texts]
        scores = [np.zeros((len(p), len(self.labels)), dtype=np.float32) for p in positions]
        pieces = [(i, s, e, lo, hi) for i, p in enumerate(positions) if p for s, e, lo, hi in windows(len(p), self.window)]
        device = module_device(self.model)
        for start in range(0, len(pieces), self.batch_size):
            chunk = pieces[start : start + self.batch_size]
            batch = self.encoder.batch([self.encoder.encode(texts[i], positions[i][s:e]) for i, s, e, _, _ in chunk])
            with torch.inference_mode():
                logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
            logp = logits.float().log_softmax(-1).cpu().numpy()
            for b, (i, s, _, lo, hi) in enumerate(chunk):
                scores[i][s + lo : s + hi] = logp[b, 1 + lo : 1 + hi]
        return list(zip(positions, scores))

    def _entities_batch(self, texts: Sequence[str]) -> list[list[Entity]]:
        out = []
        for pos, scores in self._scores(texts):
            spans = tags_to_spans(self.transitions.viterbi(scores))
            out.append([Entity(pos[e.start], pos[e.end - 1] + 1, e.type) for e in spans])
        return out

    def entities(self, texts: Iterable[str]) -> Iterator[list[Entity]]:
        """The entities of each text (offsets into the text), in input order."""
        self.model.eval()
        yield from map_in_order(texts, self._entities_batch, length=len, batch_size=self.batch_size)

    def tagged(self, texts: Iterable[str]) -> Iterator[tuple[str, list[Entity]]]:
        """(text, its entities) for each text, in input order; streams."""
        self.model.eval()
        yield from map_in_order(texts, lambda batch: list(zip(batch, self._entities_batch(batch))), length=len,
                                batch_size=self.batch_size)

    def evaluate(self, sentences: Sequence[Sentence], source: str = "the data") -> dict:
        predicted = list(self.entities([s.text for s in sentences]))
        return {**entity_scores([s.entities for s in sentences], predicted), "n_sentences": len(sentences)}


def entity_record(text: str, entities: Sequence[Entity]) -> dict:
    return {"text": text, "entities": [{"start": e.start, "end": e.end, "type": e.type, "text": text[e.start:e.end]}
                                       for e in entities]}
