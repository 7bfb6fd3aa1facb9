"""``bertkit train``: fine-tune a model for a task.  ``--task`` picks the technique; each task's
own options are defined in its command module and listed here once (``TASK_OPTIONS``)."""

from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from . import correct
from .options import Encoding, ModelOpt, OutputDir, SaveFp16, check_inputs, option_group, training_command

# task -> (its own options, the function that trains it with them); a new task adds one line.
# Classification, the default task, has no options of its own.
TASKS = {"correct": (correct.TRAIN_OPTIONS, correct.train_corrector)}
TASK_OPTIONS = {name: option for options, _ in TASKS.values() for name, option in options.items()}


@option_group("task_options", TASK_OPTIONS)
@training_command()
def train(
    train_file: Annotated[Optional[str], typer.Argument(metavar="TRAIN", help="classify: TSV with header label<TAB>text (or label<TAB>text_a<TAB>text_b), or JSONL. correct: source<TAB>target sentence pairs (optional with --synthetic).")] = None,
    output_dir: OutputDir = None,
    dev: Annotated[Optional[str], typer.Option(help="Dev data in the same format: evaluated during training; the best model is kept.")] = None,
    model: ModelOpt = None,
    task: Annotated[str, typer.Option(help="classify: sequence classification; correct: Chinese spelling correction (Soft-Masked BERT).")] = "classify",
    task_options: dict = None,  # replaced by every task's own options (TASK_OPTIONS)
    save_fp16: SaveFp16 = False,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows, never cut.")] = 128,
    encoding: Encoding = None,
    *,
    training,
):
    """Fine-tune a sequence classifier, or with --task correct a spelling corrector. Runs under torchrun for DDP."""
    if output_dir is None:
        raise UsageError("missing option -o DIR: where the model goes")
    if task not in ("classify", *TASKS):
        raise UsageError(f"--task must be classify or {' or '.join(TASKS)}, not {task!r}")
    check_inputs(train_file, dev, *(task_options.get("synthetic") or []), encoding=encoding)
    cfg = training(output_dir, {"command": "train", "task": task, "train": train_file, "dev": dev})
    if task in TASKS:
        options, run = TASKS[task]
        run(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16,
            **{name: task_options[name] for name in options})
        return
    from ..classify.task import run_training

    if train_file is None or task_options["synthetic"] or task_options["plain"]:
        raise UsageError("classification needs TRAIN and takes no --synthetic or --plain (those are for --task correct)")
    run_training(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16)
