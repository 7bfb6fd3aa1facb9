"""Training a spelling corrector over the shared loop: the paper's two stages (section 4.1), with
synthetic errors drawn afresh each epoch.  See :mod:`.model` for the method and its deviations."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch
from transformers import BertForMaskedLM

from ..core import modelio
from ..core.errors import BertkitError
from ..core.progress import log
from ..training import TrainConfig, Trainer
from .confusion import SHARED_CONFUSION, ConfusionSets, Corruptor
from .data import (CharVocab, CorruptionOptions, Pair, chunks, error_rate, pad_ids, read_correction_pairs,
                   read_synthetic)
from .model import NEW_PARTS, SoftMaskedBert
from .runner import Corrector, tune_threshold, write_confusion


class CorrectTask:
    """Spelling-correction training for the shared trainer; synthetic errors are drawn per batch."""

    def __init__(self, model: SoftMaskedBert, tokenizer, train: Sequence[Pair], dev: Sequence[Pair],
                 corruptor: Corruptor, max_chars: int, save_dtype: torch.dtype | None = None,
                 confusion: dict[str, str] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.chars = CharVocab(tokenizer)
        self.corruptor, self.dev, self.save_dtype = corruptor, list(dev), save_dtype
        self.max_length = max_chars + 2
        self.confusion = confusion or {}  # saved with the model, for confusion-set decoding
        self.examples = [piece for pair in train for piece in chunks(pair, max_chars)]

    def length(self, pair: Pair) -> int:
        return len(pair.target)

    def collate(self, pairs: Sequence[Pair], generator: torch.Generator) -> dict[str, torch.Tensor]:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        rows, labels, detect = [], [], []
        for pair in pairs:
            source = pair.source if pair.source is not None else self.corruptor(pair.target, rng)
            pos = self.chars.positions(pair.target)
            src_ids = [self.chars.id(source[p]) for p in pos]
            tgt_ids = [self.chars.id(pair.target[p]) for p in pos]
            rows.append(src_ids)
            # a target outside the vocabulary cannot be predicted: no correction loss there
            labels.append([t if t != self.chars.unk or s == t else -100 for s, t in zip(src_ids, tgt_ids)])
            detect.append([int(source[p] != pair.target[p]) for p in pos])
        return pad_ids(rows, self.chars, labels, detect)

    def evaluate(self, model: SoftMaskedBert) -> dict[str, float]:
        """Dev scores at the threshold that maximises sentence-level correction F1 on dev; the
        model keeps that threshold as its operating point (saved in its manifest)."""
        if not self.dev:
            return {}
        sources, targets = [p.source for p in self.dev], [p.target for p in self.dev]
        # model selection uses the paper's open-vocabulary decoding; `bertkit eval DEV
        # --tune` re-tunes the threshold for whichever decoding the user runs
        corrector = Corrector(model, self.tokenizer, max_length=self.max_length, candidates="all")
        model.threshold, scores = tune_threshold(corrector, sources, targets)
        return {"cor_f1": scores.cor_f1, "det_f1": scores.det_f1, "fpr": scores.fpr, "threshold": model.threshold}

    def save(self, model: SoftMaskedBert, directory: Path) -> None:
        model.save(directory, self.tokenizer, dtype=self.save_dtype)
        write_confusion(directory, self.confusion)


def _initial_corrector(path: str, tokenizer, kind: str, prior: float, residual_init: float = 1.0) -> SoftMaskedBert:
    """A corrector directory goes on training as it is (detector included), e.g. the paper's
    SIGHAN fine-tuning after synthetic pretraining; any other BERT gets a new detector, whose
    output starts at the data's error rate ``prior``, and whose residual weight at ``residual_init``."""
    if modelio.Manifest.read(Path(path)).kind == "corrector":
        net = SoftMaskedBert.load(path)
        if net.kind != kind:
            raise BertkitError(f"{path} is a {net.kind} corrector; training it as {kind} would drop or invent its detector")
        if kind == "soft-masked" and residual_init != 1.0:
            log(f"{path} is a trained corrector: it keeps its residual weight {net.residual_scale.item():.3f} (--residual-init is for new ones)")
        return net
    if tokenizer.mask_token_id is None:
        raise BertkitError(f"{path}: the tokenizer has no [MASK] token, which soft masking needs")
    net = SoftMaskedBert(modelio.load_model(path, BertForMaskedLM, dtype=torch.float32), tokenizer.mask_token_id, kind,
                         residual_init=residual_init)
    net.init_detector_prior(prior)
    return net


def run_correct_training(train_path: str | None, synthetic: Sequence[str], dev_path: str | None, model: str | None,
                         cfg: TrainConfig, kind: str = "soft-masked", max_length: int = 128,
                         corruption: CorruptionOptions = CorruptionOptions(), save_dtype: torch.dtype | None = None,
                         detector_lr: float = 1.0,
                         residual_init: float = 1.0) -> dict:
    """Fine-tune a BERT checkpoint into a spelling corrector with the shared trainer; the parts
    soft masking adds (detection network, residual weight) learn at ``detector_lr`` times the
    encoder's rate."""
    if kind == "plain" and (detector_lr != 1.0 or residual_init != 1.0):
        raise BertkitError("--detector-lr and --residual-init apply to the soft-masked corrector; "
                           "the plain baseline has neither detector nor residual")
    path = modelio.resolve_model(model)
    tokenizer = modelio.load_tokenizer(path)
    max_chars = max_length - 2
    train = (read_correction_pairs(train_path) if train_path else []) + read_synthetic(synthetic, max_chars)
    if not train:
        raise BertkitError("no training data: give a source<TAB>target file and/or --synthetic text files")
    dev = read_correction_pairs(dev_path) if dev_path else []
    torch.manual_seed(cfg.seed)
    net = _initial_corrector(path, tokenizer, kind, error_rate(train, corruption.rate), residual_init)
    if max_length > net.mlm.config.max_position_embeddings:
        raise BertkitError(f"--max-length {max_length} exceeds the model's {net.mlm.config.max_position_embeddings} positions")
    confusion = ConfusionSets.build(tokenizer.get_vocab(), Path(corruption.confusion_dir or SHARED_CONFUSION))
    corruptor = Corruptor(confusion, list(tokenizer.get_vocab()), rate=corruption.rate, phonetic=corruption.phonetic,
                          visual=corruption.visual, random_share=corruption.random_share)
    task = CorrectTask(net, tokenizer, train, dev, corruptor, max_chars, save_dtype=save_dtype,
                       confusion=confusion.merged())
    n_synth = sum(p.source is None for p in train)
    log(f"{kind} corrector: {len(train) - n_synth} sentence pairs, {n_synth} synthetic sentences, {len(dev)} dev pairs")
    if dev:
        cfg.metric = cfg.metric or "cor_f1"
    if kind == "soft-masked" and detector_lr != 1.0:
        cfg.lr_scale = {prefix: detector_lr for prefix in NEW_PARTS}
    return Trainer(task, task.examples, cfg).fit()
