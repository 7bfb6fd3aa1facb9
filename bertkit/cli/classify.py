"""``bertkit predict``, and the classifier half of ``bertkit eval``: a fine-tuned classifier."""

from typing import Annotated

import typer

from ..core.errors import UsageError
from .distill import Patience, Speed
from .options import Encoding, InputArg, OutputOpt, Overwrite, Threads, check_inputs, print_json, set_threads

ClassifierOpt = Annotated[str, typer.Option("--model", "-m", help="A fine-tuned classifier or NER directory (from bertkit train or bertkit distill).")]
MaxLength = Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split and their window probabilities averaged.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Texts per forward pass.")]


def predict(
    input_file: InputArg,
    model: ClassifierOpt,
    output: OutputOpt = None,
    overwrite: Overwrite = False,
    speed: Speed = None,
    patience: Patience = None,
    details: Annotated[bool, typer.Option("--details", help="With an early-exit model: add each line's exit layer.")] = False,
    max_length: MaxLength = 128,
    batch_size: BatchSize = 64,
    threads: Threads = None,
    encoding: Encoding = None,
):
    """Classify texts: one JSON line per input line, {"label": ..., "probs": {...}}, in input order; with an NER model {"text": ..., "entities": [...]}."""
    from ..core.files import check_output_file

    check_inputs(input_file, encoding=encoding)
    check_output_file(output, overwrite)
    if _kind(model) == "ner":
        if speed is not None or patience is not None or details:
            raise UsageError("--speed, --patience and --details go with early-exit classifiers, not NER models")
        from .ner import predict_entities

        set_threads(threads)
        return predict_entities(input_file, model, output, max_length, batch_size)
    from ..classify.data import prediction_record, read_examples
    from ..core.textio import output_stream

    set_threads(threads)
    runner = load_runner(model, speed, patience, max_length, batch_size)
    examples = read_examples(input_file, labelled=False)
    with output_stream(output) as out:
        if not hasattr(runner, "predict_with_exits"):
            for probs in runner.predict_proba(examples):
                out.write(prediction_record(runner.labels, probs) + "\n")
            return
        for probs, layer in runner.predict_with_exits(examples):
            extra = {"exit_layer": layer} if details else {}
            out.write(prediction_record(runner.labels, probs, extra) + "\n")


def _kind(model: str | None) -> str | None:
    from pathlib import Path

    from ..core import modelio

    path = Path(modelio.resolve_model(model, layouts=modelio.TASK_LAYOUTS))
    return modelio.Manifest.read(path).kind if path.is_dir() else None


def load_runner(model: str | None, speed: float | None, patience: int | None, max_length: int, batch_size: int):
    """A classifier's runner: with early exit for a model from `bertkit distill`."""
    from pathlib import Path

    from ..core import modelio

    path = modelio.resolve_model(model, layouts=modelio.TASK_LAYOUTS)
    if modelio.Manifest.read(Path(path)).kind == "early-exit-classifier" or speed is not None or patience is not None:
        from ..distill.runner import EarlyExitRunner

        return EarlyExitRunner.load(path, speed=speed, patience=patience, max_length=max_length, batch_size=batch_size)
    from ..classify.runner import Classifier

    return Classifier.load(path, max_length=max_length, batch_size=batch_size)


def evaluate_classifier(test_file: str, model: str | None, max_length: int, batch_size: int,
                        speed: float | None = None, patience: int | None = None) -> None:
    """``bertkit eval`` on a classifier: one JSON line with accuracy, macro_f1 and n (with early
    exit: also the full model's accuracy, mean exit layer, FLOPs ratio and wall-clock speedup)."""
    from ..classify.data import load_labelled

    runner = load_runner(model, speed, patience, max_length, batch_size)
    print_json(runner.evaluate(load_labelled(test_file), source=test_file), digits=6)
