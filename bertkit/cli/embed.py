"""``bertkit embed``: sentence vectors, and fitting whitening or flow; the embedding half of
``bertkit eval`` (Spearman on STS pairs)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import UsageError
from .options import Compute, Encoding, ModelOpt, Overwrite, Threads, check_inputs, deprecated, print_json, set_threads

Pooling = Annotated[Optional[str], typer.Option(help="embed: cls, mean, max, mean_sqrt_len, first-last-avg, last2avg, whitening, whitening-K, flow (default: the model's saved pooling, else mean).")]
BasePooling = Annotated[Optional[str], typer.Option(help="embed: the pooling that whitening and flow start from (default: a sentence-embedding model's own pooling, e.g. cls after bertkit contrast; else first-last-avg).")]
AllPoolings = Annotated[bool, typer.Option("--all-poolings", help="embed: score every pooling in one encoder pass (whitening needs --fit; one the corpus is too small to fit is skipped, with the reason).")]
Fit = Annotated[Optional[str], typer.Option(metavar="CORPUS", help="embed: unlabelled text (one sentence a line, blank lines skipped) to fit --pooling whitening or flow on (whitening-K needs more than K sentences, flow at least 64).")]


def embed(
    input_file: Annotated[Optional[str], typer.Argument(metavar="INPUT", help="Texts, one a line ('-' for stdin); blank lines give the empty text's vector.")] = None,
    model: ModelOpt = None,
    pooling: Pooling = None,
    base_pooling: BasePooling = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="FILE|DIR", help="Embeddings to FILE: .npy, .jsonl or .tsv (default: TSV on stdout). With --fit: the new model DIR, loadable by sentence-transformers. An existing one needs --overwrite.")] = None,
    overwrite: Overwrite = False,
    fit: Fit = None,
    eval_pairs: Annotated[Optional[str], typer.Option("--eval", hidden=True, help="Deprecated: bertkit eval PAIRS.")] = None,
    all_poolings: Annotated[bool, typer.Option("--all-poolings", hidden=True, help="Deprecated: bertkit eval PAIRS --all-poolings.")] = False,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise each vector.")] = False,
    precision: Annotated[str, typer.Option(help="float32, float16, int8 (needs --normalize) or binary (sign bits, packed).")] = "float32",
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows and pooled together, never cut.")] = 512,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass (sorted by length within a window of 4096).")] = 64,
    compute: Compute = "float32",
    threads: Threads = None,
    encoding: Encoding = None,
):
    """Sentence embeddings: one vector per input line, in input order; or fit whitening / flow into a new model."""
    from ..core.files import check_output_dir, check_output_file

    if eval_pairs is not None:
        deprecated("bertkit embed --eval PAIRS", "bertkit eval PAIRS")
        if input_file is not None:
            raise UsageError("give INPUT (to embed) or --eval PAIRS (to score), not both")
        check_inputs(eval_pairs, fit, encoding=encoding)
        set_threads(threads)
        return evaluate_embeddings(eval_pairs, model, pooling, base_pooling, all_poolings, fit, max_length, batch_size, compute)
    if all_poolings:
        raise UsageError("--all-poolings goes with bertkit eval PAIRS")
    if (input_file is None) == (fit is None):
        raise UsageError("give INPUT (to embed) or --fit CORPUS -o DIR (to fit whitening or flow)")
    if fit and not output:
        raise UsageError("--fit needs -o DIR for the fitted model")
    check_inputs(input_file, fit, encoding=encoding)
    (check_output_dir if fit else check_output_file)(output, overwrite)
    set_threads(threads)
    if fit:
        return fit_model(fit, model, pooling, base_pooling, Path(output), max_length, batch_size, compute)
    from ..core.textio import read_texts
    from ..embed.data import write_vectors
    from ..embed.runner import Embedder

    embedder = Embedder.load(model, max_length=max_length, batch_size=batch_size, compute=compute)
    spec = _spec(pooling, base_pooling, embedder)
    write_vectors(embedder.embed(read_texts(input_file), spec), output, normalize=normalize, precision=precision)


def _spec(pooling: str | None, base_pooling: str | None, embedder=None, model: str | None = None):
    from ..embed.model import parse_pooling
    from ..embed.runner import default_pooling

    base = base_pooling or _model_base_pooling(embedder.path if embedder else model)
    return parse_pooling(pooling or (default_pooling(embedder) if embedder else "whitening"), base)


def _model_base_pooling(model: str | None) -> str:
    """The pooling a sentence-embedding model ends in (what whitening it further starts from), else
    BERT-whitening's first-last-avg."""
    from ..core import modelio

    path = Path(modelio.resolve_model(model))
    if path.is_dir():
        manifest = modelio.Manifest.read(path)
        if manifest.kind == "sentence-embedding" and manifest.config.get("base_pooling"):
            return str(manifest.config["base_pooling"])
    return "first-last-avg"


def fit_model(corpus: str, model: str | None, pooling: str | None, base_pooling: str | None, output: Path,
              max_length: int, batch_size: int, compute: str) -> None:
    """``embed --fit``: the whitening or flow of ``pooling`` fitted on ``corpus``, saved with the encoder."""
    from ..embed.runner import Embedder, fit_and_save
    from ..embed.task import read_fit_corpus

    spec = _spec(pooling, base_pooling, model=model)
    if not spec.fitted:
        raise UsageError(f"--fit needs a pooling to fit (whitening, whitening-K or flow), not {spec.name}")
    texts = read_fit_corpus(corpus)  # counted before the model loads
    embedder = Embedder.load(model, max_length=max_length, batch_size=batch_size, compute=compute)
    fit_and_save(embedder, spec, texts, output, corpus=corpus)


def evaluate_embeddings(pairs_file: str, model: str | None, pooling: str | None, base_pooling: str | None, all_poolings: bool,
                        fit: str | None, max_length: int, batch_size: int, compute: str) -> None:
    """``bertkit eval`` on an encoder: Spearman x 100 on STS pairs, each pooling in one encoder pass."""
    from ..embed.data import read_sts_pairs
    from ..embed.model import ALL_POOLINGS, parse_pooling
    from ..embed.runner import Embedder, default_pooling
    from ..embed.task import read_fit_corpus

    fit_texts = read_fit_corpus(fit) if fit else None  # counted before the model loads
    embedder = Embedder.load(model, max_length=max_length, batch_size=batch_size, compute=compute)
    names = ALL_POOLINGS if all_poolings else [pooling or default_pooling(embedder)]
    base = base_pooling or _model_base_pooling(embedder.path)
    specs = [parse_pooling(p, base) for p in names]
    print_json(embedder.evaluate(read_sts_pairs(pairs_file), specs, fit_texts, corpus=fit,
                                 skip_unfittable=all_poolings))
