"""``bertkit embed``: sentence vectors, fitting whitening or flow, and STS evaluation."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import BertkitError
from .options import Compute, ModelOpt, Threads, print_json, set_threads


def embed(
    input_file: Annotated[Optional[str], typer.Argument(metavar="[INPUT]", help="Texts, one a line ('-' for stdin); blank lines give the empty text's vector.")] = None,
    model: ModelOpt = None,
    pooling: Annotated[Optional[str], typer.Option(help="cls, mean, max, mean_sqrt_len, first-last-avg, last2avg, whitening, whitening-K, flow (default: the model's saved pooling, else mean).")] = None,
    base_pooling: Annotated[str, typer.Option(help="Pooling that whitening and flow start from.")] = "first-last-avg",
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Embeddings: .npy, .jsonl or .tsv (default: TSV on stdout). With --fit: the new model directory.")] = None,
    fit: Annotated[Optional[str], typer.Option(help="Fit the --pooling whitening or flow on this unlabelled text (one a line) and save model+pooling+transform to -o DIR, loadable by sentence-transformers.")] = None,
    eval_pairs: Annotated[Optional[str], typer.Option("--eval", help="Score on STS pairs (s1<TAB>s2<TAB>score): Spearman x 100 of cosine similarity, as JSON.")] = None,
    all_poolings: Annotated[bool, typer.Option("--all-poolings", help="With --eval: every pooling in one encoder pass (whitening needs --fit).")] = False,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise each vector.")] = False,
    precision: Annotated[str, typer.Option(help="float32, float16, int8 (needs --normalize) or binary (sign bits, packed).")] = "float32",
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows and pooled together, never cut.")] = 512,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass (sorted by length within a window of 4096).")] = 64,
    compute: Compute = "float32",
    threads: Threads = None,
):
    """Sentence embeddings: one vector per input line, in input order; fit whitening; evaluate on STS."""
    from ..core.textio import read_texts
    from ..embed.data import read_sts_pairs, write_vectors
    from ..embed.model import ALL_POOLINGS, parse_pooling
    from ..embed.runner import Embedder, default_pooling, fit_and_save

    set_threads(threads)
    if sum(x is not None for x in (input_file, fit if not eval_pairs else None, eval_pairs)) != 1:
        raise BertkitError("give exactly one of INPUT (embed), --fit CORPUS -o DIR, or --eval PAIRS [--fit CORPUS]")
    embedder = Embedder.load(model, max_length=max_length, batch_size=batch_size, compute=compute)
    if eval_pairs:
        names = ALL_POOLINGS if all_poolings else [pooling or default_pooling(embedder)]
        specs = [parse_pooling(p, base_pooling) for p in names]
        fit_texts = list(read_texts(fit)) if fit else None
        print_json(embedder.evaluate(read_sts_pairs(eval_pairs), specs, fit_texts))
        return
    if fit:
        if not output:
            raise BertkitError("--fit needs -o DIR for the fitted model")
        spec = parse_pooling(pooling or "whitening", base_pooling)
        if not spec.fitted:
            raise BertkitError(f"--fit needs a pooling to fit (whitening, whitening-K or flow), not {spec.name}")
        fit_and_save(embedder, spec, read_texts(fit), Path(output))
        return
    spec = parse_pooling(pooling or default_pooling(embedder), base_pooling)
    write_vectors(embedder.embed(read_texts(input_file), spec), output, normalize=normalize, precision=precision)
