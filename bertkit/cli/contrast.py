"""``bertkit contrast``: train a sentence encoder by contrast (SG-BERT, SimCSE, CoSENT, in-batch
negatives) into a sentence-embedding model directory."""

from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from .options import Encoding, ModelOpt, OutputDir, check_inputs, training_command

METHOD_HELP = ("sg: SG-BERT (SG-OPT), unlabelled sentences; simcse: unsupervised SimCSE, unlabelled sentences; "
               "cosent: CoSENT, s1<TAB>s2<TAB>score pairs; mnrl: in-batch negatives, anchor<TAB>positive pairs.")


@training_command(epochs=1.0, lr=None, batch_size=None)
def contrast(
    inputs: Annotated[Optional[list[str]], typer.Argument(metavar="CORPUS...", help="sg, simcse: plain text, one sentence a line (blank lines skipped; several files or '-' for stdin). cosent, mnrl: one TSV of pairs.")] = None,
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "sg",
    model: ModelOpt = None,
    output_dir: OutputDir = None,
    dev: Annotated[Optional[str], typer.Option(metavar="STS.tsv", help="s1<TAB>s2<TAB>score pairs: Spearman at each evaluation; the best checkpoint is kept.")] = None,
    max_length: Annotated[Optional[int], typer.Option(min=8, max=4096, help="Training tokens per sentence, longer ones cut (default: the method's paper's: 32 for sg and simcse, 64 for pairs). Embedding later never cuts.")] = None,
    encoding: Encoding = None,
    *,
    training,
):
    """Sentence embeddings trained by contrast; the output is a model for bertkit embed and sentence-transformers.

    --lr and --batch-size default to the method's paper (sg 5e-5 / 16, simcse 3e-5 / 64, cosent and mnrl 2e-5 / 64)."""
    if not inputs:
        raise UsageError("give the CORPUS to train on ('-' for stdin)")
    if output_dir is None:
        raise UsageError("missing option -o DIR: where the model goes")
    if inputs.count("-") > 1:
        raise UsageError("stdin ('-') can be read once")
    check_inputs(*inputs, dev, encoding=encoding)
    from ..contrast.task import method_defaults, run_contrast

    cfg = training(output_dir, {"command": "contrast", "method": method, "inputs": inputs, "dev": dev})
    chosen = method_defaults(method, cfg.lr, cfg.batch_size, max_length)
    run_contrast(chosen, inputs, dev, model, cfg)
