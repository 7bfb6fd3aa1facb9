"""``bertkit pretrain``: masked-LM pretraining."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from .options import Encoding, OutputDir, SaveFp16, check_inputs, training_command


@training_command(epochs=1.0, batch_size=64, lr=5e-4, warmup=0.06)
def pretrain(
    corpus: Annotated[list[str], typer.Argument(help="Plain-text files, one text a line ('-' for stdin).")],
    output_dir: OutputDir = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Continue from this checkpoint instead of a random init.")] = None,
    vocab: Annotated[Optional[Path], typer.Option(help="WordPiece vocab.txt for a new model (default: bert-base-chinese's, from ../shared/data/vocab).")] = None,
    prune_vocab: Annotated[bool, typer.Option("--prune-vocab", help="Keep only the tokens that occur in the corpus.")] = False,
    hidden: Annotated[int, typer.Option(help="Hidden size of a new model.")] = 256,
    layers: Annotated[int, typer.Option(help="Encoder layers of a new model.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads of a new model.")] = 4,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens per packed training sequence, [CLS] and [SEP] included.")] = 128,
    mlm_head: Annotated[str, typer.Option(help="'masked': MLM head on masked positions only (fast, as in BERT); 'all': every position.")] = "masked",
    save_fp16: SaveFp16 = False,
    dev_fraction: Annotated[float, typer.Option(help="Share of sequences held out to measure masked-token accuracy.")] = 0.005,
    encoding: Encoding = None,
    *,
    training,
):
    """Masked-LM pretraining with Chinese whole-word masking (jieba words, 15%, 80/10/10)."""
    if output_dir is None:
        raise UsageError("missing option -o DIR: where the model goes")
    if mlm_head not in ("masked", "all"):
        raise UsageError(f"--mlm-head must be 'masked' or 'all', not {mlm_head!r}")
    check_inputs(*corpus, encoding=encoding)
    cfg = training(output_dir, {"command": "pretrain", "corpus": corpus})
    import torch

    from ..pretrain.model import ModelShape
    from ..pretrain.task import run_pretraining

    run_pretraining(
        corpus, cfg, init_model=model, vocab=str(vocab) if vocab else None,
        shape=ModelShape(hidden=hidden, layers=layers, heads=heads), prune=prune_vocab, max_length=max_length,
        dev_fraction=dev_fraction, head=mlm_head, save_dtype=torch.float16 if save_fp16 else None,
    )
