"""``bertkit predict``, and the classifier half of ``bertkit eval``: a fine-tuned classifier."""

from typing import Annotated

import typer

from .options import Encoding, InputArg, OutputOpt, Overwrite, Threads, check_inputs, print_json, set_threads

ClassifierOpt = Annotated[str, typer.Option("--model", "-m", help="A fine-tuned classifier directory (from bertkit train).")]
MaxLength = Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split and their window probabilities averaged.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Texts per forward pass.")]


def predict(
    input_file: InputArg,
    model: ClassifierOpt,
    output: OutputOpt = None,
    overwrite: Overwrite = False,
    max_length: MaxLength = 128,
    batch_size: BatchSize = 64,
    threads: Threads = None,
    encoding: Encoding = None,
):
    """Classify texts: one JSON line per input line, {"label": ..., "probs": {...}}, in input order."""
    from ..core.files import check_output_file

    check_inputs(input_file, encoding=encoding)
    check_output_file(output, overwrite)
    from ..classify.data import prediction_record, read_examples
    from ..classify.runner import Classifier
    from ..core.textio import output_stream

    set_threads(threads)
    classifier = Classifier.load(model, max_length=max_length, batch_size=batch_size)
    with output_stream(output) as out:
        for probs in classifier.predict_proba(read_examples(input_file, labelled=False)):
            out.write(prediction_record(classifier.labels, probs) + "\n")


def evaluate_classifier(test_file: str, model: str | None, max_length: int, batch_size: int) -> None:
    """``bertkit eval`` on a classifier: one JSON line with accuracy, macro_f1 and n."""
    from ..classify.data import load_labelled
    from ..classify.runner import Classifier

    classifier = Classifier.load(model, max_length=max_length, batch_size=batch_size)
    print_json(classifier.evaluate(load_labelled(test_file), source=test_file), digits=6)
