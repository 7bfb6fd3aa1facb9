"""``bertkit eval``: score any bertkit model on labelled data, one JSON line.

Which technique scores it is read from the model directory's manifest (a classifier, a
corrector, or an encoder / sentence-embedding model, scored on STS pairs), or given with
``--task``.  The options of one technique are refused for another, so a typo cannot be ignored.
"""

from typing import Annotated, Optional

import typer

from . import classify, correct, distill, embed, ner
from .options import Compute, Encoding, Threads, check_inputs, set_threads

# task -> the options only it takes, with their defaults (a non-default value elsewhere is an error)
TASK_ONLY = {
    "embed": {"pooling": None, "base_pooling": None, "all_poolings": False, "fit": None},
    "correct": {"threshold": None, "tune": False, "candidates": "confusion"},
    "classify": {"speed": None, "patience": None},
    "ner": {},
}
MAX_LENGTH = {"classify": 128, "embed": 512, "correct": 128, "ner": 128}  # each technique's default window
KIND_TASK = {"classifier": "classify", "early-exit-classifier": "classify", "corrector": "correct", "ner": "ner"}  # any other kind is an encoder: embed


def evaluate(
    test_file: Annotated[str, typer.Argument(metavar="TEST", help="classify: labelled data as for train; embed: STS pairs s1<TAB>s2<TAB>score; correct: source<TAB>target pairs; ner: CoNLL or JSONL as for train. '-' for stdin.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The model to score (default: the shipped bertkit-zh-mini, or bertkit-zh-csc with --task correct).")] = None,
    task: Annotated[Optional[str], typer.Option(help="classify, embed, correct or ner (default: read from the model directory).")] = None,
    pooling: embed.Pooling = None,
    base_pooling: embed.BasePooling = None,
    all_poolings: embed.AllPoolings = False,
    fit: embed.Fit = None,
    threshold: correct.Threshold = None,
    tune: correct.Tune = False,
    candidates: correct.Candidates = "confusion",
    speed: distill.Speed = None,
    patience: distill.Patience = None,
    max_length: Annotated[Optional[int], typer.Option(min=8, max=4096, help="Tokens per window (default: 128; embed: 512); longer texts are split into windows, never cut.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    compute: Compute = "float32",
    threads: Threads = None,
    encoding: Encoding = None,
):
    """Score a model: accuracy and macro F1 (classifier; with early exit also speed), Spearman x 100 (embeddings), SIGHAN scores (corrector), entity F1 (NER)."""
    from ..core.errors import UsageError

    if task is not None and task not in TASK_ONLY:
        raise UsageError(f"--task must be one of {', '.join(TASK_ONLY)}, not {task!r}")
    check_inputs(test_file, fit, encoding=encoding)
    set_threads(threads)
    task = task or task_of(model)
    given = {"pooling": pooling, "base_pooling": base_pooling, "all_poolings": all_poolings, "fit": fit,
             "threshold": threshold, "tune": tune, "candidates": candidates, "speed": speed, "patience": patience}
    for other, options in TASK_ONLY.items():
        wrong = [name for name, default in options.items() if other != task and given[name] != default]
        if wrong:
            flag = "--" + wrong[0].replace("_", "-")
            raise UsageError(f"{flag} is an option of --task {other}; this evaluates --task {task}")
    max_length = max_length or MAX_LENGTH[task]
    if task == "classify":
        classify.evaluate_classifier(test_file, model, max_length, batch_size, speed, patience)
    elif task == "ner":
        ner.evaluate_ner(test_file, model, max_length, batch_size)
    elif task == "embed":
        embed.evaluate_embeddings(test_file, model, pooling, base_pooling, all_poolings, fit, max_length, batch_size, compute)
    else:
        correct.evaluate_corrector(test_file, model, threshold, tune, candidates, max_length, batch_size, compute)


def task_of(model: str | None) -> str:
    """The technique that scores ``model``, from its manifest's kind."""
    from pathlib import Path

    from ..core import modelio

    path = modelio.resolve_model(model, layouts=modelio.TASK_LAYOUTS)
    kind = modelio.Manifest.read(Path(path)).kind if Path(path).is_dir() else "encoder"
    return KIND_TASK.get(kind, "embed")
