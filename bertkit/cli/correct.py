"""``bertkit correct`` and ``bertkit train --task correct``: Chinese spelling correction."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Compute, Encoding, OutputOpt, Overwrite, Threads, check_inputs, deprecated, print_json, set_threads

# the options of `bertkit train --task correct` (name -> (annotation, default)), added to `train`
TRAIN_OPTIONS = {
    "synthetic": (Annotated[Optional[list[str]], typer.Option(help="correct: plain-text files of correct Chinese; errors are drawn into them afresh each epoch (repeatable).")], None),
    "plain": (Annotated[bool, typer.Option("--plain", help="correct: train the plain BERT baseline (no detection network, no soft mask).")], False),
    "residual_init": (Annotated[float, typer.Option(help="correct: starting weight a of the residual h + a·e before the output layer (paper: 1, fixed; learned here).")], 1.0),
    "detector_lr": (Annotated[float, typer.Option(min=0.0, help="correct: learning rate of the detection network, as a multiple of --lr (it starts from scratch beside a pretrained encoder).")], 1.0),
    "corrupt_rate": (Annotated[float, typer.Option(min=0.0, max=1.0, help="correct: share of the Chinese characters of a --synthetic sentence replaced (paper: 0.15).")], 0.15),
    "phonetic": (Annotated[float, typer.Option(min=0.0, help="correct: weight of same/similar-pinyin replacements (paper: 0.8).")], 0.8),
    "visual": (Annotated[float, typer.Option(min=0.0, help="correct: weight of look-alike replacements (paper: 0).")], 0.0),
    "random_char": (Annotated[float, typer.Option("--random", min=0.0, help="correct: weight of random-character replacements (paper: 0.2).")], 0.2),
    "confusion": (Annotated[Optional[Path], typer.Option(help="correct: directory of confusion sets (default: ../shared/data/csc/confusion).")], None),
}


def train_corrector(train_file, dev, model, cfg, max_length: int, save_fp16: bool, synthetic, plain: bool,
                    residual_init: float, detector_lr: float, corrupt_rate: float, phonetic: float, visual: float,
                    random_char: float, confusion) -> None:
    """``bertkit train --task correct``, once the shared options are parsed."""
    import torch

    from ..correct.data import CorruptionOptions
    from ..correct.task import run_correct_training

    cfg.extra["synthetic"] = synthetic or []
    corruption = CorruptionOptions(rate=corrupt_rate, phonetic=phonetic, visual=visual, random_share=random_char,
                                   confusion_dir=str(confusion) if confusion else None)
    run_correct_training(train_file, synthetic or [], dev, model, cfg, kind="plain" if plain else "soft-masked",
                         max_length=max_length, corruption=corruption,
                         save_dtype=torch.float16 if save_fp16 else None,
                         detector_lr=detector_lr, residual_init=residual_init)


Threshold = Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="correct: change a character only when the model gives its correction at least this probability: higher = fewer, surer changes (default: the model's, tuned on dev when it was trained).")]
Tune = Annotated[bool, typer.Option("--tune", help="correct: pick the threshold with the best correction F1 on the eval pairs and save it in the model as its default.")]
Candidates = Annotated[str, typer.Option(help="correct: confusion: replace a character only by one of its confusion set (same/similar pinyin or shape); all: by any Chinese character (the paper's decoding).")]
CorrectorOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Corrector directory (default: the shipped bertkit-zh-csc).")]
MaxLength = Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer lines are corrected in overlapping windows, never cut.")]


def correct(
    input_file: Annotated[Optional[str], typer.Argument(metavar="INPUT", help="Text to correct, one sentence or paragraph a line ('-' for stdin).")] = None,
    model: CorrectorOpt = None,
    output: OutputOpt = None,
    overwrite: Overwrite = False,
    details: Annotated[bool, typer.Option("--details", help="JSON lines: the corrected text and each change (position, original, correction, probability, detection).")] = False,
    threshold: Threshold = None,
    candidates: Candidates = "confusion",
    eval_pairs: Annotated[Optional[str], typer.Option("--eval", hidden=True, help="Deprecated: bertkit eval PAIRS -m DIR.")] = None,
    tune: Annotated[bool, typer.Option("--tune", hidden=True, help="Deprecated: bertkit eval PAIRS --tune.")] = False,
    max_length: MaxLength = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 64,
    compute: Compute = "float32",
    threads: Threads = None,
    encoding: Encoding = None,
):
    """Chinese spelling correction: one corrected line per input line; only Chinese characters change."""
    from ..core.errors import UsageError
    from ..core.files import check_output_file

    if eval_pairs is not None:
        deprecated("bertkit correct --eval PAIRS", "bertkit eval PAIRS --task correct")
        if input_file is not None:
            raise UsageError("give INPUT (to correct) or --eval PAIRS (to score), not both")
        check_inputs(eval_pairs, encoding=encoding)
        set_threads(threads)
        return evaluate_corrector(eval_pairs, model, threshold, tune, candidates, max_length, batch_size, compute)
    if input_file is None:
        raise UsageError("missing INPUT: a text file to correct, or - for stdin")
    if tune:
        raise UsageError("--tune goes with bertkit eval PAIRS --task correct")
    check_inputs(input_file, encoding=encoding)
    check_output_file(output, overwrite)
    from ..core.textio import output_stream, read_texts
    from ..correct.runner import Corrector, change_record

    set_threads(threads)
    corrector = Corrector.load(model, threshold=threshold, batch_size=batch_size, max_length=max_length,
                               compute=compute, candidates=candidates)
    with output_stream(output) as out:
        for text, changes in corrector.correct(read_texts(input_file)):
            out.write((change_record(text, changes) if details else text) + "\n")


def evaluate_corrector(pairs_file: str, model: str | None, threshold: float | None, tune: bool, candidates: str,
                       max_length: int, batch_size: int, compute: str) -> None:
    """``bertkit eval`` on a corrector: SIGHAN scores as one JSON line; ``tune`` saves the best threshold."""
    from ..core.errors import UsageError
    from ..correct.data import read_correction_pairs
    from ..correct.runner import Corrector

    if tune and threshold is not None:
        raise UsageError("--tune picks the threshold itself: give no --threshold")
    corrector = Corrector.load(model, threshold=threshold, batch_size=batch_size, max_length=max_length,
                               compute=compute, candidates=candidates)
    scores = corrector.evaluate(read_correction_pairs(pairs_file), tune=tune)
    if tune:
        corrector.save_threshold()
    print_json(scores)
