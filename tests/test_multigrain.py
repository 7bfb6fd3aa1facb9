"""Word lattices for Lattice-BERT (bertkit.multigrain.lattice): units, relations, distances,
segments and segment masking, lexicon files."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
import torch

from bertkit.core.errors import BertkitError
from bertkit.multigrain.lattice import (
    Lexicon,
    Relation,
    Unit,
    build_lattice,
    choose_segments,
    distance_matrices,
    mask_segments,
    positions,
    relation,
    relation_matrix,
    segments,
    top_words,
    word_counts,
)

SENTENCE = "研究生活很充实"
FOUR = ["研究", "研究生", "生活", "充实"]


@pytest.fixture(scope="module")
def four():
    return Lexicon.from_words(FOUR)


def random_case(rng: random.Random):
    """A random sentence over a small alphabet and a random lexicon of words from it."""
    alphabet = "甲乙丙丁戊"
    words = {"".join(rng.choices(alphabet, k=rng.randint(2, 4))) for _ in range(rng.randint(0, 12))}
    text = "".join(rng.choices(alphabet, k=rng.randint(1, 40)))
    return text, Lexicon.from_words(words)


def test_lattice_with_jiebas_dictionary():
    lexicon = Lexicon.jieba()
    assert len(lexicon) > 100_000 and all(len(w) >= 2 for w in lexicon)
    units = build_lattice(SENTENCE, lexicon)
    assert units[: len(SENTENCE)] == [Unit(c, i, i) for i, c in enumerate(SENTENCE)]
    for word in (Unit("研究", 0, 1), Unit("研究生", 0, 2), Unit("生活", 2, 3), Unit("充实", 5, 6)):
        assert word in units
    words = units[len(SENTENCE):]
    assert words == sorted(words, key=lambda u: (u.start, u.end))
    assert all(SENTENCE[u.start : u.end + 1] == u.text and u.text in lexicon for u in words)


def test_lattice_exact(four):
    chars = [Unit(c, i, i) for i, c in enumerate(SENTENCE)]
    words = [Unit("研究", 0, 1), Unit("研究生", 0, 2), Unit("生活", 2, 3), Unit("充实", 5, 6)]
    assert build_lattice(SENTENCE, four) == chars + words
    assert build_lattice("", four) == []
    assert four.max_len == 3 and "研究生" in four and "研" not in four and len(four) == 4


def test_lattice_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        text, lexicon = random_case(rng)
        expected = [Unit(c, i, i) for i, c in enumerate(text)] + [
            Unit(text[s:e + 1], s, e)
            for s in range(len(text))
            for e in range(s + 1, len(text))
            if text[s:e + 1] in lexicon
        ]
        assert build_lattice(text, lexicon) == expected


def test_each_relation(four):
    yan, yanjiu, yanjiusheng, shenghuo = Unit("研", 0, 0), Unit("研究", 0, 1), Unit("研究生", 0, 2), Unit("生活", 2, 3)
    assert relation(yanjiu, shenghuo) == Relation.PRECEDE
    assert relation(shenghuo, yanjiu) == Relation.SUCCEED
    assert relation(yanjiusheng, yanjiu) == Relation.CONTAIN
    assert relation(yanjiu, yanjiusheng) == Relation.CONTAINED
    assert relation(yan, yanjiu) == Relation.CONTAINED
    assert relation(yanjiusheng, shenghuo) == Relation.OVERLAP
    assert relation(shenghuo, yanjiusheng) == Relation.OVERLAP
    assert relation(yanjiu, yanjiu) == Relation.IDENTICAL
    assert relation(yan, Unit("究", 1, 1)) == Relation.PRECEDE  # adjacent, no shared character


def test_relation_matrix_equals_pairwise(four):
    cases = [(SENTENCE, four)] + [random_case(random.Random(seed)) for seed in range(30)]
    for text, lexicon in cases:
        units = build_lattice(text, lexicon)
        matrix = relation_matrix(*positions(units))
        assert matrix.dtype == torch.long and matrix.shape == (len(units), len(units))
        assert matrix.tolist() == [[relation(a, b) for b in units] for a in units]
    units = build_lattice(SENTENCE, four)
    assert set(relation_matrix(*positions(units)).flatten().tolist()) == set(Relation)


def test_relation_matrix_batched(four):
    starts, ends = positions(build_lattice(SENTENCE, four))
    flipped = (6 - ends, 6 - starts)  # the same lattice read right to left
    batched = relation_matrix(torch.stack([starts, flipped[0]]), torch.stack([ends, flipped[1]]))
    assert torch.equal(batched[0], relation_matrix(starts, ends))
    assert torch.equal(batched[1], relation_matrix(*flipped))


def test_distance_matrices_by_hand():
    # units: 研究 (0-1), 生活 (2-3), 研究生 (0-2)
    starts, ends = torch.tensor([0, 2, 0]), torch.tensor([1, 3, 2])
    d = distance_matrices(starts, ends)
    assert d.shape == (4, 3, 3) and d.dtype == torch.long
    # start-start: b.start - a.start
    assert d[0].tolist() == [[0, 2, 0], [-2, 0, -2], [0, 2, 0]]
    # start-end: b.end - a.start
    assert d[1].tolist() == [[1, 3, 2], [-1, 1, 0], [1, 3, 2]]
    # end-start: b.start - a.end
    assert d[2].tolist() == [[-1, 1, -1], [-3, -1, -3], [-2, 0, -2]]
    # end-end: b.end - a.end
    assert d[3].tolist() == [[0, 2, 1], [-2, 0, -1], [-1, 1, 0]]


def test_distances_agree_with_relations():
    for seed in range(20):
        text, lexicon = random_case(random.Random(seed))
        starts, ends = positions(build_lattice(text, lexicon))
        ss, se, es, ee = distance_matrices(starts, ends)
        rel = relation_matrix(starts, ends)
        assert torch.equal(rel == Relation.PRECEDE, es > 0)
        assert torch.equal(rel == Relation.SUCCEED, se < 0)
        assert torch.equal(rel == Relation.IDENTICAL, (ss == 0) & (ee == 0))
        assert torch.equal(rel == Relation.CONTAIN, (ss >= 0) & (ee <= 0) & ~((ss == 0) & (ee == 0)))


def test_segments(four):
    units = build_lattice(SENTENCE, four)
    assert segments(len(SENTENCE), units) == [(0, 3), (4, 4), (5, 6)]
    assert segments(0, []) == []
    assert segments(3, build_lattice("甲乙丙", four)) == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError):
        segments(3, units)


def test_segments_are_maximal_and_uncrossed():
    rng = random.Random(1)
    for _ in range(200):
        text, lexicon = random_case(rng)
        units = build_lattice(text, lexicon)
        segs = segments(len(text), units)
        assert [i for s, e in segs for i in range(s, e + 1)] == list(range(len(text)))
        covers = lambda i: any(u.start <= i < u.end for u in units)  # noqa: E731 (covers i and i+1)
        for s, e in segs:
            assert all(covers(i) for i in range(s, e))  # maximal: every inner join is a word's
            assert e == len(text) - 1 or not covers(e)  # nothing crosses the boundary


def test_masking_never_leaves_an_overlapping_unit_visible():
    rng = random.Random(2)
    masked_chars = total_chars = 0
    for _ in range(300):
        text, lexicon = random_case(rng)
        units = build_lattice(text, lexicon)
        segs = segments(len(text), units)
        chosen = choose_segments(segs, 0.15, generator=rng)
        assert chosen and chosen <= set(range(len(segs)))
        masked = mask_segments(units, segs, chosen)
        hidden = {i for u, m in zip(units, masked) if m for i in range(u.start, u.end + 1)}
        for u, m in zip(units, masked):
            if any(u.start <= i <= u.end for i in hidden):
                assert m, f"{u} shares a masked character but is visible in {text}"
        assert hidden == {i for k in chosen for i in range(segs[k][0], segs[k][1] + 1)}
        masked_chars += len(hidden)
        total_chars += len(text)
    assert 0.12 < masked_chars / total_chars < 0.22


def test_choose_segments_rate_and_seed():
    segs = [(i, i) for i in range(100)]
    assert len(choose_segments(segs, 0.15, generator=random.Random(0))) == 15
    assert choose_segments(segs, 0.0, generator=random.Random(0)) == set()
    assert choose_segments(segs, 1.0, generator=random.Random(0)) == set(range(100))
    assert choose_segments([], 0.5, generator=random.Random(0)) == set()
    assert len(choose_segments([(0, 9)], 0.15, generator=random.Random(0))) == 1  # at least one
    assert choose_segments(segs, generator=random.Random(7)) == choose_segments(segs, generator=random.Random(7))
    with pytest.raises(ValueError):
        choose_segments(segs, 1.5, generator=random.Random(0))


def test_choose_segments_does_not_overshoot():
    segs = [(0, 13)] + [(i, i) for i in range(14, 100)]  # one 14-character segment, 86 single ones
    for seed in range(50):
        chosen = choose_segments(segs, 0.15, generator=random.Random(seed))
        assert sum(segs[k][1] - segs[k][0] + 1 for k in chosen) == 15  # never 14 + singles past 15


def test_mask_segments_refuses_foreign_segments(four):
    units = build_lattice(SENTENCE, four)
    with pytest.raises(ValueError):
        mask_segments(units, [(i, i) for i in range(7)], {0})


def test_lexicon_file_round_trip(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("研究 100 n\n\n研究生 3\n生活\t8 n\n研 5\n   \n充实\n", encoding="utf-8")
    lexicon = Lexicon.from_file(path)
    assert lexicon == Lexicon.from_words(FOUR) and lexicon.max_len == 3
    out = tmp_path / "saved.txt"
    lexicon.save(out)
    assert out.read_text(encoding="utf-8").splitlines() == sorted(FOUR)
    assert Lexicon.from_file(out) == lexicon
    assert sorted(os.listdir(tmp_path)) == ["dict.txt", "saved.txt"]  # no temporary file left


@pytest.mark.parametrize(
    "content, where",
    [
        ("", ""),
        ("\n  \n", ""),
        ("研 1\n究 2\n", ""),  # single characters only: no words
        ("研究 3\n\t生活 2\n", ":2:"),
        ("研究 3\n\n 3 n\n", ":3:"),
    ],
)
def test_lexicon_file_errors(tmp_path, content, where):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BertkitError) as err:
        Lexicon.from_file(path)
    assert f"{path}{where}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["missing.txt", "."])
def test_lexicon_unreadable(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(BertkitError) as err:
        Lexicon.from_file(path)
    assert str(path) in str(err.value)


def test_word_counts_and_top_words(four):
    counts = word_counts([SENTENCE, "研究生研究生活"], four)
    assert counts == Counter({"研究": 3, "研究生": 3, "生活": 2, "充实": 1})
    reordered = Counter(dict(reversed(list(counts.items()))))
    for k, expected in [(0, []), (1, ["研究"]), (2, ["研究", "研究生"]), (3, ["研究", "研究生", "生活"]), (9, FOUR)]:
        assert top_words(counts, k) == Lexicon.from_words(expected)
        assert top_words(reordered, k) == top_words(counts, k)


def test_the_shipped_lattice_model_loads_by_name_in_float32_with_its_words_and_fine_tuning_rate():
    from bertkit.multigrain.io import load_lattice_dir
    from bertkit.multigrain.lattice import build_lattice

    bundle = load_lattice_dir("bertkit-zh-lattice-mini")  # data/models/, stored float16
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())
    assert len(bundle.words) == bundle.model.config.word_vocab_size == 20000
    words = {u.text for u in build_lattice("研究生活很充实", bundle.lexicon) if u.end > u.start}
    assert {"研究", "研究生", "生活", "充实"} <= words
    from bertkit.core import modelio

    path = modelio.resolve_model("bertkit-zh-lattice-mini", layouts=modelio.TASK_LAYOUTS)  # as bertkit train does
    assert modelio.fine_tune_lr(path, "classify")[0] == modelio.fine_tune_lr(path, "ner")[0] == 5e-4  # as benchmarked
