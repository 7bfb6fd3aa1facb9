"""``bertkit compress``: the stages in order under an accuracy budget, EdgeBERT's recipe.

EdgeBERT (Tambe et al., MICRO 2021, section 4) stacks its compressions and keeps each only while
the task's accuracy stays within a budget of the uncompressed model's.  Here each stage is
applied to a copy of the model the previous kept stages left, recovered where it needs to be
(structured and unstructured pruning: distillation from the uncompressed model, Hinton et al.
2015, over the training texts, EdgeBERT's and TextPruner's way of winning accuracy back), then
measured on dev (accuracy), on disk (the directory it would save) and on the clock (batch 1 and
32, as the saved directory would load: a compressed-architecture one with the inference forward of
:mod:`.inference`; timed in turn with the uncompressed model over ``rounds`` rounds, median).  A stage whose dev
accuracy falls more than ``max_loss`` points below the uncompressed model's is reported as
skipped with its measured loss, and the next stage starts from the last kept model.

Where we deviate from EdgeBERT, and why:
- It compresses ALBERT, whose word table is factorised from the start; here ``factorize`` makes
  a trained BERT's table so (truncated SVD, rows weighted by their counts in the training texts,
  :mod:`.factorize`), then distils.
- Early exit (the ``exit`` stage, :mod:`.exit`) uses FastBERT's self-distilled students and its
  entropy rule; the speed is the largest that, with every gentler speed, stays in the budget.
- Its adaptive attention span is not a stage here yet; its floating-point
  quantization of ALBERT's shared weights is int8 (dynamic, with CPU kernels) for Linear layers
  and int8 or float8 storage for the embeddings (:mod:`.quantize`).
- Its pruning is movement pruning during fine-tuning; here heads and FFN neurons go first, by
  importance (structured, so the model gets faster), then magnitude pruning of what remains
  (stored sparse: smaller files, not faster products).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..classify.data import Example, check_labels, load_labelled
from ..classify.runner import Classifier
from ..classify.task import ClassifyTask
from ..core import modelio
from ..core.errors import BertkitError
from ..core.metrics import accuracy
from ..core.files import atomic_entries
from ..core.progress import log
from ..training import TrainConfig, Trainer
from . import quantize as quantize_stage
from ..distill.runner import EarlyExitRunner, student_shape
from .exit import EXIT_WIDTH, choose_exit_speed, exit_runner, new_students, train_students
from .factorize import factorize_embeddings, row_counts
from .inference import for_inference
from .model import ARCHITECTURE, parameter_count, save_compressed, size_on_disk
from .sparse import KeepSparse, magnitude_prune
from .structured import distillation_objective, prune_structure
from .vocab import prune_positions, prune_vocabulary

STAGES = ("vocab", "factorize", "structure", "sparse", "quantize", "exit")  # the order they apply in


@dataclass
class CompressOptions:
    max_loss: float = 1.0  # dev accuracy points a kept stage may cost, against the uncompressed model
    stages: Sequence[str] = STAGES
    heads: float = 0.5  # fraction of attention heads removed (structure)
    ffn: float = 0.5  # fraction of FFN neurons removed (structure)
    sparsity: float = 0.5  # fraction of the remaining encoder weights zeroed (sparse)
    embeddings: str = "int8"  # 8-bit format of the embedding tables (quantize): int8 or fp8
    min_count: int = 1  # vocab: a token is kept when the training texts use it this many times
    embedding_rank: int | None = None  # rank of the factorised word table (factorize; None: hidden / 4)
    exit_width: int = EXIT_WIDTH  # width of the early-exit students (exit)
    importance_examples: int = 512  # training examples that score heads and neurons
    timing_examples: int = 256  # dev examples each latency is measured on
    rounds: int = 3  # timing rounds (median)
    max_length: int = 128
    recover: dict = field(default_factory=dict)  # stage -> TrainConfig of its recovery run


def check_stages(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise BertkitError(f"no compression stage {unknown[0]!r}: the stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]  # always in the order that works (vocab before quantize ...)


class Candidate:
    """A model (and tokenizer) a stage produced, with the records of the stages in it and, after
    the exit stage, its early-exit students and speed."""

    def __init__(self, model: nn.Module, tokenizer, records: list[dict], students: nn.ModuleList | None = None,
                 speed: float | None = None):
        self.model, self.tokenizer, self.records = model, tokenizer, records
        self.students, self.speed = students, speed

    def classifier(self, options: CompressOptions) -> Classifier:
        """The model alone (no exits): what the pruning stages train and score."""
        return Classifier(self.model.eval(), self.tokenizer, max_length=options.max_length)

    def runner(self, options: CompressOptions) -> Classifier | EarlyExitRunner:
        """How the candidate predicts: with its exits where it has them."""
        if self.students is None:
            return self.classifier(options)
        return exit_runner(self.model.eval(), self.students, self.tokenizer, self.speed, options.max_length)

    def save(self, directory: Path) -> None:
        save_compressed(self.model, self.tokenizer, directory, self.records, students=self.students, speed=self.speed)

    def copy(self) -> "Candidate":
        return Candidate(copy.deepcopy(self.model), self.tokenizer, list(self.records),
                         copy.deepcopy(self.students), self.speed)

    def as_loaded(self, directory: Path) -> "Candidate":
        """The candidate as it runs once loaded from ``directory`` (where :meth:`save` wrote it):
        a compressed-architecture directory loads with the inference forward (.inference), a
        Hugging Face one (vocabulary pruning alone) with transformers' own."""
        if modelio.Manifest.read(directory).architecture != ARCHITECTURE:
            return self
        return Candidate(for_inference(copy.deepcopy(self.model)), self.tokenizer, self.records, self.students, self.speed)


@dataclass
class StageInputs:
    """What a stage may read: training and dev examples, the options, the distillation teacher and
    the lowest dev accuracy (points) the budget allows."""

    train: Sequence[Example]
    dev: Sequence[Example]
    options: CompressOptions
    teacher: nn.Module
    floor: float


# ---------------------------------------------------------------- the stages


def _texts(examples: Sequence[Example]) -> list[str | tuple[str, str]]:
    return [(ex.text, ex.text_b) if ex.text_b else ex.text for ex in examples]


def _vocab(c: Candidate, s: StageInputs) -> dict:
    c.tokenizer, record = prune_vocabulary(c.model, c.tokenizer, _texts(s.train), min_count=s.options.min_count)
    return record | prune_positions(c.model, s.options.max_length)


def _factorize(c: Candidate, s: StageInputs) -> dict:
    texts = _texts(s.train)
    counts = row_counts(c.tokenizer, texts, c.model.get_input_embeddings().num_embeddings) if texts else None
    record = factorize_embeddings(c.model, s.options.embedding_rank, row_weights=counts)
    return record | _recover(c, s, "factorize")


def _structure(c: Candidate, s: StageInputs) -> dict:
    batches = _batches(c, s.train[: s.options.importance_examples], s.options, labelled=True)
    record = prune_structure(c.model, batches, heads=s.options.heads, neurons=s.options.ffn)
    return record | _recover(c, s, "structure")


def _sparse(c: Candidate, s: StageInputs) -> dict:
    record = {"stage": "sparse", **magnitude_prune(c.model, s.options.sparsity)}
    return record | _recover(c, s, "sparse", hooks=[KeepSparse(c.model)])


def _quantize(c: Candidate, s: StageInputs) -> dict:
    return quantize_stage.quantize(c.model, embeddings=s.options.embeddings, linear=True)


def _exit(c: Candidate, s: StageInputs) -> dict:
    c.students = new_students(c.model, width=s.options.exit_width)
    runner = exit_runner(c.model.eval(), c.students, c.tokenizer, 0.0, s.options.max_length)
    cfg: TrainConfig | None = s.options.recover.get("exit")
    if cfg is not None and s.train:
        train_students(runner, s.train, cfg)
    c.speed, curve = choose_exit_speed(runner, s.dev, s.floor)
    log(f"exit: speed {c.speed:g}, the largest that, with every gentler speed, keeps dev accuracy at or above {s.floor:.2f}")
    return {"speed": c.speed, "student": student_shape(c.students), "trained": cfg is not None and bool(s.train),
            "curve": [{k: r[k] for k in ("speed", "accuracy", "mean_exit_layer", "flops_ratio")} for r in curve]}


APPLY: dict[str, Callable[[Candidate, StageInputs], dict]] = {
    "vocab": _vocab, "factorize": _factorize, "structure": _structure, "sparse": _sparse, "quantize": _quantize,
    "exit": _exit}


def _batches(c: Candidate, examples: Sequence[Example], options: CompressOptions, labelled: bool, size: int = 32):
    runner = c.classifier(options)
    label_id = {label: i for i, label in enumerate(runner.labels)}
    windows = [(w, label_id[ex.label]) for ex in examples for w in runner.encoder.encode(ex.text, ex.text_b)]
    for i in range(0, len(windows), size):
        chunk = windows[i : i + size]
        batch = runner.encoder.pad_batch([w for w, _ in chunk])
        if labelled:
            batch["labels"] = torch.tensor([y for _, y in chunk])
        yield batch


class RecoveryTask(ClassifyTask):
    """Fine-tuning the pruned model towards the uncompressed one's logits (and the labels)."""

    def __init__(self, classifier: Classifier, train, teacher: nn.Module, records: list[dict]):
        super().__init__(classifier, train, [])
        self.loss = distillation_objective(teacher)
        self.records = records

    def save(self, model, directory: Path) -> None:
        # the loop's directory also holds its checkpoints: add the model beside them, replace nothing else
        with atomic_entries(Path(directory)) as staging:
            save_compressed(model, self.classifier.tokenizer, staging / "model", self.records)


def _recover(c: Candidate, s: StageInputs, stage: str, hooks=()) -> dict:
    cfg: TrainConfig | None = s.options.recover.get(stage)
    if cfg is None or not s.train:
        return {"recovered": False}
    c.model.train()
    task = RecoveryTask(c.classifier(s.options), s.train, s.teacher, c.records)
    log(f"{stage}: recovering by distillation from the uncompressed model ({cfg.epochs:g} epochs, lr {cfg.lr:g})")
    Trainer(task, task.examples, cfg, hooks=hooks).fit()
    c.model.eval()
    return {"recovered": True, "recovery_epochs": cfg.epochs, "recovery_lr": cfg.lr}


# ---------------------------------------------------------------- measuring


def measure(c: Candidate, dev: Sequence[Example], timing: Sequence[Example], reference: Classifier | None,
            options: CompressOptions) -> dict:
    """Dev accuracy, size on disk, parameters, and latency (vs ``reference``, timed in turn)."""
    dev_points = 100 * dev_accuracy(c.runner(options), dev)
    with tempfile.TemporaryDirectory() as tmp:
        c.save(Path(tmp) / "m")
        size = size_on_disk(Path(tmp) / "m")["weights"]
        runner = c.as_loaded(Path(tmp) / "m").runner(options)  # timed as `bertkit predict` would run it
    students = parameter_count(c.students) if c.students is not None else 0
    row = {"dev_accuracy": round(dev_points, 2), "size_bytes": size, "parameters": parameter_count(c.model) + students,
           "nonzero_parameters": parameter_count(c.model, nonzero=True) + students}
    for batch_size in (1, 32):
        if reference is None:  # the uncompressed model itself: the ratios' denominator
            seconds = timed_pair(runner, runner, timing, batch_size, options.rounds, alone=True)
        else:
            seconds = timed_pair(reference, runner, timing, batch_size, options.rounds)
        row[f"latency_ms_b{batch_size}"] = round(1000 * statistics.median(seconds["model"]) / len(timing) * batch_size, 3)
        row[f"latency_ratio_b{batch_size}"], row[f"latency_ratio_b{batch_size}_spread"] = speedup(seconds)
    return row


def dev_accuracy(runner, examples: Sequence[Example]) -> float:
    """Accuracy of any classifier runner (with exits or without) on labelled examples."""
    check_labels(examples, runner.labels, "dev", "model's")
    guesses = [runner.labels[int(p.argmax())] for p in runner.predict_proba(examples)]
    return accuracy([ex.label for ex in examples], guesses)


def speedup(seconds: dict[str, list[float]]) -> tuple[float, list[float]]:
    """Reference over model seconds, round by round (:func:`timed_pair`): median and [min, max]."""
    ratios = [r / m for r, m in zip(seconds["reference"], seconds["model"])]
    return round(statistics.median(ratios), 3), [round(min(ratios), 3), round(max(ratios), 3)]


def timed_pair(reference: Classifier, model: Classifier, examples: Sequence[Example], batch_size: int,
               rounds: int, alone: bool = False) -> dict[str, list[float]]:
    """Seconds for each of the two to predict ``examples`` at ``batch_size``, alternating, per round
    (``alone``: ``model`` only, its times given for both)."""
    out = {"reference": [], "model": []}
    pair = (("model", model),) if alone else (("reference", reference), ("model", model))
    for _, runner in pair:  # warm-up: first-call allocations and int8 weight packing
        runner.batch_size = batch_size
        list(runner.predict_proba(examples[: 2 * batch_size]))
    for _ in range(max(rounds, 1)):
        for name, runner in pair:
            runner.batch_size = batch_size
            start = time.perf_counter()
            for _ in runner.predict_proba(examples):
                pass
            out[name].append(time.perf_counter() - start)
    if alone:
        out["reference"] = list(out["model"])
    return out


# ---------------------------------------------------------------- the pipeline


def run_compress(model_path: str | None, train_path: str, dev_path: str, output_dir: Path,
                 options: CompressOptions) -> dict:
    """Apply ``options.stages`` in order, keeping each only within the budget; save the result.
    Returns the per-stage table (the uncompressed model first) and what was kept."""
    if options.max_loss < 0:
        raise BertkitError(f"--max-loss must be 0 or more, not {options.max_loss:g}")
    stages = check_stages(options.stages)
    path = modelio.resolve_model(model_path)
    full = Classifier.load(path, max_length=options.max_length)
    if modelio.is_inference_only(full.model):
        raise BertkitError(f"{path} is already compressed: compress the fine-tuned classifier it came from")
    train, dev = load_labelled(train_path), load_labelled(dev_path)
    check_labels(train, full.labels, train_path, "model's")
    check_labels(dev, full.labels, dev_path, "model's")
    timing = dev[: options.timing_examples]
    teacher = full.model  # distillation's teacher: the uncompressed model (after vocab: its pruned-vocabulary twin)
    kept = Candidate(copy.deepcopy(teacher), full.tokenizer, [])
    base = {"stage": "fine-tuned", **measure(kept, dev, timing, None, options), "kept": True}
    rows = [base]
    log(_row_line(base, base))
    floor = base["dev_accuracy"] - options.max_loss
    for stage in stages:
        candidate = kept.copy()
        inputs = StageInputs(train, dev, options, teacher, floor)
        record = {**APPLY[stage](candidate, inputs), "stage": stage}
        candidate.records.append(record)
        row = {"stage": stage, **measure(candidate, dev, timing, full, options)}
        loss = round(base["dev_accuracy"] - row["dev_accuracy"], 2)
        row["dev_loss"] = loss
        row["kept"] = loss <= options.max_loss
        if row["kept"]:
            kept = candidate
            if stage == "vocab":  # the teacher must read the ids the student reads: same function, pruned vocabulary
                teacher = copy.deepcopy(candidate.model).eval()
        else:
            row["skipped"] = f"dev accuracy {loss:g} points below the uncompressed model's, over --max-loss {options.max_loss:g}"
        row["record"] = record
        rows.append(row)
        log(_row_line(row, base))
    kept.save(output_dir)
    for cfg in options.recover.values():  # the recovery runs' checkpoints: done with
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(cfg.output_dir).parent.rmdir()
    final = rows[max(i for i, r in enumerate(rows) if r["kept"])]
    return {"stages": rows, "kept": [r["stage"] for r in rows[1:] if r["kept"]],
            "size_ratio": round(base["size_bytes"] / final["size_bytes"], 2),
            "latency_ratio_b1": final["latency_ratio_b1"], "latency_ratio_b32": final["latency_ratio_b32"],
            "dev_accuracy_full": base["dev_accuracy"], "dev_accuracy_compressed": final["dev_accuracy"],
            "output": str(output_dir)}


def _row_line(row: dict, base: dict) -> str:
    status = "" if row["kept"] else f"  SKIPPED ({row['skipped']})"
    return (f"{row['stage']:<11} dev acc {row['dev_accuracy']:6.2f}  size {row['size_bytes'] / 1e6:7.2f} MB "
            f"({base['size_bytes'] / row['size_bytes']:5.2f}x)  params {row['parameters']:>10,}  "
            f"latency b1 {row['latency_ms_b1']:.2f} ms ({row['latency_ratio_b1']:.2f}x)  "
            f"b32 {row['latency_ms_b32']:.2f} ms/batch ({row['latency_ratio_b32']:.2f}x){status}")
