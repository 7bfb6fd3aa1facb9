"""The early-exit runner: predictions with their exit layers, in input order, batched or one at
a time; accuracy, mean exit layer, FLOPs ratio and wall-clock speedup against the full model.

A directory is a fine-tuned ``BertForSequenceClassification`` (``AutoModel`` loads its backbone,
``AutoModelForSequenceClassification`` backbone and teacher) with the students beside it in
``students.safetensors``; ``bertkit.json`` (kind ``early-exit-classifier``) names the part and
the exit rule's defaults (``speed`` or ``patience``), chosen on dev by ``--target-loss``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification

from ..classify.data import Example, as_example, check_labels
from ..core import modelio
from ..core.device import module_device
from ..core.encoding import TextEncoder, TokenWindow
from ..core.errors import BertkitError
from ..core.flops import flop_counter
from ..core.metrics import accuracy, macro_f1
from ..core.runner import Runner
from ..core.textio import map_in_order
from .model import STUDENT_HEADS, STUDENT_WIDTH, EarlyExitClassifier, ExitRule, StudentClassifier

KIND = "early-exit-classifier"
POOL_BATCHES = 16  # batches per pool: full batches deep down, memory bounded by 16 batches' states
PART = "students"


def student_shape(students: nn.ModuleList) -> dict:
    """What a directory records of its students: their width and attention heads."""
    first = students[0]
    return {"width": first.narrow.out_features, "heads": first.attention.num_heads}


def make_students(config, width: int = STUDENT_WIDTH, heads: int = STUDENT_HEADS) -> nn.ModuleList:
    """Fresh students, one after each layer but the last, for a classifier of ``config``."""
    return nn.ModuleList(StudentClassifier(config.hidden_size, config.num_labels, width, heads)
                         for _ in range(config.num_hidden_layers - 1))


def _students(config, shape: dict | None, path: str) -> nn.ModuleList:
    """Fresh students of the recorded shape (FastBERT's when a directory records none)."""
    shape = shape or {"width": STUDENT_WIDTH, "heads": STUDENT_HEADS}
    try:
        return make_students(config, int(shape["width"]), int(shape["heads"]))
    except (TypeError, KeyError, ValueError, AssertionError, AttributeError):
        raise BertkitError(f"{path}: {modelio.MANIFEST} records no usable student shape: {shape!r}") from None


class EarlyExitRunner(Runner):
    """Classify with early exit: each sample leaves at the first layer the rule lets it."""

    def __init__(self, model: EarlyExitClassifier, tokenizer, max_length: int = 128, batch_size: int = 64,
                 rule: ExitRule | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        config = model.classifier.config
        self.encoder = TextEncoder(tokenizer, min(max_length, config.max_position_embeddings))
        self.batch_size = batch_size
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.rule = rule or ExitRule(speed=0.0)  # speed 0: nobody leaves early (the full model)
        self._full = None  # (examples, batch size, (probabilities, FLOPs)) of the full model: full_pass

    @classmethod
    def load(cls, path: str | None = None, speed: float | None = None, patience: int | None = None,
             **options) -> "EarlyExitRunner":
        path = modelio.resolve_model(path)
        manifest = modelio.Manifest.read(Path(path))
        if manifest.kind != KIND:
            raise BertkitError(f"{path} has no early-exit students: --speed and --patience need a model from "
                               "`bertkit distill`")
        classifier = modelio.load_model(path, AutoModelForSequenceClassification, dtype=torch.float32)
        holder = nn.Module()  # the students alone: a compressed backbone's int8 layers have no tensor state
        holder.students = _students(classifier.config, manifest.config.get("student"), path)
        modelio.load_part(holder, Path(path), manifest, PART, prefix="students.")
        model = EarlyExitClassifier(classifier, students=holder.students)
        if speed is None and patience is None:
            speed, patience = manifest.config.get("speed", 0.0), manifest.config.get("patience")
            speed = None if patience is not None else speed
        return cls(model, modelio.load_tokenizer(path), rule=ExitRule(speed=speed, patience=patience), **options)

    def save(self, directory: Path, dtype: torch.dtype | None = None, **defaults) -> None:
        """Backbone + teacher as a Hugging Face classifier, the students as a part, the rule's defaults."""
        modelio.save_pretrained(self.model.classifier, self.tokenizer, directory, dtype=dtype)
        old = modelio.Manifest.read(Path(directory)) if (Path(directory) / modelio.MANIFEST).exists() else None
        kept = old.config if old is not None and old.kind == KIND else {}
        config = {"speed": 0.0, **kept, "student": student_shape(self.model.students), **defaults}
        manifest = modelio.Manifest(KIND, config=config)
        modelio.save_part(self.model, directory, manifest, PART, prefix="students.", dtype=dtype)
        manifest.save(directory)

    @staticmethod
    def save_defaults(directory: str | Path, **defaults) -> None:
        """Store the exit rule's defaults (``speed`` or ``patience``) in the directory's manifest."""
        manifest = modelio.Manifest.read(Path(directory))
        if manifest.kind != KIND:
            raise BertkitError(f"{directory} has no early-exit students")
        for rule in ("speed", "patience"):
            if rule in defaults:
                manifest.config.pop("patience" if rule == "speed" else "speed", None)
        manifest.config.update(defaults)
        manifest.save(Path(directory))

    # ---------------------------------------------------------------- inference

    def _pool(self, items: Sequence[list[TokenWindow]], rule: ExitRule, batch_size: int) -> list[tuple[torch.Tensor, int]]:
        windows = [w for item in items for w in item]
        inputs = self._pad_pool(windows, batch_size)
        device = module_device(self.model)
        probs, layers = self.model.early_exit(*(inputs[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")),
                                              rule, batch_size=batch_size)
        out, i = [], 0
        for item in items:  # a long text's windows: probabilities averaged, the deepest exit counts
            out.append((probs[i:i + len(item)].mean(0), int(layers[i:i + len(item)].max())))
            i += len(item)
        return out

    def _pad_pool(self, windows: Sequence[TokenWindow], batch_size: int) -> dict[str, torch.Tensor]:
        """The pool as one right-padded batch, padded batch by batch as the full model pads (the
        windows come sorted by length): Python lists padded to the pool's longest window would
        cost more than a layer of a short batch."""
        chunks = [self.encoder.pad_batch(windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)]
        if len(chunks) == 1:
            return chunks[0]
        width = max(c["input_ids"].shape[1] for c in chunks)
        fill = {"input_ids": self.encoder.pad, "token_type_ids": 0, "attention_mask": 0}
        return {k: torch.cat([F.pad(c[k], (0, width - c[k].shape[1]), value=v) for c in chunks]) for k, v in fill.items()}

    def predict_with_exits(self, examples, rule: ExitRule | None = None,
                           batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, int]]:
        """(probabilities, exit layer) per example (an Example, a str or a pair), in input order."""
        rule, size = rule or self.rule, batch_size or self.batch_size
        encoded = self.encoder.encode_stream((ex.text, ex.text_b) for ex in map(as_example, examples))
        # a pool of POOL_BATCHES batches regroups as samples leave (EarlyExitClassifier.early_exit)
        yield from map_in_order(encoded, lambda pool: self._pool(pool, rule, size),
                                length=lambda ws: sum(len(w.input_ids) for w in ws),
                                batch_size=size * POOL_BATCHES if size > 1 else 1)

    def predict_proba(self, examples) -> Iterator[torch.Tensor]:
        for probs, _ in self.predict_with_exits(examples):
            yield probs

    @torch.inference_mode()
    def layer_accuracy(self, examples: Sequence[Example]) -> list[float]:
        """Dev accuracy of every layer's classifier (students, then the teacher), all samples to the
        end; a long text counts by its first window (a checkpoint metric, not a score)."""
        label_id = {label: i for i, label in enumerate(self.labels)}
        device = module_device(self.model)
        correct = torch.zeros(self.model.num_layers)
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            inputs = self.encoder.pad_batch([self.encoder.encode(ex.text, ex.text_b)[0] for ex in chunk])
            gold = torch.tensor([label_id[ex.label] for ex in chunk])
            logits = self.model.all_logits(*(inputs[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")))
            for i, layer_logits in enumerate(logits):
                correct[i] += (layer_logits.argmax(-1).cpu() == gold).sum()
        return (correct / max(1, len(examples))).tolist()

    # ---------------------------------------------------------------- measuring

    def full_model(self, batch_size: int | None = None):
        """The teacher alone, as `bertkit predict` runs a classifier: the baseline of every ratio."""
        from ..classify.runner import Classifier

        return Classifier(self.model.classifier, self.tokenizer, max_length=self.encoder.max_length,
                          batch_size=batch_size or self.batch_size)

    def evaluate(self, examples: Sequence[Example], rule: ExitRule | None = None, batch_size: int | None = None,
                 rounds: int = 3, source: str = "the data") -> dict:
        """Accuracy and macro-F1 with early exit, the full model's accuracy, mean exit layer, FLOPs
        ratio (full model / early exit, counted by torch.utils.flop_counter, CPU attention
        included) and wall-clock speedup: the two timed in turn over ``rounds`` rounds, the
        median ratio with its spread (``rounds=0``: not timed)."""
        rule = rule or self.rule
        check_labels(examples, self.labels, source, "model's")
        with flop_counter() as counter:
            exit_results = list(self.predict_with_exits(examples, rule, batch_size))
        full_probs, full_flops = self.full_pass(examples, batch_size)
        gold = [ex.label for ex in examples]
        pred = [self.labels[int(p.argmax())] for p, _ in exit_results]
        ratios = self.speedups(examples, rule, batch_size, rounds) if rounds else []
        return {
            "accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels=self.labels),
            "accuracy_full": accuracy(gold, [self.labels[int(p.argmax())] for p in full_probs]),
            "mean_exit_layer": statistics.fmean(layer for _, layer in exit_results),
            "layers": self.model.num_layers,
            "flops_ratio": full_flops / max(1, counter.get_total_flops()),
            "speedup": statistics.median(ratios) if ratios else None,
            "speedup_min": min(ratios, default=None), "speedup_max": max(ratios, default=None),
            "rule": rule.name, "batch_size": batch_size or self.batch_size, "n": len(examples),
        }

    def full_pass(self, examples: Sequence[Example], batch_size: int | None) -> tuple[list, int]:
        """The full model's probabilities and FLOPs on ``examples``; kept for the same list, which a
        curve over many speeds would otherwise recompute at every speed."""
        cached = self._full
        if cached is not None and cached[0] is examples and cached[1] == batch_size:
            return cached[2]
        with flop_counter() as counter:
            probs = list(self.full_model(batch_size).predict_proba(examples))
        self._full = (examples, batch_size, (probs, counter.get_total_flops()))
        return self._full[2]

    def speedups(self, examples, rule: ExitRule, batch_size: int | None, rounds: int) -> list[float]:
        """Full-model time / early-exit time, each round timing both in turn (order alternating)."""
        full = self.full_model(batch_size)
        runs = {"full": lambda: list(full.predict_proba(examples)),
                "exit": lambda: list(self.predict_with_exits(examples, rule, batch_size))}
        ratios = []
        for r in range(rounds):
            seconds = {}
            for name in (("full", "exit") if r % 2 == 0 else ("exit", "full")):
                start = time.perf_counter()
                runs[name]()
                seconds[name] = time.perf_counter() - start
            ratios.append(seconds["full"] / seconds["exit"])
        return ratios
