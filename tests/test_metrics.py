
import pytest

from bertkit.core.metrics import (accuracy, correction_outcomes, csc_scores, macro_f1, paired_bootstrap_cor_f1, rank,
                             spearman)


def test_accuracy_and_macro_f1_by_hand():
    gold = ["a", "a", "b", "c"]
    pred = ["a", "b", "b", "b"]
    assert accuracy(gold, pred) == 0.5
    # a: P=1 R=.5 F=2/3; b: P=1/3 R=1 F=.5; c: F=0
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_rank_averages_ties():
    assert list(rank([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = [0, 1, -1, 0] → 1 - 6*2/(4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_csc_sentence_and_char_level_by_hand():
    sources = ["我爱北经", "他是学声", "今天天气", "明天下雨", "你好吗呀"]
    targets = ["我爱北京", "他是学生", "今天天气", "明天下雨", "你好吗啊"]
    predictions = [
        "我爱北京",  # right position, right correction
        "他是学升",  # right position, wrong correction: detection right, correction wrong
        "今天天汽",  # over-correction of a correct sentence: a false positive
        "明天下雨",  # correct sentence left alone
        "你好吗呀",  # missed error
    ]
    s = csc_scores(sources, targets, predictions)
    # changed: 3 sentences; with errors: 3; detection right: 2; correction right: 1
    assert s.det_p == pytest.approx(2 / 3) and s.det_r == pytest.approx(2 / 3)
    assert s.cor_p == pytest.approx(1 / 3) and s.cor_r == pytest.approx(1 / 3)
    assert s.cor_f1 == pytest.approx(1 / 3)
    assert s.fpr == pytest.approx(1 / 2)
    # characters: predicted 3 positions, 3 gold positions, 2 detected, 1 corrected
    assert s.char_det_p == pytest.approx(2 / 3) and s.char_det_r == pytest.approx(2 / 3)
    assert s.char_cor_p == pytest.approx(1 / 3) and s.char_cor_r == pytest.approx(1 / 3)


def test_csc_partial_detection_is_not_a_sentence_hit():
    s = csc_scores(["ab猫d"], ["abcd"], ["xbcd"])  # fixed the error but also changed 'a'
    assert s.det_p == 0 and s.cor_r == 0
    assert s.char_det_p == pytest.approx(0.5) and s.char_cor_r == pytest.approx(1.0)


def test_csc_rejects_length_change():
    with pytest.raises(ValueError):
        csc_scores(["abc"], ["abc"], ["ab"])


def test_correction_outcomes_agree_with_csc_scores():
    src = ["我爱北门", "天气很号", "你好", "他很高"]
    tgt = ["我爱北京", "天气很好", "你好", "他很高"]
    hyp = ["我爱北京", "天汽很好", "你们", "他很高"]
    o = correction_outcomes(src, tgt, hyp)
    assert o.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]]
    p, r = o[:, 2].sum() / o[:, 0].sum(), o[:, 2].sum() / o[:, 1].sum()
    assert csc_scores(src, tgt, hyp).cor_f1 == pytest.approx(2 * p * r / (p + r))


def test_paired_bootstrap_of_correction_f1():
    src = ["我爱北门"] * 50 + ["你好"] * 50
    tgt = ["我爱北京"] * 50 + ["你好"] * 50
    good = correction_outcomes(src, tgt, ["我爱北京"] * 40 + ["我爱北门"] * 10 + ["你好"] * 50)
    bad = correction_outcomes(src, tgt, ["我爱北京"] * 20 + ["我爱北门"] * 30 + ["你们"] * 10 + ["你好"] * 40)
    same = paired_bootstrap_cor_f1(good, good)
    assert same["diff_ci95"] == (0.0, 0.0) and same["a_better"] == 0.0
    better = paired_bootstrap_cor_f1(good, bad)
    lo, hi = better["diff_ci95"]
    assert 0 < lo < hi and better["a_better"] == 1.0
    assert paired_bootstrap_cor_f1(bad, good)["a_better"] == 0.0
    with pytest.raises(ValueError):
        correction_outcomes(["我爱北门"], ["我爱北京"], ["我爱"])
