"""Lattice-BERT pretraining over the shared training loop: Lai et al., "Lattice-BERT: Leveraging
Multi-Granularity Representations in Chinese Pre-trained Language Models", NAACL 2021.

The recipe: corpus lines become characters (:func:`.io.char_normalizer`); each line's lattice holds
its characters plus every word of the word vocabulary matching a span (:func:`.lattice.build_lattice`);
each training step masks whole segments (:func:`.lattice.choose_segments`, about 15% of the
characters) and the model predicts every masked character and word (masked segment prediction,
:class:`.model.LatticeForPretraining`).  The model starts from a character BERT
(:func:`.model.from_char_bert`) and is saved as a self-contained directory (:mod:`.io`).

Where we deviate from the paper, as far as we know it (the model's own deviations are listed in
:mod:`.model`, the lattice's in :mod:`.lattice`):

* Start: a character BERT continued on lattices, not a model pretrained from scratch; it is what
  a user of this kit has, and the carried-over model computes exactly what the BERT computed.
* Word vocabulary: the ``--words`` words of a lexicon (jieba's dictionary unless ``--lexicon``) the
  corpus uses most, not a vocabulary built for the purpose from a large corpus.
* Inputs: consecutive lines are packed into windows of up to ``max_length`` lattice units
  (characters + words, [CLS] and [SEP] included): the model's sequence length, as ``bertkit
  pretrain`` packs ``max_length`` tokens (RoBERTa's FULL-SENTENCES), so both arms of a comparison
  pay for the same sequence length per step; a window then holds fewer characters (about 1 /
  1.35 as many on our corpus).  Each line's lattice is built on its own, so no word crosses two
  lines.  A line that does not fit in what is left of a window is cut in whole characters (the
  head fills the window, the tail opens the next), and a word across a cut is lost.
* Masking: dynamic (drawn anew at each step from the loop's per-step generator, as RoBERTa) and
  always ``[MASK]`` (no 80/10/10 replacement).  No sentence-level objective.
* A masked word unit stays in the input as ``[MASK]`` at its own span, so the model sees which
  spans inside a masked segment are vocabulary words (not which words): inherent to masked
  segment prediction over a lattice, where every unit keeps its position.
* Lattices are built once, before training, not on the fly: the log gives their speed
  (sentences/s) beside the mean training step time, so the cost of building them on the fly can
  be judged (the issue asks that lattice construction not slow training).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import BertForMaskedLM

from ..core import modelio
from ..core.device import module_device
from ..core.errors import BertkitError, UsageError
from ..core.files import read_json, write_json_atomic
from ..core.progress import log
from ..core.textio import read_texts
from ..core.vocab import SPECIAL_TOKENS
from ..training import TrainConfig, Trainer, TrainerHook
from ..training.distributed import world
from .io import char_normalizer, save_lattice_dir
from .lattice import Lexicon, Unit, build_lattice, choose_segments, mask_segments, segments, word_counts
from .model import ARCHITECTURE, LatticeForPretraining, collate_lattices, from_char_bert

MASK_RATE = 0.15  # of the characters, BERT's rate
EVAL_SEED = 1234  # the dev set's masks: the same at every evaluation


# ---------------------------------------------------------------- data


@dataclass
class LatticeExample:
    """One training window: its units (all characters in order, then the words) and its segments."""

    units: list[Unit]
    segments: list[tuple[int, int]]


def read_pieces(paths: Sequence[str], normalize: Callable[[str], str], max_chars: int) -> list[str]:
    """The corpus's non-empty lines, normalised, each cut into pieces of at most ``max_chars``
    characters (a long line is not dropped: every character is trained on)."""
    pieces = []
    for path in paths:
        for text in read_texts(path):
            chars = normalize(text)
            pieces += [chars[i : i + max_chars] for i in range(0, len(chars), max_chars)]
    if not pieces:
        raise BertkitError("the pretraining corpus has no text")
    return pieces


PieceLattice = tuple[str, list[Unit]]  # a piece of a line and its lattice


def fill_windows(pieces: Sequence[str], lexicon: Lexicon, max_units: int) -> list[list[PieceLattice]]:
    """Consecutive pieces, each with its lattice, packed into windows of at most ``max_units``
    lattice units, each window filled: a piece that does not fit in what is left of a window is cut
    (in whole characters) where its head's lattice fills the window, and its tail opens the next
    window (a word across the cut is lost), as ``bertkit pretrain`` cuts a line mid-line."""
    if max_units < 1:
        raise ValueError(f"max_units must be at least 1, not {max_units}")
    windows, current, room = [], [], max_units
    todo = list(reversed(pieces))
    while todo:
        piece = todo.pop()
        units = build_lattice(piece, lexicon)
        if len(units) <= room:
            current.append((piece, units))
            room -= len(units)
            continue
        cut = _longest_head(piece, lexicon, room)
        if cut:
            current.append((piece[:cut], build_lattice(piece[:cut], lexicon)))
        todo.append(piece[cut:])
        windows.append(current)
        current, room = [], max_units
    if current:
        windows.append(current)
    return windows


def _longest_head(piece: str, lexicon: Lexicon, room: int) -> int:
    """The most characters of ``piece`` whose lattice has at most ``room`` units (a prefix's
    lattice only grows with the prefix, so bisect)."""
    fits, too_long = 0, len(piece)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if len(build_lattice(piece[:middle], lexicon)) <= room:
            fits = middle
        else:
            too_long = middle
    return fits


def window_example(pieces: Sequence[str] | Sequence[PieceLattice], lexicon: Lexicon | None = None) -> LatticeExample:
    """The lattice of a window: each piece's lattice (given, or built with ``lexicon``), shifted to
    where the piece starts."""
    chars, words, offset = [], [], 0
    for item in pieces:
        piece, lattice = (item, build_lattice(item, lexicon)) if isinstance(item, str) else item
        for unit in lattice:
            shifted = Unit(unit.text, unit.start + offset, unit.end + offset)
            (chars if unit.start == unit.end else words).append(shifted)
        offset += len(piece)
    units = chars + words
    return LatticeExample(units, segments(offset, units))


def choose_words(pieces: Sequence[str], lexicon: Lexicon, k: int) -> list[str]:
    """The ``k`` lexicon words the corpus uses most, most used first (ties: the smaller word), and
    a log line of how much of the corpus's word use they cover."""
    start = time.perf_counter()
    counts = word_counts(pieces, lexicon)
    seconds = time.perf_counter() - start
    if not counts:
        raise BertkitError("the corpus contains no word of the lexicon: a lattice would hold characters only; "
                           "check --lexicon (one word a line) or give a larger corpus")
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:k]
    total, covered = sum(counts.values()), sum(counts[w] for w in ranked)
    log(f"the corpus uses {len(counts)} of the lexicon's {len(lexicon)} words ({total} occurrences, counted in "
        f"{seconds:.2f}s); keeping the {len(ranked)} most used (--words {k}), {covered / total:.1%} of the occurrences")
    return ranked


def build_examples(pieces: Sequence[str], lexicon: Lexicon, max_units: int) -> tuple[list[LatticeExample], dict]:
    """Every window's lattice (at most ``max_units`` units), built once up front, and how fast that
    went (logged)."""
    start = time.perf_counter()
    examples = [window_example(w) for w in fill_windows(pieces, lexicon, max_units)]
    seconds = max(time.perf_counter() - start, 1e-9)
    n_chars = sum(len(p) for p in pieces)
    n_units = sum(len(e.units) for e in examples)
    stats = {"sentences": len(pieces), "windows": len(examples), "lattice_seconds": round(seconds, 4),
             "sentences_per_second": round(len(pieces) / seconds, 1),
             "ms_per_window": round(1000 * seconds / len(examples), 3),
             "units_per_char": round(n_units / max(n_chars, 1), 3),
             "chars_per_window": round(n_chars / len(examples), 1)}
    log(f"built {len(examples)} lattices from {len(pieces)} sentences in {seconds:.2f}s "
        f"({stats['sentences_per_second']:.0f} sentences/s, {stats['ms_per_window']:.2f} ms a window); "
        f"{stats['units_per_char']:.2f} units a character, {stats['chars_per_window']:.1f} characters a window")
    return examples, stats


def mask_batch(examples: Sequence[LatticeExample], rngs: Sequence[random.Random], char_vocab: dict,
               word_vocab: dict) -> dict[str, torch.Tensor]:
    """Segments chosen by each example's own generator, their units masked, all collated."""
    masked = [mask_segments(e.units, e.segments, choose_segments(e.segments, MASK_RATE, generator=rng))
              for e, rng in zip(examples, rngs)]
    return collate_lattices([e.units for e in examples], char_vocab, word_vocab, masked)


# ---------------------------------------------------------------- timing


class StepTimer(TrainerHook):
    """Training step times (from the step's first batch being built to the step's end, so without
    evaluation) and the part of each spent building its batches (masking and tensors)."""

    def __init__(self):
        self.started: float | None = None
        self.collating = 0.0  # of the step under way
        self.steps: list[tuple[float, float]] = []  # (step seconds, of which batch building)

    def step_started(self) -> None:
        if self.started is None:
            self.started, self.collating = time.perf_counter(), 0.0

    def on_step_end(self, trainer, model, step, loss) -> None:
        if loss.is_cuda:
            torch.cuda.synchronize()  # else the GPU's work would not be counted
        if self.started is not None:
            self.steps.append((time.perf_counter() - self.started, self.collating))
        self.started = None

    def summary(self) -> dict:
        """Mean times in ms, the first step left out when there are others (it pays warm-up)."""
        steps = self.steps[1:] or self.steps
        if not steps:
            return {}
        return {"steps_timed": len(steps), "mean_step_ms": round(1000 * sum(s for s, _ in steps) / len(steps), 2),
                "mean_collate_ms": round(1000 * sum(c for _, c in steps) / len(steps), 2)}


# ---------------------------------------------------------------- the task


class LatticePretrainTask:
    """Masked segment prediction for the shared trainer."""

    def __init__(self, model: LatticeForPretraining, tokenizer, words: list[str], dev: list[LatticeExample],
                 save_dtype: torch.dtype | None = None, eval_batch_size: int = 64):
        self.model, self.tokenizer, self.words, self.dev = model, tokenizer, words, dev
        self.char_vocab = tokenizer.get_vocab()
        self.word_vocab = {word: index for index, word in enumerate(words)}
        self.save_dtype, self.eval_batch_size = save_dtype, eval_batch_size
        self.timer = StepTimer()
        self.hooks = [self.timer]

    def length(self, example: LatticeExample) -> int:
        return len(example.units) + 2

    def collate(self, examples, generator: torch.Generator):
        """One generator per example, seeded from the loop's per-step one: masks are new at every
        step (and so every epoch) yet the same when a run is resumed."""
        self.timer.step_started()
        start = time.perf_counter()
        rngs = [random.Random(int(torch.randint(0, 2**62, (1,), generator=generator))) for _ in examples]
        batch = mask_batch(examples, rngs, self.char_vocab, self.word_vocab)
        self.timer.collating += time.perf_counter() - start
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        return model(**batch).loss

    def evaluate(self, model: LatticeForPretraining) -> dict[str, float]:
        """Accuracy over the masked units of the dev windows (characters and words together, and
        each apart), with the same masks at every evaluation."""
        if not self.dev:
            return {}
        rng, device = random.Random(EVAL_SEED), module_device(model)
        counts = {"char": [0, 0], "word": [0, 0]}  # kind -> [correct, total]
        loss_sum = 0.0
        for begin in range(0, len(self.dev), self.eval_batch_size):
            chunk = self.dev[begin : begin + self.eval_batch_size]
            batch = mask_batch(chunk, [random.Random(rng.random()) for _ in chunk], self.char_vocab, self.word_vocab)
            out = model(**{k: v.to(device) for k, v in batch.items()})
            predicted = 0
            for kind, logits in (("char", out.char_logits), ("word", out.word_logits)):
                labels = batch[f"{kind}_labels"]
                labels = labels[labels != -100].to(device)
                counts[kind][0] += int((logits.argmax(-1) == labels).sum())
                counts[kind][1] += len(labels)
                predicted += len(labels)
            loss_sum += float(out.loss) * predicted  # the loss is the mean over the batch's units
        correct = counts["char"][0] + counts["word"][0]
        total = counts["char"][1] + counts["word"][1]
        return {"masked_unit_accuracy": correct / max(total, 1), "masked_unit_loss": loss_sum / max(total, 1),
                "masked_char_accuracy": counts["char"][0] / max(counts["char"][1], 1),
                "masked_word_accuracy": counts["word"][0] / max(counts["word"][1], 1)}

    def save(self, model: LatticeForPretraining, directory: Path) -> None:
        save_lattice_dir(model, self.tokenizer, self.words, directory, dtype=self.save_dtype)


# ---------------------------------------------------------------- the recipe


def run_multigrain(corpus: Sequence[str], cfg: TrainConfig, init_model: str, lexicon: str | Path | None = None,
                   words: int = 20000, max_length: int = 128, dev_fraction: float = 0.005,
                   save_dtype: torch.dtype | None = None) -> dict:
    """Read the lexicon (first: a bad file fails before anything slow), load the character BERT,
    keep the ``words`` lexicon words the corpus uses most, build the lattices and train."""
    if words < 1:
        raise BertkitError("--words must be at least 1")
    recompute = cfg.recompute
    if recompute.policy != "none" or recompute.find_batch_size or recompute.per_sample_attention:
        raise UsageError("--recompute, --find-batch-size and --per-sample-attention patch BERT encoders; "
                         "the lattice encoder of --multigrain does not support them yet")
    source = Lexicon.from_file(lexicon) if lexicon else Lexicon.jieba()
    tokenizer, bert = load_char_bert(init_model)
    if not 8 <= max_length <= bert.config.max_position_embeddings:
        raise BertkitError(f"--max-length {max_length} must be in 8 .. {bert.config.max_position_embeddings} "
                           "(the model's positions)")
    normalize = char_normalizer(tokenizer)
    pieces = read_pieces(corpus, normalize, max_length - 2)
    kept = choose_words(pieces, Lexicon(normalize(w) for w in source), words)
    examples, lattice_stats = build_examples(pieces, Lexicon(kept), max_units=max_length - 2)
    model = from_char_bert(bert, tokenizer.get_vocab(), {w: i for i, w in enumerate(kept)},
                           unk_token=tokenizer.unk_token)
    random.Random(cfg.seed).shuffle(examples)
    n_dev = int(len(examples) * dev_fraction) if dev_fraction > 0 else 0
    dev, train = examples[:n_dev], examples[n_dev:]
    log(f"{len(train)} training windows, {len(dev)} held out; {sum(len(e.units) for e in train)} units")
    task = LatticePretrainTask(model, tokenizer, kept, dev, save_dtype=save_dtype)
    cfg.metric = cfg.metric or ("masked_unit_accuracy" if dev else None)
    cfg.extra["lattice"] = lattice_stats
    state = Trainer(task, train, cfg).fit()
    report_timing(task.timer, lattice_stats, cfg)
    return state


def load_char_bert(init_model: str | None):
    """(tokenizer, BertForMaskedLM) of the character BERT to start from; one-line errors for none,
    for a Lattice-BERT directory (already multigrain) and for a vocabulary without BERT's specials."""
    if not init_model:
        raise BertkitError("--multigrain starts from a character BERT: pass -m MODEL_DIR (e.g. bertkit-zh-mini)")
    path = modelio.resolve_model(init_model, layouts=(ARCHITECTURE,))
    if Path(path).is_dir() and modelio.Manifest.read(Path(path)).architecture == ARCHITECTURE:
        raise BertkitError(f"-m {init_model} is already a Lattice-BERT model; --multigrain starts from a character "
                           "BERT (to continue an interrupted run: the same command with --resume)")
    tokenizer = modelio.load_tokenizer(path)
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise BertkitError(f"the vocabulary of {init_model} lacks the special tokens {', '.join(missing)}")
    return tokenizer, modelio.load_model(path, BertForMaskedLM, dtype=torch.float32)


def report_timing(timer: StepTimer, lattice: dict, cfg: TrainConfig) -> None:
    """Log the mean step time beside what building the step's lattices on the fly would cost, and
    record both in ``trainer_state.json``."""
    timing = timer.summary()
    if not timing:
        return
    windows = cfg.batch_size * cfg.grad_accum
    on_the_fly = lattice["ms_per_window"] * windows
    timing["lattice_ms_per_step"] = round(on_the_fly, 3)
    log(f"mean training step {timing['mean_step_ms']:.1f} ms ({timing['mean_collate_ms']:.1f} ms of it masking and "
        f"batching); building a step's {windows} lattices on the fly would add {on_the_fly:.1f} ms "
        f"({on_the_fly / timing['mean_step_ms']:.1%} of a step)")
    state_file = Path(cfg.output_dir) / "trainer_state.json"
    if world()[0] == 0 and state_file.exists():
        write_json_atomic(state_file, {**read_json(state_file), "timing": timing})
