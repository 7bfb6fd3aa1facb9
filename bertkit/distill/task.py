"""FastBERT's two training stages over the shared loop.

Stage 1 (fine-tuning the backbone and teacher) is `bertkit train`'s classification recipe, run
into ``DIR/stage1``; it is skipped when ``-m`` is already a fine-tuned classifier.  Stage 2
(self-distillation) freezes backbone and teacher and trains the students on the training texts,
labels unused, plus any ``--unlabelled`` text: each student learns the teacher's distribution
(:func:`~.model.distillation_loss`).  ``--resume`` goes on where the run stopped, in stage 1 or 2.  The frozen part runs in eval mode (no dropout), so the
students learn the distribution the teacher gives at inference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForSequenceClassification

from ..classify.data import Example, check_labels, load_labelled
from ..classify.task import run_training
from ..core import modelio
from ..core.files import read_json
from ..core.encoding import TextEncoder, TokenWindow
from ..core.errors import BertkitError
from ..core.progress import log
from ..core.textio import read_texts
from ..training import TrainConfig, Trainer
from .model import EarlyExitClassifier
from .runner import KIND, EarlyExitRunner

STAGE1 = "stage1"


class DistillTask:
    """Stage 2: the students learn the frozen teacher's distribution (the model's forward is the
    loss, so DDP all-reduces the students' gradients as for any task)."""

    def __init__(self, runner: EarlyExitRunner, texts: Sequence[Example], dev: Sequence[Example],
                 save_dtype: torch.dtype | None = None):
        self.runner, self.dev, self.save_dtype = runner, dev, save_dtype
        self.model = runner.model
        for p in self.model.classifier.parameters():
            p.requires_grad_(False)
        encoder: TextEncoder = runner.encoder
        self.examples: list[TokenWindow] = [w for ex in texts for w in encoder.encode(ex.text, ex.text_b)]

    def length(self, window: TokenWindow) -> int:
        return len(window.input_ids)

    def collate(self, windows, generator):
        return self.runner.encoder.pad_batch(list(windows))

    def evaluate(self, model) -> dict[str, float]:
        """Each student's dev accuracy and their mean (the checkpoint metric), teacher beside them."""
        if not self.dev:
            return {}
        accuracy = self.runner.layer_accuracy(self.dev)
        metrics = {f"acc_layer{i + 1}": a for i, a in enumerate(accuracy)}
        return metrics | {"student_accuracy": sum(accuracy[:-1]) / (len(accuracy) - 1)}

    def save(self, model, directory: Path) -> None:
        self.runner.save(directory, dtype=self.save_dtype)


def run_distillation(train_path: str, dev_path: str | None, model: str | None, cfg: TrainConfig,
                     unlabelled: Sequence[str] = (), max_length: int = 128, save_fp16: bool = False,
                     student_cfg: TrainConfig | None = None) -> dict | None:
    """Both stages into ``cfg.output_dir``; stage 2 takes ``student_cfg`` (its own rate and length).
    Returns stage 2's state, or None when stage 1 stopped early (``--max-minutes``): ``--resume``
    goes on with stage 1, then stage 2."""
    out = Path(cfg.output_dir)
    given = path = modelio.resolve_model(model)
    if modelio.Manifest.read(Path(given)).kind not in ("classifier", KIND):
        path = str(out / STAGE1)
        if cfg.overwrite or not stage_finished(Path(path)):
            if not _stage1(train_path, dev_path, given, cfg, max_length):
                return None
        else:
            log(f"stage 1 done earlier: {path}")
    classifier = modelio.load_model(path, AutoModelForSequenceClassification, dtype=torch.float32)
    if modelio.is_inference_only(classifier):  # checked before any log: bad input is one error line
        raise BertkitError(f"{path} is a compressed model: distil the fine-tuned classifier it was compressed from "
                           "(`bertkit compress` trains its own exits)")
    if path == given:
        log(f"stage 1 skipped: {path} is a fine-tuned classifier")
    runner = EarlyExitRunner(EarlyExitClassifier(classifier), modelio.load_tokenizer(path), max_length=max_length)
    train = load_labelled(train_path)
    dev = load_labelled(dev_path) if dev_path else []
    check_labels(dev, runner.labels, dev_path or "", "model's")
    texts = list(train) + [Example(t) for f in unlabelled for t in read_texts(f) if t.strip()]
    task = DistillTask(runner, texts, dev, save_dtype=torch.float16 if save_fp16 else None)
    stage2 = dataclasses.replace(student_cfg or cfg, metric="student_accuracy" if dev else None)
    # a run stopped in stage 1 has no stage-2 checkpoint yet: stage 2 then starts, not resumes
    stage2.resume = stage2.resume and (out / "checkpoints" / "last").exists()
    log(f"stage 2: self-distilling {len(runner.model.students)} students on {len(texts)} texts "
        f"({len(train)} training, {len(texts) - len(train)} unlabelled)")
    return Trainer(task, task.examples, stage2).fit()


def _stage1(train_path, dev_path, path: str, cfg: TrainConfig, max_length: int) -> bool:
    """Fine-tune backbone and teacher into DIR/stage1; whether it ran to its end."""
    stage1 = dataclasses.replace(cfg, output_dir=Path(cfg.output_dir) / STAGE1, extra={**cfg.extra, "stage": 1})
    stage1.resume = cfg.resume and (stage1.output_dir / "checkpoints" / "last").exists()
    log(f"stage 1: fine-tuning {path} with its classifier (the teacher) into {stage1.output_dir}")
    run_training(train_path, dev_path, path, stage1, max_length=max_length, save_fp16=False)
    if not stage_finished(stage1.output_dir):
        log("stage 1 stopped before its last step; --resume goes on with it, then stage 2")
        return False
    return True


def stage_finished(directory: Path) -> bool:
    """Whether the training run in ``directory`` reached its last step (its trainer_state.json)."""
    state_file = Path(directory) / "trainer_state.json"
    if not state_file.exists():
        return False
    state = read_json(state_file)
    return state.get("step", 0) >= state.get("total_steps", float("inf"))
