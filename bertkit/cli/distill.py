"""``bertkit distill``: FastBERT early exit (both training stages), and its speed/accuracy curve."""

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from .options import Encoding, ModelOpt, OutputDir, SaveFp16, check_inputs, training_command

Speed = Annotated[Optional[float], typer.Option(help="Early exit: leave at the first layer whose normalised entropy is below this, in [0, 1] (FastBERT; 0: the full model; default: the model's, chosen on dev).")]
Patience = Annotated[Optional[int], typer.Option(help="Early exit by PABEE's rule instead: leave once this many consecutive layers agree with the one before.")]


@training_command(epochs=3.0, lr=None)
def distill(
    train_file: Annotated[Optional[str], typer.Argument(metavar="TRAIN", help="Labelled data as for train (label<TAB>text or label<TAB>text_a<TAB>text_b, TSV with header, or JSONL).")] = None,
    dev: Annotated[Optional[str], typer.Option(help="Dev data: picks each stage's checkpoint, then the default speed (--target-loss).")] = None,
    model: ModelOpt = None,
    output_dir: OutputDir = None,
    unlabelled: Annotated[Optional[list[str]], typer.Option(help="Plain text, one a line, added to stage 2 (the students learn from the teacher, not from labels; repeatable).")] = None,
    student_lr: Annotated[float, typer.Option(help="Stage 2's peak learning rate (the students start from scratch).")] = 1e-3,
    student_epochs: Annotated[Optional[float], typer.Option(help="Stage 2's passes over its texts (default: --epochs).")] = None,
    target_loss: Annotated[float, typer.Option(min=0.0, help="The default speed is the largest whose dev accuracy stays within this many points of the full model's.")] = 0.5,
    curve: Annotated[Optional[str], typer.Option(metavar="DEV", help="Instead of training: the speed/accuracy curve of -m DIR on DEV, as JSON lines, and store the speed --target-loss allows.")] = None,
    plot: Annotated[Optional[Path], typer.Option(metavar="PNG", help="With --curve: draw it into this PNG.")] = None,
    speeds: Annotated[Optional[str], typer.Option(help="With --curve: comma-separated speeds (default: 0,0.05,0.1,0.2,...,0.9).")] = None,
    save_fp16: SaveFp16 = False,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows, never cut.")] = 128,
    encoding: Encoding = None,
    *,
    training,
):
    """Early exit by self-distillation (FastBERT): fine-tune, then train a student classifier after every layer."""
    if curve is not None:
        if train_file is not None or output_dir is not None:
            raise UsageError("--curve measures -m DIR: give no TRAIN or -o")
        check_inputs(curve, encoding=encoding)
        if plot is not None and plot.exists():
            raise UsageError(f"--plot {plot} exists: remove it or name another file")
        return run_curve(curve, model, target_loss, plot, speeds, max_length)
    if plot is not None or speeds is not None:
        raise UsageError("--plot and --speeds go with --curve DEV")
    if train_file is None or output_dir is None:
        raise UsageError("give TRAIN and -o DIR to train, or --curve DEV -m DIR to measure")
    if "-" in (train_file, dev):
        raise UsageError("distill reads TRAIN and DEV once per stage: give files, not -")
    check_inputs(train_file, dev, *(unlabelled or []), encoding=encoding)
    cfg = training(output_dir, {"command": "distill", "train": train_file, "dev": dev})
    if cfg.lr is None:  # stage 1 fine-tunes as `bertkit train` does: the base's recorded rate, else 5e-5
        from ..core import modelio

        cfg.lr, cfg.extra["lr_from"] = modelio.fine_tune_lr(modelio.resolve_model(model), "classify")
    from ..distill.task import run_distillation

    student_cfg = dataclasses.replace(cfg, lr=student_lr, epochs=student_epochs or cfg.epochs,
                                      extra={**cfg.extra, "stage": 2})
    state = run_distillation(train_file, dev, model, cfg, unlabelled or [], max_length=max_length,
                             save_fp16=save_fp16, student_cfg=student_cfg)
    from ..training.distributed import world

    if dev and state is not None and world()[0] == 0:  # one process chooses and writes the speed
        run_curve(dev, str(output_dir), target_loss, None, None, max_length, quiet=True)


def run_curve(dev: str, model: str | None, target_loss: float, plot: Path | None, speeds: str | None,
              max_length: int, quiet: bool = False) -> float:
    """The curve on ``dev`` (JSON lines on stdout unless ``quiet``), the chosen speed stored in the model."""
    from ..classify.data import load_labelled
    from ..core import modelio
    from ..core.progress import log
    from ..distill.curve import DEFAULT_SPEEDS, choose_speed, exit_curve, plot_curve
    from ..distill.runner import EarlyExitRunner

    grid = _speeds(speeds) if speeds else DEFAULT_SPEEDS
    runner = EarlyExitRunner.load(model, speed=0.0, max_length=max_length)
    rows = exit_curve(runner, load_labelled(dev), grid, rounds=0 if quiet else 1, source=dev)  # choosing needs no clock
    speed = choose_speed(rows, target_loss)
    path = modelio.resolve_model(model)
    EarlyExitRunner.save_defaults(path, speed=speed, target_loss=target_loss)
    log(f"default speed {speed:g}: the largest within {target_loss:g} points of the full model on {dev}; saved in {path}")
    if not quiet:
        for row in rows:
            print(json.dumps(row))
    if plot:
        plot_curve(rows, plot, f"{Path(path).name} on {Path(dev).name}")
    return speed


def _speeds(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--speeds takes comma-separated numbers, not {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise UsageError(f"--speeds must lie within [0, 1]: {text!r}")
    return sorted(values)
