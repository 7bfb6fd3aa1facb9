"""Metrics shared by the techniques: classification, semantic similarity, spelling correction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np


def accuracy(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[Hashable], pred: Sequence[Hashable], labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean of per-label F1 over ``labels`` (default: every label in gold or pred)."""
    _same_length(gold, pred)
    labels = list(labels) if labels is not None else sorted(set(gold) | set(pred), key=str)
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        scores.append(f1(_ratio(tp, tp + fp), _ratio(tp, tp + fn)))
    return float(np.mean(scores)) if scores else 0.0


def rank(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks."""
    _same_length(a, b)
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom else 0.0


@dataclass
class CscScores:
    det_p: float
    det_r: float
    det_f1: float
    cor_p: float
    cor_r: float
    cor_f1: float
    fpr: float
    char_det_p: float
    char_det_r: float
    char_det_f1: float
    char_cor_p: float
    char_cor_r: float
    char_cor_f1: float


def csc_scores(sources: Sequence[str], targets: Sequence[str], predictions: Sequence[str]) -> CscScores:
    """SIGHAN spelling-correction scores, sentence level (strict) and character level.

    Sentence level, as most CSC papers report it (e.g. SpellGCN, Soft-Masked BERT's tables):
    - detection is right for a sentence when the set of positions the system changed equals the
      set of erroneous positions, and there is at least one; correction additionally needs the
      output to equal the target;
    - precision = right sentences / sentences the system changed (every change counts, on
      correct sentences too); recall = right sentences / sentences with errors;
    - FPR = correct sentences the system changed / correct sentences.
    Character level: detection P/R over changed vs erroneous positions; a correction is a
    changed position that is erroneous and now holds the target character.
    Sentences must keep their length (SIGHAN's substitution errors).
    """
    changed = errors = det_right = cor_right = 0
    correct_sentences = false_alarms = 0
    c_pred = c_gold = c_det = c_cor = 0
    for src, tgt, hyp in _aligned(sources, targets, predictions):
        gold = {i for i, (s, t) in enumerate(zip(src, tgt)) if s != t}
        pred = {i for i, (s, h) in enumerate(zip(src, hyp)) if s != h}
        changed += bool(pred)
        errors += bool(gold)
        if gold and pred == gold:
            det_right += 1
            cor_right += hyp == tgt
        if not gold:
            correct_sentences += 1
            false_alarms += bool(pred)
        c_pred += len(pred)
        c_gold += len(gold)
        c_det += len(pred & gold)
        c_cor += sum(hyp[i] == tgt[i] for i in pred & gold)
    det_p, det_r = _ratio(det_right, changed), _ratio(det_right, errors)
    cor_p, cor_r = _ratio(cor_right, changed), _ratio(cor_right, errors)
    cd_p, cd_r = _ratio(c_det, c_pred), _ratio(c_det, c_gold)
    cc_p, cc_r = _ratio(c_cor, c_pred), _ratio(c_cor, c_gold)
    return CscScores(
        det_p, det_r, f1(det_p, det_r), cor_p, cor_r, f1(cor_p, cor_r), _ratio(false_alarms, correct_sentences),
        cd_p, cd_r, f1(cd_p, cd_r), cc_p, cc_r, f1(cc_p, cc_r),
    )


def correction_outcomes(sources: Sequence[str], targets: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """Per sentence, the three counts behind sentence-level correction P/R (as in `csc_scores`):
    changed by the system, has errors, fully corrected.  Shape (sentences, 3), 0/1."""
    return np.array([(hyp != src, tgt != src, tgt != src and hyp == tgt)
                     for src, tgt, hyp in _aligned(sources, targets, predictions)], dtype=np.int64).reshape(-1, 3)


def paired_bootstrap_cor_f1(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap over sentences (Koehn 2004) of sentence-level correction F1, system a minus
    system b, from two `correction_outcomes` of the same test set: the 95% interval of the
    difference and the share of resamples in which a scores higher."""
    if a.shape != b.shape:
        raise ValueError(f"outcomes differ in shape: {a.shape} vs {b.shape}")
    if not len(a):
        raise ValueError("no sentences to resample")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))

    def f1s(outcomes):
        changed, errors, right = (outcomes[:, k][idx].sum(1) for k in range(3))
        p, r = right / np.maximum(changed, 1), right / np.maximum(errors, 1)
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)

    diff = f1s(a) - f1s(b)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {"diff_ci95": (float(lo), float(hi)), "a_better": float((diff > 0).mean())}


def _aligned(sources: Sequence[str], targets: Sequence[str], predictions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(source, target, prediction) triples, each of one length (SIGHAN's substitution errors)."""
    _same_length(sources, targets)
    _same_length(sources, predictions)
    triples = list(zip(sources, targets, predictions))
    for src, tgt, hyp in triples:
        if not (len(src) == len(tgt) == len(hyp)):
            raise ValueError(f"source, target and prediction differ in length: {src!r} {tgt!r} {hyp!r}")
    return triples


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} vs {len(b)}")
