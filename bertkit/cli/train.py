"""``bertkit train``: fine-tune a model for a task.  ``--task`` picks the technique; each task's
own options are defined in its command module and listed here once (``TASK_OPTIONS``)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import BertkitError
from . import correct
from .options import ModelOpt, SaveFp16, option_group, training_command

# task -> (its options, the function that trains it); a new task adds one line
TASKS = {"correct": correct.TRAIN_OPTIONS}
TASK_OPTIONS = {name: option for options in TASKS.values() for name, option in options.items()}


@option_group("task_options", TASK_OPTIONS)
@training_command()
def train(
    train_file: Annotated[Optional[str], typer.Argument(metavar="TRAIN", help="classify: TSV with header label<TAB>text (or label<TAB>text_a<TAB>text_b), or JSONL. correct: source<TAB>target sentence pairs (optional with --synthetic).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the fine-tuned model and checkpoints go.")] = None,
    dev: Annotated[Optional[str], typer.Option(help="Dev data in the same format: evaluated during training; the best model is kept.")] = None,
    model: ModelOpt = None,
    task: Annotated[str, typer.Option(help="classify: sequence classification; correct: Chinese spelling correction (Soft-Masked BERT).")] = "classify",
    save_fp16: SaveFp16 = False,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows, never cut.")] = 128,
    *,
    training,
    task_options: dict,
):
    """Fine-tune a sequence classifier, or with --task correct a spelling corrector. Runs under torchrun for DDP."""
    if output_dir is None:
        raise typer.BadParameter("missing option --output-dir / -o")
    if task not in ("classify", *TASKS):
        raise typer.BadParameter(f"--task must be classify or {' or '.join(TASKS)}, not {task!r}")
    _refuse_options_of_other_tasks(task, task_options)
    cfg = training(output_dir, {"command": "train", "task": task, "train": train_file, "dev": dev})
    if task == "correct":
        correct.train_corrector(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16, **task_options)
        return
    from ..classify.task import run_training

    if train_file is None:
        raise BertkitError("classification needs TRAIN")
    run_training(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16)


def _refuse_options_of_other_tasks(task: str, given: dict) -> None:
    for other, options in TASKS.items():
        for name, (annotation, default) in options.items():
            if other != task and given[name] != default:
                flag = next((d for d in getattr(annotation.__metadata__[0], "param_decls", ()) if d.startswith("--")),
                            "--" + name.replace("_", "-"))
                raise BertkitError(f"{flag} is an option of --task {other}, not of --task {task}")
    for name in list(given):
        if name not in TASKS.get(task, {}):
            del given[name]
