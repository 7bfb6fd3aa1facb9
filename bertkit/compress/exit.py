"""The ``exit`` stage: early exit on the compressed model, EdgeBERT's last lever on latency.

EdgeBERT (Tambe et al., MICRO 2021, section 3.1) lets a sample leave after the first layer whose
classifier is certain enough (entropy below a threshold, DeeBERT's rule).  Here the classifiers
and the rule are FastBERT's (:mod:`bertkit.distill`): a small student after each layer but the
last, trained by self-distillation from the model's own last-layer classifier (the backbone and
that classifier frozen, so the stage changes no weight the earlier stages left), and a sample
leaves where the student's normalised entropy is below ``speed``.  The speed is the largest of
a grid that, with every gentler speed, keeps dev accuracy within the budget of the
*uncompressed* model's, so the earlier stages and the exits share one budget.

Where we deviate, and why:
- Students ``width`` wide (default 24; FastBERT's 128 is for BERT-base's 768): three FastBERT
  students would weigh 0.35 M parameters, as much as a fifth of a 13x-compressed 4 x 256 model,
  where 24 wide they weigh 28 k.  They are stored in float16 (``students.safetensors``).
- The students train on the compressed model as it runs (int8 Linear layers included), so they
  learn the states it computes, not the float model's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..classify.data import Example
from ..core.progress import log
from ..distill.curve import DEFAULT_SPEEDS, exit_curve
from ..distill.model import EarlyExitClassifier, ExitRule
from ..distill.runner import EarlyExitRunner, make_students
from ..distill.task import DistillTask
from ..training import TrainConfig, Trainer

EXIT_WIDTH, EXIT_HEADS = 24, 2


class StudentsOnly(nn.Module):
    """The students as the trained module: the loop optimises and checkpoints them alone, while
    the frozen (possibly int8) model they read is kept out of the module tree (int8 Linear
    layers have no safetensors state)."""

    def __init__(self, exit_model: EarlyExitClassifier):
        super().__init__()
        self.students = exit_model.students
        self._frozen = [exit_model]  # a list: not a submodule

    def forward(self, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        return self._frozen[0](input_ids, token_type_ids, attention_mask)


class ExitTask(DistillTask):
    """FastBERT's stage 2 on the compressed model; the stage keeps the result in memory."""

    def __init__(self, runner: EarlyExitRunner, texts: Sequence[Example]):
        super().__init__(runner, texts, dev=[])
        self.model = StudentsOnly(runner.model)

    def save(self, model, directory) -> None:  # the compressed directory is written once, at the end
        pass


def new_students(model: nn.Module, width: int = EXIT_WIDTH, heads: int = EXIT_HEADS) -> nn.ModuleList:
    return make_students(model.config, width, heads)


def train_students(runner: EarlyExitRunner, train: Sequence[Example], cfg: TrainConfig) -> None:
    log(f"exit: self-distilling {len(runner.model.students)} students "
        f"({sum(p.numel() for p in runner.model.students.parameters()):,} parameters) for {cfg.epochs:g} epochs, "
        f"lr {cfg.lr:g}")
    task = ExitTask(runner, train)
    task.model.train()
    Trainer(task, task.examples, cfg).fit()
    runner.model.eval()


def choose_exit_speed(runner: EarlyExitRunner, dev: Sequence[Example], floor: float,
                      speeds: Sequence[float] = DEFAULT_SPEEDS) -> tuple[float, list[dict]]:
    """The largest speed that, with every gentler speed, keeps dev accuracy (points) at least
    ``floor``, and the curve it came from (0: nobody leaves early).

    Accuracy falls as the speed rises, up to the noise of a small dev set: a speed that passes
    beyond one that fails is a lucky draw, and taking the largest passing speed would pick the
    luckiest of the draws (the en row of examples/benchmarks/compress.py on its 500-text dev half,
    one text 0.2 points: 0.7 failed, then 0.8 and 0.9 passed)."""
    rows = sorted(exit_curve(runner, dev, speeds, rounds=0, source="dev"), key=lambda r: r["speed"])
    chosen = 0.0
    for row in rows:
        if row["accuracy"] < floor - 1e-9:
            break
        chosen = row["speed"]
    return chosen, rows


def exit_runner(model: nn.Module, students: nn.ModuleList, tokenizer, speed: float, max_length: int) -> EarlyExitRunner:
    return EarlyExitRunner(EarlyExitClassifier(model, students), tokenizer, max_length=max_length,
                           rule=ExitRule(speed=speed))
