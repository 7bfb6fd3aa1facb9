"""The ``bertkit`` command line: a thin layer over the library.

Every command reads files or stdin (``-``), writes stdout or ``-o FILE``, and logs on stderr.
A :class:`~bertkit.errors.BertkitError` becomes one ``error: ...`` line and exit code 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import BertkitError

app = typer.Typer(
    help="BERT techniques for Chinese text, usable from the shell. Models default to the shipped bertkit-zh-mini.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



@app.callback()
def _root() -> None:
    """BERT techniques for Chinese text, usable from the shell."""


# Options shared by every training command (one definition, one meaning).
Epochs = Annotated[float, typer.Option(min=0.01, help="Passes over the training data.")]
MaxSteps = Annotated[Optional[int], typer.Option(min=1, help="Stop after this many optimizer steps (overrides --epochs).")]
MaxMinutes = Annotated[Optional[float], typer.Option(min=0.01, help="Stop this run after N minutes of training, at a step boundary, evaluating and checkpointing there (--resume goes on).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Examples per micro-batch and process.")]
GradAccum = Annotated[int, typer.Option(min=1, help="Micro-batches accumulated per optimizer step.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warmup then linear decay).")]
Warmup = Annotated[float, typer.Option(help="Fraction of the steps spent warming up the learning rate.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay (not applied to biases and LayerNorm).")]
Bf16 = Annotated[bool, typer.Option("--bf16", help="Run forward passes under bfloat16 autocast.")]
EvalEvery = Annotated[int, typer.Option(min=0, help="Evaluate every N steps (0: once per epoch).")]
SaveEvery = Annotated[int, typer.Option(min=0, help="Write a resumable checkpoint every N steps (0: at each evaluation).")]
Seed = Annotated[int, typer.Option(help="Random seed: same seed, same data and same result.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in -o DIR from its last checkpoint.")]
Threads = Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's choice).")]
Recompute = Annotated[str, typer.Option(help="Activation recomputation: none, full, ffn-keep, ffn2-keep, selective, every-k, or auto (profile each on one step, take the fastest that fits --max-memory).")]
EveryK = Annotated[Optional[int], typer.Option(help="Layers per segment for --recompute every-k (default: ceil(sqrt(layers))).")]
MaxMemory = Annotated[Optional[str], typer.Option(help="Activation memory budget for --recompute auto and --find-batch-size, e.g. 900M or 8G.")]
FindBatch = Annotated[bool, typer.Option("--find-batch-size", help="Use the largest batch whose activations fit --max-memory (with the chosen policy).")]
Compute = Annotated[str, typer.Option(help="Encoder arithmetic: float32, bfloat16 (autocast), or auto (bfloat16 where the hardware has native bf16 matmuls, e.g. AVX512-BF16/AMX CPUs: ~1.5x faster).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory (default: the shipped bertkit-zh-mini).")]


def _train_config(output_dir: Path, **kw):
    from .trainer import TrainConfig

    return TrainConfig(output_dir=output_dir, **kw)


def _recompute(policy: str, every_k: int | None, max_memory: str | None, find_batch_size: bool):
    from .recompute import RecomputeOptions

    return RecomputeOptions(policy=policy, every_k=every_k, max_memory=max_memory, find_batch_size=find_batch_size)


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


@app.command()
def pretrain(
    corpus: Annotated[list[str], typer.Argument(help="Plain-text files, one text a line ('-' for stdin).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the model and checkpoints go.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Continue from this checkpoint instead of a random init.")] = None,
    vocab: Annotated[Optional[Path], typer.Option(help="WordPiece vocab.txt for a new model (default: bert-base-chinese's, from ../shared/data/vocab).")] = None,
    prune_vocab: Annotated[bool, typer.Option("--prune-vocab", help="Keep only the tokens that occur in the corpus.")] = False,
    hidden: Annotated[int, typer.Option(help="Hidden size of a new model.")] = 256,
    layers: Annotated[int, typer.Option(help="Encoder layers of a new model.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads of a new model.")] = 4,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens per packed training sequence, [CLS] and [SEP] included.")] = 128,
    mlm_head: Annotated[str, typer.Option(help="'masked': MLM head on masked positions only (fast, as in BERT); 'all': every position.")] = "masked",
    save_fp16: Annotated[bool, typer.Option("--save-fp16", help="Store the final weights in float16 (half the size).")] = False,
    dev_fraction: Annotated[float, typer.Option(help="Share of sequences held out to measure masked-token accuracy.")] = 0.005,
    epochs: Epochs = 1.0,
    max_steps: MaxSteps = None,
    max_minutes: MaxMinutes = None,
    batch_size: BatchSize = 64,
    grad_accum: GradAccum = 1,
    lr: LearningRate = 5e-4,
    warmup: Warmup = 0.06,
    weight_decay: WeightDecay = 0.01,
    bf16: Bf16 = False,
    eval_every: EvalEvery = 0,
    save_every: SaveEvery = 0,
    seed: Seed = 42,
    resume: Resume = False,
    threads: Threads = None,
    recompute: Recompute = "none",
    every_k: EveryK = None,
    max_memory: MaxMemory = None,
    find_batch_size: FindBatch = False,
):
    """Masked-LM pretraining with Chinese whole-word masking (jieba words, 15%, 80/10/10)."""
    import torch

    from .pretrain import ModelShape, run_pretraining

    _threads(threads)
    if mlm_head not in ("masked", "all"):
        raise BertkitError(f"--mlm-head must be 'masked' or 'all', not {mlm_head!r}")
    cfg = _train_config(
        output_dir, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_ratio=warmup, weight_decay=weight_decay, bf16=bf16, eval_every=eval_every, save_every=save_every,
        seed=seed, resume=resume, extra={"command": "pretrain", "corpus": corpus},
    )
    run_pretraining(
        corpus, cfg, init_model=model, vocab=str(vocab) if vocab else None,
        shape=ModelShape(hidden=hidden, layers=layers, heads=heads), prune=prune_vocab, max_length=max_length,
        dev_fraction=dev_fraction, head=mlm_head, save_dtype=torch.float16 if save_fp16 else None,
        recompute=_recompute(recompute, every_k, max_memory, find_batch_size),
    )


@app.command()
def train(
    train_file: Annotated[Optional[str], typer.Argument(metavar="TRAIN", help="classify: TSV with header label<TAB>text (or label<TAB>text_a<TAB>text_b), or JSONL. correct: source<TAB>target sentence pairs (optional with --synthetic).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the fine-tuned model and checkpoints go.")] = None,
    dev: Annotated[Optional[str], typer.Option(help="Dev data in the same format: evaluated during training; the best model is kept.")] = None,
    model: ModelOpt = None,
    task: Annotated[str, typer.Option(help="classify: sequence classification; correct: Chinese spelling correction (Soft-Masked BERT).")] = "classify",
    synthetic: Annotated[Optional[list[str]], typer.Option(help="correct: plain-text files of correct Chinese; errors are drawn into them afresh each epoch (repeatable).")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="correct: train the plain BERT baseline (no detection network, no soft mask).")] = False,
    residual_init: Annotated[float, typer.Option(help="correct: starting weight a of the residual h + a·e before the output layer (paper: 1, fixed; learned here).")] = 1.0,
    detector_lr: Annotated[float, typer.Option(min=0.0, help="correct: learning rate of the detection network, as a multiple of --lr (it starts from scratch beside a pretrained encoder).")] = 1.0,
    corrupt_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="correct: share of the Chinese characters of a --synthetic sentence replaced (paper: 0.15).")] = 0.15,
    phonetic: Annotated[float, typer.Option(min=0.0, help="correct: weight of same/similar-pinyin replacements (paper: 0.8).")] = 0.8,
    visual: Annotated[float, typer.Option(min=0.0, help="correct: weight of look-alike replacements (paper: 0).")] = 0.0,
    random_char: Annotated[float, typer.Option("--random", min=0.0, help="correct: weight of random-character replacements (paper: 0.2).")] = 0.2,
    confusion: Annotated[Optional[Path], typer.Option(help="correct: directory of confusion sets (default: ../shared/data/csc/confusion).")] = None,
    save_fp16: Annotated[bool, typer.Option("--save-fp16", help="Store the final weights in float16 (half the size).")] = False,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split into windows, never cut.")] = 128,
    epochs: Epochs = 3.0,
    max_steps: MaxSteps = None,
    max_minutes: MaxMinutes = None,
    batch_size: BatchSize = 32,
    grad_accum: GradAccum = 1,
    lr: LearningRate = 5e-5,
    warmup: Warmup = 0.1,
    weight_decay: WeightDecay = 0.01,
    bf16: Bf16 = False,
    eval_every: EvalEvery = 0,
    save_every: SaveEvery = 0,
    seed: Seed = 42,
    resume: Resume = False,
    threads: Threads = None,
    recompute: Recompute = "none",
    every_k: EveryK = None,
    max_memory: MaxMemory = None,
    find_batch_size: FindBatch = False,
):
    """Fine-tune a sequence classifier, or with --task correct a spelling corrector. Runs under torchrun for DDP."""
    import torch

    _threads(threads)
    if output_dir is None:
        raise typer.BadParameter("missing option --output-dir / -o")
    if task not in ("classify", "correct"):
        raise typer.BadParameter(f"--task must be classify or correct, not {task!r}")
    cfg = _train_config(
        output_dir, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_ratio=warmup, weight_decay=weight_decay, bf16=bf16, eval_every=eval_every, save_every=save_every,
        seed=seed, resume=resume, extra={"command": "train", "task": task, "train": train_file, "dev": dev},
    )
    recompute_opts = _recompute(recompute, every_k, max_memory, find_batch_size)
    if task == "classify":
        from .classify import run_training

        if train_file is None or synthetic or plain:
            raise BertkitError("classification needs TRAIN and takes no --synthetic or --plain (those are for --task correct)")
        run_training(train_file, dev, model, cfg, max_length=max_length, recompute=recompute_opts)
        return
    from .correct import CorruptionOptions, run_correct_training

    cfg.extra["synthetic"] = synthetic or []
    corruption = CorruptionOptions(rate=corrupt_rate, phonetic=phonetic, visual=visual, random_share=random_char,
                                   confusion_dir=str(confusion) if confusion else None)
    run_correct_training(train_file, synthetic or [], dev, model, cfg, kind="plain" if plain else "soft-masked",
                         max_length=max_length, corruption=corruption,
                         save_dtype=torch.float16 if save_fp16 else None, recompute=recompute_opts,
                         detector_lr=detector_lr, residual_init=residual_init)


InputArg = Annotated[str, typer.Argument(metavar="INPUT", help="A .txt (one text a line), .tsv (header with text or text_a/text_b) or .jsonl file; '-' for stdin.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")]


@app.command()
def predict(
    input_file: InputArg,
    model: Annotated[str, typer.Option("--model", "-m", help="A fine-tuned classifier directory (from bertkit train).")],
    output: OutputOpt = None,
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split and their window probabilities averaged.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    threads: Threads = None,
):
    """Classify texts: one JSON line per input line, {"label": ..., "probs": {...}}, in input order."""
    from .classify import Classifier, prediction_record, read_examples
    from .textio import output_stream

    _threads(threads)
    classifier = Classifier.load(model, max_length=max_length, batch_size=batch_size)
    with output_stream(output) as out:
        for probs in classifier.predict_proba(read_examples(input_file, labelled=False)):
            out.write(prediction_record(classifier.labels, probs) + "\n")


@app.command(name="eval")
def evaluate(
    test_file: Annotated[str, typer.Argument(metavar="TEST", help="Labelled data, same format as for train.")],
    model: Annotated[str, typer.Option("--model", "-m", help="A fine-tuned classifier directory (from bertkit train).")],
    max_length: Annotated[int, typer.Option(min=8, max=4096, help="Tokens per window; longer texts are split and their window probabilities averaged.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    threads: Threads = None,
):
    """Score a classifier: prints one JSON line with accuracy, macro_f1 and n."""
    import json

    from .classify import Classifier, check_labels, load_labelled

    _threads(threads)
    classifier = Classifier.load(model, max_length=max_length, batch_size=batch_size)
    examples = load_labelled(test_file)
    check_labels(examples, classifier.labels, test_file, "model's")
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in classifier.evaluate(examples).items()}))


@app.command()
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
    import json

    from . import embed as emb
    from .textio import read_texts

    _threads(threads)
    if sum(x is not None for x in (input_file, fit if not eval_pairs else None, eval_pairs)) != 1:
        raise BertkitError("give exactly one of INPUT (embed), --fit CORPUS -o DIR, or --eval PAIRS [--fit CORPUS]")
    embedder = emb.Embedder(model, max_length=max_length, batch_size=batch_size, compute=compute)
    if eval_pairs:
        specs = [emb.parse_pooling(p, base_pooling) for p in (emb.ALL_POOLINGS if all_poolings else [pooling or emb.default_pooling(embedder)])]
        fit_texts = list(read_texts(fit)) if fit else None
        print(json.dumps(emb.evaluate_poolings(embedder, eval_pairs, specs, fit_texts), ensure_ascii=False))
        return
    if fit:
        if not output:
            raise BertkitError("--fit needs -o DIR for the fitted model")
        spec = emb.parse_pooling(pooling or "whitening", base_pooling)
        if not spec.fitted:
            raise BertkitError(f"--fit needs a pooling to fit (whitening, whitening-K or flow), not {spec.name}")
        emb.fit_and_save(embedder, spec, read_texts(fit), Path(output))
        return
    spec = emb.parse_pooling(pooling or emb.default_pooling(embedder), base_pooling)
    vectors = embedder.embed(read_texts(input_file), spec)
    emb.write_vectors(vectors, output, normalize=normalize, precision=precision)


@app.command()
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
    import json
    from dataclasses import asdict

    from . import modelio
    from .correct import DEFAULT_CORRECTOR, Corrector, change_record, read_pairs, save_threshold, tune_threshold
    from .metrics import csc_scores
    from .textio import output_stream, read_texts

    _threads(threads)
    if (input_file is None) == (eval_pairs is None):
        raise BertkitError("give exactly one of INPUT (correct) or --eval PAIRS (score)")
    if tune and (not eval_pairs or threshold is not None):
        raise BertkitError("--tune needs --eval DEV.tsv and no --threshold")
    corrector = Corrector.load(model, threshold=threshold, batch_size=batch_size, max_length=max_length,
                               compute=compute, candidates=candidates)
    if eval_pairs:
        pairs = read_pairs(eval_pairs)
        sources, targets = [p.source for p in pairs], [p.target for p in pairs]
        if tune:
            corrector.threshold, scores = tune_threshold(corrector, sources, targets)
            save_threshold(modelio.resolve_model(model, default=DEFAULT_CORRECTOR), corrector.threshold)
        else:
            scores = csc_scores(sources, targets, [text for text, _ in corrector.correct(sources)])
        print(json.dumps({k: round(v, 4) for k, v in asdict(scores).items()}
                         | {"n": len(pairs), "threshold": corrector.threshold, "candidates": candidates}))
        return
    with output_stream(output) as out:
        for text, changes in corrector.correct(read_texts(input_file)):
            out.write((change_record(text, changes) if details else text) + "\n")


def main() -> None:
    """Console entry point: user errors as one line, never a traceback."""
    try:  # typer vendors click from 0.29 on
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as click_exc

    try:
        code = app(standalone_mode=False)
    except BertkitError as exc:
        _fail(str(exc), 1)
    except click_exc.NoArgsIsHelpError:
        sys.exit(0)  # the help has been shown
    except click_exc.UsageError as exc:
        _fail(f"{exc.format_message()} (see --help)", 2)
    except click_exc.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader (e.g. `head`) went away: not an error for a pipeline.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:  # unreadable input, unwritable output, full disk
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
