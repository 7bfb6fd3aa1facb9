"""The spelling-correction runner: corrects lines in input order (any length), scores on SIGHAN
pairs, and tunes the threshold on dev.  See :mod:`.model` for the method."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from ..core import modelio
from ..core.device import module_device, use_bf16
from ..core.errors import BertkitError
from ..core.files import write_text_atomic
from ..core.metrics import CscScores, csc_scores
from ..core.progress import log
from ..core.runner import Runner
from ..core.textio import map_in_order
from .confusion import SHARED_CONFUSION, ConfusionSets, is_chinese
from .data import CharVocab, CharWindow, Pair, pad_ids, windows
from .model import SoftMaskedBert, save_threshold

CONFUSION_FILE = "confusion.tsv"  # char<TAB>candidates: what decoding may replace each character with
CANDIDATES = ("confusion", "all")
DEFAULT_CORRECTOR = "bertkit-zh-csc"
# 0.005 .. 0.04, then 0.05 .. 0.95: confusion-set decoding scores a candidate under the full
# softmax, so a small model's right corrections can have probabilities of a few percent (the
# shipped corrector's dev optimum sat at the old floor, 0.05)
THRESHOLD_GRID = [0.005, 0.01, 0.02, 0.03, 0.04] + [round(0.05 * i, 2) for i in range(1, 20)]


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


class Corrector(Runner):
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
        self.autocast = use_bf16(compute)
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
        self.candidates = candidates
        self.path: str | None = None  # the directory it was loaded from

    @classmethod
    def load(cls, path: str | None = None, candidates: str = "confusion", **options) -> "Corrector":
        path = modelio.resolve_model(path, default=DEFAULT_CORRECTOR)
        SoftMaskedBert.manifest(path)  # not a corrector: say so before building confusion sets
        tokenizer = modelio.load_tokenizer(path)
        confusion = read_confusion(Path(path), tokenizer) if candidates == "confusion" else None
        runner = cls(SoftMaskedBert.load(path), tokenizer, candidates=candidates, confusion=confusion, **options)
        runner.path = path
        return runner

    def scores(self, pairs: Sequence[Pair], tune: bool = False) -> CscScores:
        """SIGHAN scores on ``pairs`` at this runner's threshold, or with ``tune`` at the grid
        threshold with the best correction F1, which becomes this runner's threshold (save it with
        :meth:`save_threshold`)."""
        sources, targets = [p.source for p in pairs], [p.target for p in pairs]
        if tune:
            self.threshold, scores = tune_threshold(self, sources, targets)
            return scores
        return csc_scores(sources, targets, [text for text, _ in self.correct(sources)])

    def evaluate(self, pairs: Sequence[Pair], tune: bool = False) -> dict:
        """:meth:`scores` as the dict ``bertkit eval`` prints (scores to 4 decimals)."""
        scores = self.scores(pairs, tune)
        return ({k: round(v, 4) for k, v in asdict(scores).items()}
                | {"n": len(pairs), "threshold": self.threshold, "candidates": self.candidates})

    def save_threshold(self, path: str | None = None) -> None:
        """Store this runner's threshold as the default of the corrector directory ``path`` (by
        default the one it was loaded from)."""
        if (path or self.path) is None:
            raise BertkitError("this corrector was not loaded from a directory: name one to save the threshold in")
        save_threshold(path or self.path, self.threshold)

    def correct(self, texts: Iterable[str]) -> Iterator[tuple[str, list[Change]]]:
        yield from map_in_order(texts, self._correct_batch, length=len, batch_size=self.batch_size)

    def _correct_batch(self, texts: Sequence[str]) -> list[tuple[str, list[Change]]]:
        wins = []
        for li, text in enumerate(texts):
            pos = self.chars.positions(text)
            for s, e, lo, hi in windows(len(pos), self.window):
                wins.append(CharWindow(li, pos[s:e], lo, hi))
        changes: list[list[Change]] = [[] for _ in texts]
        for start in range(0, len(wins), self.batch_size):
            chunk = [w for w in wins[start : start + self.batch_size] if w.chars]
            if chunk:
                self._predict(texts, chunk, changes)
        return [(apply_changes(text, found), sorted(found, key=lambda c: c.position)) for text, found in zip(texts, changes)]

    def _predict(self, texts, wins: list[CharWindow], changes: list[list[Change]]) -> None:
        ids = [[self.chars.id(texts[w.line][p]) for p in w.chars] for w in wins]
        batch = pad_ids(ids, self.chars)
        device = module_device(self.model)
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


def change_record(text: str, changes: Sequence[Change]) -> str:
    return json.dumps({"text": text, "changes": [c.as_dict() for c in changes]}, ensure_ascii=False)
