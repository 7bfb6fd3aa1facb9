"""``bertkit compress``: compress a fine-tuned classifier stage by stage under a dev-accuracy budget."""

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from .options import Encoding, ModelOpt, OutputDir, check_inputs, print_json, training_command


@training_command(epochs=1.0, lr=None)
def compress(
    model: ModelOpt = None,
    train_file: Annotated[Optional[str], typer.Option("--train", metavar="TRAIN.tsv", help="The classifier's training data (label<TAB>text): vocabulary to keep, head and neuron importance, recovery by distillation.")] = None,
    dev: Annotated[Optional[str], typer.Option(metavar="DEV.tsv", help="Dev data: each stage is kept only if its dev accuracy stays within --max-loss of the uncompressed model's.")] = None,
    output_dir: OutputDir = None,
    max_loss: Annotated[float, typer.Option(help="Dev accuracy points a kept stage may cost, against the uncompressed model.")] = 1.0,
    stages: Annotated[str, typer.Option(help="Comma-separated stages, applied in this order: vocab (vocabulary pruning), factorize (word table as a rank-E table times a projection, ALBERT's, from its SVD with rows weighted by their counts in the training texts, then distillation), structure (attention heads and FFN neurons removed by importance, then distillation), sparse (magnitude pruning stored as bitmask + values, then distillation), quantize (int8 Linear layers, 8-bit embeddings), exit (FastBERT early exit: self-distilled students, the fastest speed that, with every gentler one, stays within the budget).")] = "vocab,factorize,structure,sparse,quantize,exit",
    heads: Annotated[float, typer.Option(min=0.0, max=0.95, help="structure: fraction of the attention heads removed.")] = 0.5,
    ffn: Annotated[float, typer.Option(min=0.0, max=0.95, help="structure: fraction of the FFN neurons removed.")] = 0.5,
    sparsity: Annotated[float, typer.Option(min=0.0, max=0.99, help="sparse: fraction of the remaining encoder weights zeroed.")] = 0.5,
    embeddings: Annotated[str, typer.Option(help="quantize: storage of the embedding tables, int8 or fp8.")] = "int8",
    min_count: Annotated[int, typer.Option(min=1, help="vocab: keep the tokens the training texts use at least this often (TextPruner keeps those used at all: 1); the others read as [UNK].")] = 1,
    embedding_rank: Annotated[Optional[int], typer.Option(min=1, help="factorize: rank E of the word table (default: a quarter of the hidden size).")] = None,
    exit_width: Annotated[int, typer.Option(min=2, help="exit: width of the students (even; FastBERT's is 128 for BERT-base, ours is small to keep the model small).")] = 24,
    student_lr: Annotated[float, typer.Option(help="exit: the students' peak learning rate (they start from scratch).")] = 1e-3,
    student_epochs: Annotated[float, typer.Option(min=0.0, help="exit: the students' passes over the training texts.")] = 3.0,
    rounds: Annotated[int, typer.Option(min=1, help="Latency timing rounds (median), the uncompressed model timed in turn.")] = 3,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows, never cut.")] = 128,
    encoding: Encoding = None,
    *,
    training,
):
    """Compress a fine-tuned classifier (EdgeBERT-style): each stage kept only within the dev budget; a per-stage table on stderr and as JSON.

    The training options apply to the recovery runs after pruning (--lr defaults to the rate the model was fine-tuned with)."""
    if model is None or train_file is None or dev is None or output_dir is None:
        raise UsageError("give -m FINETUNED, --train TRAIN.tsv, --dev DEV.tsv and -o DIR")
    if max_loss < 0:
        raise UsageError(f"--max-loss must be 0 or more, not {max_loss:g}")
    if exit_width % 2:
        raise UsageError(f"--exit-width must be even (the students have 2 attention heads), not {exit_width}")
    if embeddings not in ("int8", "fp8"):
        raise UsageError(f"--embeddings must be int8 or fp8, not {embeddings!r}")
    check_inputs(train_file, dev, encoding=encoding)
    from ..compress.task import CompressOptions, check_stages, run_compress
    from ..core import modelio

    chosen = check_stages([s.strip() for s in stages.split(",") if s.strip()])
    path = modelio.resolve_model(model)
    cfg = training(output_dir, {"command": "compress", "train": train_file, "dev": dev})
    if cfg.lr is None:
        cfg.lr = fine_tuned_lr(Path(path))
    work = Path(str(output_dir) + ".work")  # recovery runs, beside the output (which is replaced whole)
    recover = {stage: dataclasses.replace(cfg, output_dir=work / stage, overwrite=True, resume=False)
               for stage in ("factorize", "structure", "sparse")}
    recover["exit"] = dataclasses.replace(cfg, output_dir=work / "exit", overwrite=True, resume=False, lr=student_lr,
                                          epochs=student_epochs)
    options = CompressOptions(max_loss=max_loss, stages=chosen, heads=heads, ffn=ffn, sparsity=sparsity,
                              embeddings=embeddings, min_count=min_count, embedding_rank=embedding_rank, exit_width=exit_width, rounds=rounds, max_length=max_length, recover=recover)
    print_json(run_compress(path, train_file, dev, Path(output_dir), options))


def fine_tuned_lr(path: Path) -> float:
    """The peak rate ``path`` was fine-tuned with (its trainer_state.json), else BERT's 5e-5."""
    from ..core.files import read_json
    from ..core.modelio import FALLBACK_LR

    try:
        return float(read_json(path / "trainer_state.json")["config"]["lr"])
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_LR
