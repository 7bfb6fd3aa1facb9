"""Chinese spelling correction with Soft-Masked BERT (Zhang et al., ACL 2020).

The model (section 2 of the paper):
- detection network: a bidirectional GRU over the input embeddings e_i gives each character an
  error probability p_i = sigmoid(W·h_i + b) (section 2.2);
- soft masking: e'_i = p_i·e_[MASK] + (1 − p_i)·e_i, the input of the correction network, a BERT
  encoder (section 2.3);
- a residual connection adds the input embedding to the last hidden state, h'_i = h^c_i + e_i,
  before the softmax over the vocabulary (section 2.3);
- loss L = λ·L_correction + (1 − λ)·L_detection, λ = 0.8 (section 2.4), both over every
  character position.

Where we deviate, and why:
- e_i is BERT's embedding sum (word + position + segment).  We apply the soft mask to the word
  part before the sum: p·(w_mask + pos) + (1 − p)·(w_i + pos) = (p·w_mask + (1 − p)·w_i) + pos, the
  same vector, so this is the paper's equation, applied before BERT's embedding LayerNorm (the
  paper's e_i is the un-normalised sum; the normalised one is what feeds the GRU and the
  residual, as those are the vectors the encoder itself sees).
- The output layer is the checkpoint's pretrained MLM head (transform + tied decoder) instead of
  a fresh linear layer: with a small BERT trained here, reusing the head's knowledge of which
  characters fit a context matters more than with BERT-base.
- ``kind="plain"`` is the paper's BERT baseline: the same BERT fine-tuned to predict the correct
  character at every position, with no detector, soft mask or residual.
- Decoding defaults to the character's confusion set (``candidates="confusion"``, see
  ``Corrector``); the paper's open-vocabulary decoding is ``candidates="all"``.  A change is made
  only when its probability reaches a threshold, tuned on dev (``tune_threshold``) and stored
  with the model; the paper takes the argmax.
- Synthetic errors are drawn afresh each epoch.  Training follows the paper's two stages
  (section 4.1) with one change: the first stage mixes the SIGHAN pairs into the synthetic data
  (they are our only real errors, and 9.5k pairs against 139k synthetic sentences), and the
  second fine-tunes on the SIGHAN pairs alone, from the saved corrector (``_initial_corrector``).
- The detector runs in float32 outside autocast: the GRU is a small share of the time, and CUDA
  autocast refuses a binary cross-entropy on probabilities.
- The residual carries a learned weight a, h'_i = h^c_i + a·e_i (the paper's a = 1, fixed), and
  ``--residual-init 0`` starts it at 0: our output layer is the pretrained MLM head, whose tied
  decoder scores the input character highly once e_i is added, so the paper's residual makes
  the small model copy its input (equal-steps CPU control in data/models/README.md, after both
  stages: correction F1 on the deduplicated dev, at each model's saved threshold, 22.93 with
  a = 1 fixed, 25.00 learned from 0, 22.78 plain BERT; SIGHAN15 21.82, 28.69, 27.43).
- Training details the paper leaves open: a new detector's output bias starts at the training
  data's error rate (``init_detector_prior``) rather than at p = 0.5; and ``--detector-lr`` lets
  the detector, trained from scratch beside a pretrained encoder, learn faster than it (the
  paper gives one learning rate for the whole model).

Characters are the unit: every non-space character of a line is one token (looked up in the
vocabulary, else [UNK]), so positions map one to one, and only Chinese characters are ever
replaced, by single Chinese characters.  Lines longer than the model's window are corrected in
overlapping windows; each character takes its prediction from the window where it sits most
centrally.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import BertForMaskedLM

from . import modelio
from .confusion import SHARED_CONFUSION, ConfusionSets, Corruptor, is_chinese
from .errors import BertkitError
from .metrics import csc_scores
from .progress import log
from .recompute import RecomputeOptions, setup_recompute
from .textio import map_in_order, read_lines
from .trainer import TrainConfig, Trainer, save_weights, write_json_atomic, write_text_atomic

CORRECTOR_CONFIG = "corrector.json"
CONFUSION_FILE = "confusion.tsv"  # char<TAB>candidates: what decoding may replace each character with
CANDIDATES = ("confusion", "all")
DETECTOR_WEIGHTS = "detector.safetensors"
DEFAULT_CORRECTOR = "bertkit-zh-csc"
KINDS = ("soft-masked", "plain")
NEW_PARTS = ("detector", "residual_scale")  # what soft masking adds to BERT, saved beside it
DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95


class SoftMaskedBert(nn.Module):
    """Detection GRU + soft-masked BERT correction network (or the plain BERT baseline)."""

    def __init__(self, mlm: BertForMaskedLM, mask_id: int, kind: str = "soft-masked", gru_hidden: int | None = None,
                 lam: float = 0.8, residual_init: float = 1.0):
        super().__init__()
        if kind not in KINDS:
            raise BertkitError(f"corrector kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.mlm, self.kind, self.lam = mlm, kind, lam
        self.threshold = DEFAULT_THRESHOLD  # the operating point; training with --dev tunes it
        hidden = mlm.config.hidden_size
        self.gru_hidden = gru_hidden or hidden // 2
        self.mask_id = mask_id
        if kind == "soft-masked":
            self.detector = nn.GRU(hidden, self.gru_hidden, batch_first=True, bidirectional=True)
            self.detector_out = nn.Linear(2 * self.gru_hidden, 1)
            # weight of the residual h'_i = h^c_i + a·e_i; the paper's a = 1, learned here
            self.residual_scale = nn.Parameter(torch.tensor(float(residual_init)))

    def init_detector_prior(self, error_rate: float) -> None:
        """Start a new detector at the training data's error rate instead of p = 0.5.

        With p near 0.5 everywhere the first steps would feed the pretrained encoder half-[MASK]
        embeddings at every position, an input it has never seen (the prior-bias initialisation
        of Lin et al. 2017, "Focal loss", section 3.3).  In our control it made no measurable
        difference by step 200; it is kept as the better-defined start."""
        if self.kind == "soft-masked":
            rate = min(max(error_rate, 1e-4), 0.5)
            with torch.no_grad():
                self.detector_out.bias.fill_(math.log(rate / (1 - rate)))

    def detect(self, embedded: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """p_i, the probability that character i is wrong (padding never reaches a real position)."""
        # float32, outside autocast: cuDNN's GRU and the BCE on p need not take bfloat16
        with torch.autocast(embedded.device.type, enabled=False):
            x = embedded.float()
            # packing needs the lengths on the host: on a GPU that read would stall every step
            states = self._bigru_aligned(x, attention_mask) if x.is_cuda else self._bigru_packed(x, attention_mask)
            return torch.sigmoid(self.detector_out(states).squeeze(-1))

    def _bigru_packed(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.detector(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out

    def _bigru_aligned(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The packed result without host-side lengths: one GRU call over the batch twice, as
        given (right-padded: the forward direction never sees padding before a character) and
        right-aligned (the backward direction starts at the last character); the other half of
        each copy is discarded.  Twice the GRU's arithmetic, no synchronisation."""
        batch, steps = attention_mask.shape
        shift = (steps - attention_mask.sum(1)).unsqueeze(1)  # padding per row, on the device
        t = torch.arange(steps, device=x.device).unsqueeze(0)
        gather = lambda v, idx: v.gather(1, idx.unsqueeze(-1).expand(-1, -1, v.shape[-1]))
        right_aligned = gather(x, (t - shift).clamp(min=0))
        out, _ = self.detector(torch.cat([x, right_aligned]))
        forward, backward = out[:batch, :, : self.gru_hidden], out[batch:, :, self.gru_hidden :]
        backward = gather(backward, (t + shift).clamp(max=steps - 1))
        return torch.cat([forward, backward], -1) * attention_mask.unsqueeze(-1).to(out.dtype)

    def encode(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output layer's input (BERT's last hidden state, plus the weighted residual under soft
        masking) and the detector's error probabilities (None for plain BERT)."""
        bert = self.mlm.bert
        if self.kind == "plain":
            return bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, None
        words = bert.embeddings.word_embeddings(input_ids)
        embedded = bert.embeddings(inputs_embeds=words)  # e_i: what the encoder would see unmasked
        prob = self.detect(embedded, attention_mask)
        mask_word = bert.embeddings.word_embeddings.weight[self.mask_id]
        p = prob.unsqueeze(-1).to(words.dtype)
        soft = p * mask_word + (1 - p) * words
        hidden = bert(inputs_embeds=soft, attention_mask=attention_mask).last_hidden_state
        return hidden + self.residual_scale * embedded, prob

    def forward(self, input_ids, attention_mask, labels=None, detect_labels=None) -> dict[str, torch.Tensor]:
        states, prob = self.encode(input_ids, attention_mask)
        logits = self.mlm.cls(states)
        out = {"logits": logits}
        if prob is not None:
            out["detect_prob"] = prob
        if labels is not None:
            out["loss"] = self.loss(logits, prob, labels, detect_labels, attention_mask)
        return out

    def loss(self, logits, prob, labels, detect_labels, attention_mask) -> torch.Tensor:
        correction = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        if prob is None:
            return correction
        keep = attention_mask.bool()
        with torch.autocast(prob.device.type, enabled=False):  # CUDA autocast refuses BCE on probabilities
            detection = F.binary_cross_entropy(prob.float()[keep], detect_labels.float()[keep])
        return self.lam * correction + (1 - self.lam) * detection

    # ---- persistence: a transformers BertForMaskedLM directory plus the detector beside it

    def save(self, directory: Path, tokenizer, dtype: torch.dtype | None = None) -> None:
        directory = Path(directory)
        modelio.save_pretrained(self.mlm, tokenizer, directory, dtype=dtype)
        meta = {"kind": self.kind, "gru_hidden": self.gru_hidden, "lambda": self.lam, "mask_id": self.mask_id,
                "threshold": self.threshold,
                "paper": "Soft-Masked BERT, Zhang et al., ACL 2020"}
        write_json_atomic(directory / CORRECTOR_CONFIG, meta)
        if self.kind == "soft-masked":  # copies: on a GPU the GRU's weights share one cuDNN buffer
            save_weights(self, directory / DETECTOR_WEIGHTS, prefix=NEW_PARTS, dtype=dtype)

    @classmethod
    def load(cls, path: str) -> "SoftMaskedBert":
        meta_path = Path(path) / CORRECTOR_CONFIG
        if not meta_path.exists():
            raise BertkitError(f"{path} is not a spelling corrector (no {CORRECTOR_CONFIG}); "
                               "train one with `bertkit train --task correct`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            kind, gru_hidden, lam, mask_id = meta["kind"], int(meta["gru_hidden"]), float(meta["lambda"]), int(meta["mask_id"])
        except (ValueError, KeyError, TypeError):
            raise BertkitError(f"{meta_path} is corrupt") from None
        mlm = modelio.load_model(path, BertForMaskedLM, dtype=torch.float32)
        if not 0 <= mask_id < mlm.config.vocab_size:
            raise BertkitError(f"{meta_path}: mask_id {mask_id} is outside the vocabulary")
        model = cls(mlm, mask_id, kind, gru_hidden, lam)
        model.threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
        if kind == "soft-masked":
            try:
                weights = load_file(str(Path(path) / DETECTOR_WEIGHTS))
                model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
            except Exception as exc:
                raise BertkitError(f"cannot load the detector of {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
            # a detector saved before the residual had a learned weight used the paper's fixed 1
            missing = {k for k in model.state_dict() if k.startswith("detector")} - set(weights)
            if missing:
                raise BertkitError(f"{path}/{DETECTOR_WEIGHTS} lacks {', '.join(sorted(missing))}")
        return model


def save_threshold(path: str, threshold: float) -> None:
    """Make ``threshold`` the model's default operating point (in its corrector.json)."""
    meta_path = Path(path) / CORRECTOR_CONFIG
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["threshold"] = threshold
    write_json_atomic(meta_path, meta)


# ---------------------------------------------------------------- characters <-> ids


class CharVocab:
    """One id per character; spaces are not fed to the model but keep their place in the line."""

    def __init__(self, tokenizer):
        self.vocab = tokenizer.get_vocab()
        self.unk = tokenizer.unk_token_id
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.chinese_ids = {i: t for t, i in self.vocab.items() if is_chinese(t)}

    def id(self, ch: str) -> int:
        return self.vocab.get(ch, self.vocab.get(ch.lower(), self.unk))

    def positions(self, text: str) -> list[int]:
        return [i for i, ch in enumerate(text) if not ch.isspace()]


@dataclass
class Change:
    position: int
    original: str
    correction: str
    probability: float
    detection: float | None

    def as_dict(self) -> dict:
        d = {"position": self.position, "original": self.original, "correction": self.correction,
             "probability": round(self.probability, 4)}
        if self.detection is not None:
            d["detection"] = round(self.detection, 4)
        return d


@dataclass
class _Window:
    line: int  # index of the line in the batch being corrected
    chars: list[int]  # positions in the line
    keep_from: int  # this window decides positions chars[keep_from:keep_to]
    keep_to: int


def windows(n: int, size: int) -> list[tuple[int, int, int, int]]:
    """(start, end, keep_from, keep_to) covering n characters; windows overlap by half, and each
    character is decided by the window where it is farthest from an edge."""
    if n <= size:
        return [(0, n, 0, n)]
    stride = size // 2
    starts = list(range(0, n - size, stride)) + [n - size]
    out = []
    for k, s in enumerate(starts):
        lo = 0 if k == 0 else (s + (starts[k - 1] + size)) // 2 - s
        hi = size if k == len(starts) - 1 else (starts[k + 1] + s + size) // 2 - s
        out.append((s, s + size, lo, hi))
    return out


class CandidateTable:
    """For each vocabulary id, the ids decoding may choose from: itself plus its confusion set."""

    def __init__(self, chars: CharVocab, confusion: dict[str, str]):
        rows = []
        for i in range(len(chars.vocab)):
            ch = chars.chinese_ids.get(i)
            cands = [chars.vocab[c] for c in confusion.get(ch, "") if c in chars.vocab and c != ch] if ch else []
            rows.append([i, *dict.fromkeys(cands)])
        width = max(map(len, rows))
        self.ids = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)


def write_confusion(directory: Path, confusion: dict[str, str]) -> None:
    write_text_atomic(Path(directory) / CONFUSION_FILE, "".join(f"{c}\t{cands}\n" for c, cands in confusion.items()))


def read_confusion(path: Path, tokenizer) -> dict[str, str]:
    """The model's saved confusion sets, else ones built now from pypinyin and the shared sets."""
    file = Path(path) / CONFUSION_FILE
    if file.exists():
        rows = (line.split("\t") for line in file.read_text(encoding="utf-8").splitlines() if line)
        return {r[0]: r[1] for r in rows if len(r) == 2}
    log(f"{path} has no {CONFUSION_FILE}: building confusion sets from pypinyin and {SHARED_CONFUSION}")
    return ConfusionSets.build(tokenizer.get_vocab(), SHARED_CONFUSION).merged()


class Corrector:
    """A loaded corrector: corrects lines in input order, any length.

    ``candidates="confusion"`` (the default) lets a character be replaced only by a member of its
    confusion set (same or similar pinyin, similar shape), as confusion-set-guided correctors do
    (e.g. Wang et al. 2019, "Confusionset-guided Pointer Networks"); the paper's decoding,
    ``"all"``, takes the best Chinese character of the whole vocabulary.  With a small BERT the
    constraint removes most wrong corrections (see the README's figures).
    """

    def __init__(self, model: SoftMaskedBert, tokenizer, threshold: float | None = None, batch_size: int = 64,
                 max_length: int | None = None, compute: str = "float32", candidates: str = "all",
                 confusion: dict[str, str] | None = None):
        if candidates not in CANDIDATES:
            raise BertkitError(f"--candidates must be one of {', '.join(CANDIDATES)}, not {candidates!r}")
        if candidates == "confusion" and confusion is None:
            raise BertkitError("confusion-set decoding needs the confusion sets")
        self.model = model.eval()
        self.autocast = modelio.use_bf16(compute)
        self.chars = CharVocab(tokenizer)
        self.threshold = model.threshold if threshold is None else threshold
        self.batch_size = batch_size
        limit = model.mlm.config.max_position_embeddings
        self.window = min(max_length or 128, limit) - 2
        if self.window < 4:
            raise BertkitError("--max-length is too small for spelling correction")
        self._chinese = torch.zeros(model.mlm.config.vocab_size, dtype=torch.bool)
        self._chinese[list(self.chars.chinese_ids)] = True
        self.table = CandidateTable(self.chars, confusion) if candidates == "confusion" else None

    @classmethod
    def load(cls, model: str | None, candidates: str = "confusion", **kwargs) -> "Corrector":
        path = modelio.resolve_model(model, default=DEFAULT_CORRECTOR)
        tokenizer = modelio.load_tokenizer(path)
        confusion = read_confusion(Path(path), tokenizer) if candidates == "confusion" else None
        return cls(SoftMaskedBert.load(path), tokenizer, candidates=candidates, confusion=confusion, **kwargs)

    def correct(self, texts: Iterable[str]) -> Iterator[tuple[str, list[Change]]]:
        yield from map_in_order(texts, self._correct_batch, length=len, batch_size=self.batch_size)

    def _correct_batch(self, texts: Sequence[str]) -> list[tuple[str, list[Change]]]:
        wins = []
        for li, text in enumerate(texts):
            pos = self.chars.positions(text)
            for s, e, lo, hi in windows(len(pos), self.window):
                wins.append(_Window(li, pos[s:e], lo, hi))
        changes: list[list[Change]] = [[] for _ in texts]
        for start in range(0, len(wins), self.batch_size):
            chunk = [w for w in wins[start : start + self.batch_size] if w.chars]
            if chunk:
                self._predict(texts, chunk, changes)
        return [(apply_changes(text, found), sorted(found, key=lambda c: c.position)) for text, found in zip(texts, changes)]

    def _predict(self, texts, wins: list[_Window], changes: list[list[Change]]) -> None:
        ids = [[self.chars.id(texts[w.line][p]) for p in w.chars] for w in wins]
        batch = pad_ids(ids, self.chars)
        device = next(self.model.parameters()).device
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            states, detect = self.model.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            logits = self.model.mlm.cls(states[:, 1:-1]).float().cpu()
        if self.table is None:  # only ever write a Chinese character: the best of those
            best_logit, best = logits.masked_fill(~self._chinese, float("-inf")).max(-1)
            best_p = (best_logit - logits.logsumexp(-1)).exp()
        else:
            best, best_p = self._best_candidates(logits, batch["input_ids"][:, 1:-1])
        detect = detect.float().cpu() if detect is not None else None
        for b, w in enumerate(wins):
            text = texts[w.line]
            for k in range(w.keep_from, w.keep_to):
                pos = w.chars[k]
                ch, new_id = text[pos], int(best[b, k])
                if not is_chinese(ch) or new_id == ids[b][k] or float(best_p[b, k]) < self.threshold:
                    continue
                new = self.chars.chinese_ids.get(new_id)
                if new and new != ch:
                    p_det = float(detect[b, k + 1]) if detect is not None else None
                    changes[w.line].append(Change(pos, ch, new, float(best_p[b, k]), p_det))

    def _best_candidates(self, logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Confusion-set decoding: at each position the best of the character itself and its
        confusion set, and its probability under the full softmax.  The softmax's normaliser is
        computed only where that best is another character (elsewhere nothing changes and the
        probability is left at 0): over the whole vocabulary at every position it took a sixth
        of a CPU forward pass."""
        cand = self.table.ids[input_ids]
        best_logit, k = logits.gather(-1, cand).max(-1)
        best = cand.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        best_p = torch.zeros_like(best_logit)
        changed = best != input_ids
        if changed.any():
            best_p[changed] = (best_logit[changed] - logits[changed].logsumexp(-1)).exp()
        return best, best_p


def apply_changes(text: str, changes: Iterable[Change]) -> str:
    chars = list(text)
    for c in changes:
        chars[c.position] = c.correction
    return "".join(chars)


def pad_ids(rows: Sequence[list[int]], chars: CharVocab, labels: Sequence[list[int]] | None = None,
            detect: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """[CLS] ids [SEP], right-padded; labels are -100 and detection targets 0 off the characters."""
    width = max(len(r) for r in rows) + 2
    input_ids = torch.full((len(rows), width), chars.pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if labels is not None:
        batch["labels"] = torch.full((len(rows), width), -100, dtype=torch.long)
        batch["detect_labels"] = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row)
        input_ids[b, : n + 2] = torch.tensor([chars.cls, *row, chars.sep])
        attention[b, : n + 2] = 1
        if labels is not None:
            batch["labels"][b, 1 : n + 1] = torch.tensor(labels[b])
            batch["detect_labels"][b, 1 : n + 1] = torch.tensor(detect[b])
    return batch


# ---------------------------------------------------------------- data and training


@dataclass
class Pair:
    source: str | None  # None: a correct sentence to corrupt afresh at every epoch
    target: str
    lineno: int = 0


def read_pairs(path: str) -> list[Pair]:
    """``source<TAB>target`` lines (SIGHAN style, substitutions only); an optional header is skipped."""
    pairs = []
    for lineno, line in read_lines(path):
        if lineno == 1 and line.strip().lower() == "source\ttarget":
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise BertkitError(f"{path}:{lineno}: expected source<TAB>target, found {len(cells)} column(s)")
        src, tgt = cells
        if len(src) != len(tgt):
            raise BertkitError(f"{path}:{lineno}: source and target differ in length ({len(src)} vs {len(tgt)}); "
                               "spelling pairs must be character-for-character substitutions")
        if src.strip():
            pairs.append(Pair(src, tgt, lineno))
    if not pairs:
        raise BertkitError(f"{path} has no sentence pairs")
    return pairs


SENTENCE_END = "。！？!?；;"


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Cut a long line at sentence ends into pieces of at most ``max_chars`` characters."""
    pieces, current = [], ""
    for ch in text:
        current += ch
        if ch in SENTENCE_END or len(current) >= max_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if sum(map(is_chinese, p)) >= 4]


def read_synthetic(paths: Sequence[str], max_chars: int) -> list[Pair]:
    """Correct sentences from plain text files, to be corrupted on the fly."""
    out = []
    for path in paths:
        for lineno, line in read_lines(path):
            out.extend(Pair(None, s, lineno) for s in split_sentences(line, max_chars))
    return out


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
        self.examples = [piece for pair in train for piece in _chunks(pair, max_chars)]

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
        model keeps that threshold as its operating point (saved in corrector.json)."""
        if not self.dev:
            return {}
        sources, targets = [p.source for p in self.dev], [p.target for p in self.dev]
        # model selection uses the paper's open-vocabulary decoding; `bertkit correct --eval DEV
        # --tune` re-tunes the threshold for whichever decoding the user runs
        corrector = Corrector(model, self.tokenizer, max_length=self.max_length, candidates="all")
        model.threshold, scores = tune_threshold(corrector, sources, targets)
        return {"cor_f1": scores.cor_f1, "det_f1": scores.det_f1, "fpr": scores.fpr, "threshold": model.threshold}

    def save(self, model: SoftMaskedBert, directory: Path) -> None:
        model.save(directory, self.tokenizer, dtype=self.save_dtype)
        write_confusion(directory, self.confusion)


def tune_threshold(corrector: "Corrector", sources: Sequence[str], targets: Sequence[str]):
    """(threshold, scores): the grid threshold with the best sentence-level correction F1 on these
    pairs; one pass of the model, then every threshold filters the same proposed changes."""
    saved, corrector.threshold = corrector.threshold, 0.0
    try:
        found = [changes for _, changes in corrector.correct(sources)]
    finally:
        corrector.threshold = saved
    best = None
    for t in THRESHOLD_GRID:
        hyps = [apply_changes(src, [c for c in changes if c.probability >= t]) for src, changes in zip(sources, found)]
        scores = csc_scores(sources, targets, hyps)
        if best is None or scores.cor_f1 >= best[1].cor_f1:  # ties: the surer, higher threshold
            best = (t, scores)
    return best


def _chunks(pair: Pair, max_chars: int) -> list[Pair]:
    if len(pair.target) <= max_chars:
        return [pair]
    return [Pair(None if pair.source is None else pair.source[i : i + max_chars], pair.target[i : i + max_chars],
                 pair.lineno) for i in range(0, len(pair.target), max_chars)]


@dataclass
class CorruptionOptions:
    rate: float = 0.15
    phonetic: float = 0.8
    visual: float = 0.0
    random_share: float = 0.2
    confusion_dir: str | None = None


def error_rate(train: Sequence[Pair], corrupt_rate: float) -> float:
    """Share of the training characters that are wrong: counted in the pairs, expected in the
    synthetic sentences (``corrupt_rate`` of their Chinese characters)."""
    wrong = chars = 0.0
    for pair in train:
        chars += len(pair.target)
        if pair.source is None:
            wrong += corrupt_rate * sum(map(is_chinese, pair.target))
        else:
            wrong += sum(a != b for a, b in zip(pair.source, pair.target))
    return wrong / max(chars, 1.0)


def _initial_corrector(path: str, tokenizer, kind: str, prior: float, residual_init: float = 1.0) -> SoftMaskedBert:
    """A corrector directory goes on training as it is (detector included), e.g. the paper's
    SIGHAN fine-tuning after synthetic pretraining; any other BERT gets a new detector, whose
    output starts at the data's error rate ``prior``, and whose residual weight at ``residual_init``."""
    if (Path(path) / CORRECTOR_CONFIG).exists():
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
                         recompute: RecomputeOptions = RecomputeOptions(), detector_lr: float = 1.0,
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
    train = (read_pairs(train_path) if train_path else []) + read_synthetic(synthetic, max_chars)
    if not train:
        raise BertkitError("no training data: give a source<TAB>target file and/or --synthetic text files")
    dev = read_pairs(dev_path) if dev_path else []
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
    setup_recompute(task, task.examples, cfg, recompute)
    return Trainer(task, task.examples, cfg).fit()


def change_record(text: str, changes: Sequence[Change]) -> str:
    return json.dumps({"text": text, "changes": [c.as_dict() for c in changes]}, ensure_ascii=False)
