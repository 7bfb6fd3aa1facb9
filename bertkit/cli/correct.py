"""``bertkit correct`` and ``bertkit train --task correct``: Chinese spelling correction."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import BertkitError
from .options import Compute, OutputOpt, Threads, print_json, set_threads

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


def correct(
    input_file: Annotated[Optional[str], typer.Argument(metavar="[INPUT]", help="Text to correct, one sentence or paragraph a line ('-' for stdin).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Corrector directory (default: the shipped bertkit-zh-csc).")] = None,
    output: OutputOpt = None,
    details: Annotated[bool, typer.Option("--details", help="JSON lines: the corrected text and each change (position, original, correction, probability, detection).")] = False,
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Change a character only when the model gives its correction at least this probability: higher = fewer, surer changes (default: the model's, tuned on dev when it was trained).")] = None,
    eval_pairs: Annotated[Optional[str], typer.Option("--eval", help="Score on source<TAB>target pairs: SIGHAN sentence-level detection/correction P/R/F1, FPR and character-level scores, as one JSON line.")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="With --eval DEV: pick the threshold with the best correction F1 on DEV and save it in the model as its default.")] = False,
    candidates: Annotated[str, typer.Option(help="confusion: replace a character only by one of its confusion set (same/similar pinyin or shape); all: by any Chinese character (the paper's decoding).")] = "confusion",
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer lines are corrected in overlapping windows, never cut.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 64,
    compute: Compute = "float32",
    threads: Threads = None,
):
    """Chinese spelling correction: one corrected line per input line; only Chinese characters change."""
    from ..core.textio import output_stream, read_texts
    from ..correct.data import read_correction_pairs
    from ..correct.runner import Corrector, change_record

    set_threads(threads)
    if (input_file is None) == (eval_pairs is None):
        raise BertkitError("give exactly one of INPUT (correct) or --eval PAIRS (score)")
    if tune and (not eval_pairs or threshold is not None):
        raise BertkitError("--tune needs --eval DEV.tsv and no --threshold")
    corrector = Corrector.load(model, threshold=threshold, batch_size=batch_size, max_length=max_length,
                               compute=compute, candidates=candidates)
    if eval_pairs:
        scores = corrector.evaluate(read_correction_pairs(eval_pairs), tune=tune)
        if tune:
            corrector.save_threshold()
        print_json(scores)
        return
    with output_stream(output) as out:
        for text, changes in corrector.correct(read_texts(input_file)):
            out.write((change_record(text, changes) if details else text) + "\n")
