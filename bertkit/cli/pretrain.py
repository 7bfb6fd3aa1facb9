"""``bertkit pretrain``: masked-LM pretraining, or with ``--multigrain`` Lattice-BERT pretraining."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from .options import Encoding, OutputDir, SaveFp16, check_inputs, training_command

DEFAULT_SHAPE = {"hidden": 256, "layers": 4, "heads": 4}  # of a new model
DEFAULT_WORDS = 20000


@training_command(epochs=1.0, batch_size=64, lr=5e-4, warmup=0.06)
def pretrain(
    corpus: Annotated[list[str], typer.Argument(help="Plain-text files, one text a line ('-' for stdin).")],
    output_dir: OutputDir = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Continue from this checkpoint instead of a random init (--multigrain: the character BERT to start from; required).")] = None,
    vocab: Annotated[Optional[Path], typer.Option(help="WordPiece vocab.txt for a new model (default: bert-base-chinese's, from ../shared/data/vocab).")] = None,
    prune_vocab: Annotated[bool, typer.Option("--prune-vocab", help="Keep only the tokens that occur in the corpus.")] = False,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden size of a new model (default 256).")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Encoder layers of a new model (default 4).")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Attention heads of a new model (default 4).")] = None,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens per packed training sequence, [CLS] and [SEP] included (--multigrain: characters per window; word units come on top).")] = 128,
    mlm_head: Annotated[str, typer.Option(help="'masked': MLM head on masked positions only (fast, as in BERT); 'all': every position.")] = "masked",
    multigrain: Annotated[bool, typer.Option("--multigrain", help="Lattice-BERT (Lai et al., NAACL 2021): continue the character BERT -m on lattices of characters and lexicon words with masked segment prediction.")] = False,
    lexicon: Annotated[Optional[Path], typer.Option(metavar="FILE", help="--multigrain: word list, one word a line (jieba's 'word freq tag' lines work; default: jieba's dictionary).")] = None,
    words: Annotated[Optional[int], typer.Option(metavar="K", min=1, help=f"--multigrain: keep the K lexicon words the corpus uses most (default {DEFAULT_WORDS}).")] = None,
    save_fp16: SaveFp16 = False,
    dev_fraction: Annotated[float, typer.Option(help="Share of sequences held out to measure masked-token accuracy (--multigrain: masked-unit accuracy).")] = 0.005,
    encoding: Encoding = None,
    *,
    training,
):
    """Masked-LM pretraining with Chinese whole-word masking (jieba words, 15%, 80/10/10); with --multigrain, Lattice-BERT's masked segment prediction over characters and words."""
    if output_dir is None:
        raise UsageError("missing option -o DIR: where the model goes")
    if mlm_head not in ("masked", "all"):
        raise UsageError(f"--mlm-head must be 'masked' or 'all', not {mlm_head!r}")
    shape = {"hidden": hidden, "layers": layers, "heads": heads}
    if multigrain:
        _check_multigrain(model, vocab, prune_vocab, mlm_head, shape)
    elif lexicon is not None or words is not None:
        raise UsageError(f"{'--lexicon' if lexicon is not None else '--words'} goes with --multigrain")
    check_inputs(*corpus, encoding=encoding)
    cfg = training(output_dir, {"command": "pretrain", "corpus": corpus, "multigrain": multigrain})
    import torch

    save_dtype = torch.float16 if save_fp16 else None
    if multigrain:
        from ..multigrain.task import run_multigrain

        run_multigrain(corpus, cfg, init_model=model, lexicon=lexicon, words=words or DEFAULT_WORDS,
                       max_length=max_length, dev_fraction=dev_fraction, save_dtype=save_dtype)
        return
    from ..pretrain.model import ModelShape
    from ..pretrain.task import run_pretraining

    shape = {name: DEFAULT_SHAPE[name] if value is None else value for name, value in shape.items()}
    run_pretraining(
        corpus, cfg, init_model=model, vocab=str(vocab) if vocab else None,
        shape=ModelShape(**shape), prune=prune_vocab, max_length=max_length,
        dev_fraction=dev_fraction, head=mlm_head, save_dtype=save_dtype,
    )


def _check_multigrain(model, vocab, prune_vocab, mlm_head, shape) -> None:
    """--multigrain continues a character BERT: the options that make or reshape a model are refused."""
    if model is None:
        raise UsageError("--multigrain starts from a character BERT: pass -m MODEL_DIR (e.g. bertkit-zh-mini)")
    given = [f"--{name}" for name, value in shape.items() if value is not None]
    given += ["--vocab"] * (vocab is not None) + ["--prune-vocab"] * prune_vocab + ["--mlm-head all"] * (mlm_head == "all")
    if given:
        raise UsageError(f"{given[0]} cannot be used with --multigrain, which keeps the shape and vocabulary of -m")
