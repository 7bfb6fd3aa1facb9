"""``bertkit train``: fine-tune a model for a task.  ``--task`` picks the technique; each task's
own options are defined in its command module and listed here once (``TASK_OPTIONS``)."""

from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from . import correct, ner
from .options import Encoding, ModelOpt, OutputDir, SaveFp16, check_inputs, option_group, training_command

# task -> (its own options, the function that trains it with them); a new task adds one line.
# Classification, the default task, has no options of its own; a task's option given to another
# task is refused, never ignored.
TASKS = {"correct": (correct.TRAIN_OPTIONS, correct.train_corrector), "ner": (ner.TRAIN_OPTIONS, ner.train_ner)}
TASK_OPTIONS = {name: option for options, _ in TASKS.values() for name, option in options.items()}


@option_group("task_options", TASK_OPTIONS)
@training_command(lr=None)
def train(
    train_file: Annotated[Optional[str], typer.Argument(metavar="TRAIN", help="classify: TSV with header label<TAB>text (or label<TAB>text_a<TAB>text_b), or JSONL. correct: source<TAB>target sentence pairs (optional with --synthetic). ner: CoNLL (char<TAB>TAG lines, a blank line between sentences) or JSONL {\"text\", \"entities\": [{\"start\", \"end\", \"type\"}]}.")] = None,
    output_dir: OutputDir = None,
    dev: Annotated[Optional[str], typer.Option(help="Dev data in the same format: evaluated during training; the best model is kept.")] = None,
    model: ModelOpt = None,
    task: Annotated[str, typer.Option(help="classify: sequence classification; correct: Chinese spelling correction (Soft-Masked BERT); ner: named-entity recognition over characters (CoNLL char<TAB>TAG files, BIO or BIOES, or JSONL with entity offsets).")] = "classify",
    task_options: dict = None,  # replaced by every task's own options (TASK_OPTIONS)
    save_fp16: SaveFp16 = False,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows, never cut.")] = 128,
    encoding: Encoding = None,
    *,
    training,
):
    """Fine-tune a sequence classifier, or with --task correct a spelling corrector, --task ner an entity tagger. Runs under torchrun for DDP."""
    if output_dir is None:
        raise UsageError("missing option -o DIR: where the model goes")
    if task not in ("classify", *TASKS):
        raise UsageError(f"--task must be classify or {' or '.join(TASKS)}, not {task!r}")
    for other, (options, _) in TASKS.items():
        stray = [name for name, (_, default) in options.items() if other != task and task_options[name] != default]
        if stray:
            raise UsageError(f"--{stray[0].replace('_', '-')} is an option of --task {other}, not of --task {task}")
    check_inputs(train_file, dev, *(task_options.get("synthetic") or []), encoding=encoding)
    cfg = training(output_dir, {"command": "train", "task": task, "train": train_file, "dev": dev})
    if cfg.lr is None:  # recorded in trainer_state.json with where it came from; no log line before data errors
        from ..core import modelio

        path = modelio.resolve_model(model, layouts=modelio.TASK_LAYOUTS)  # --task correct refuses a lattice model later
        cfg.lr, cfg.extra["lr_from"] = modelio.fine_tune_lr(path, task)
    if task in TASKS:
        options, run = TASKS[task]
        run(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16,
            **{name: task_options[name] for name in options})
        return
    from ..classify.task import run_training

    if train_file is None:
        raise UsageError("classification needs TRAIN")
    run_training(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16)

