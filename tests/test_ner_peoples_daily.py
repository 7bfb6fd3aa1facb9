"""The pure functions of examples/ner_peoples_daily.py (no model, no corpus file)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "ner_peoples_daily.py"
_spec = importlib.util.spec_from_file_location("ner_peoples_daily", SCRIPT)
ner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ner)


def entities(line):
    words, tags, brackets = ner.parse_line(line)
    return [("".join(words[s:e]), kind) for s, e, kind in ner.entity_spans(words, tags, brackets)]


def test_surname_and_given_name_make_one_person():
    line = "中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr"
    assert entities(line) == [("中共中央", "ORG"), ("江泽民", "PER")]


def test_unseparated_list_of_names_is_cut_into_persons():
    assert entities("江/nr  泽民/nr  李/nr  鹏/nr  会见/v") == [("江泽民", "PER"), ("李鹏", "PER")]
    assert entities("陈/nr  方/nr  安生/nr") == [("陈方安生", "PER")]


def test_bracket_compound_is_one_entity_of_its_type():
    assert entities("[中央/n  电视台/n]nt  播出/v") == [("中央电视台", "ORG")]
    # the tokens inside lose their own entity tags; each ns outside is its own LOC
    expected = [("北京大学", "ORG"), ("中国", "LOC"), ("北京", "LOC")]
    assert entities("[北京/ns  大学/n]nt  在/p  中国/ns  北京/ns") == expected
    assert entities("[人民/n  日报/n]nz") == []


def test_bio_tags_of_a_paragraph():
    (sentence,) = ner.paragraph_sentences("江/nr  泽民/nr  在/p  北京/ns  会见/v  [中央/n  电视台/n]nt  。/w")
    assert sentence == [
        ("江", "B-PER"), ("泽", "I-PER"), ("民", "I-PER"), ("在", "O"), ("北", "B-LOC"), ("京", "I-LOC"),
        ("会", "O"), ("见", "O"), ("中", "B-ORG"), ("央", "I-ORG"), ("电", "I-ORG"), ("视", "I-ORG"),
        ("台", "I-ORG"), ("。", "O")]


def test_adjacent_entities_each_begin_with_b():
    (sentence,) = ner.paragraph_sentences("中国/ns  北京/ns")
    assert [tag for _, tag in sentence] == ["B-LOC", "I-LOC", "B-LOC", "I-LOC"]


def test_sentences_end_after_stops_with_their_closing_quote():
    line = "他/r  说/v  ：/w  “/w  好/a  。/w  ”/w  江/nr  泽民/nr  笑/v  了/y  ！/w"
    texts = ["".join(ch for ch, _ in s) for s in ner.paragraph_sentences(line)]
    assert texts == ["他说：“好。”", "江泽民笑了！"]


def test_sentence_split_never_cuts_an_entity():
    words = ["甲", "。", "乙", "。", "丙"]
    assert ner.split_sentences(words, []) == [(0, 2), (2, 4), (4, 5)]
    assert ner.split_sentences(words, [(0, 3, "ORG")]) == [(0, 4), (4, 5)]


def test_long_sentences_are_also_cut_after_semicolons():
    clause = ["字"] * 100
    words = clause + ["；"] + clause + ["。"]
    assert ner.split_sentences(words, []) == [(0, 101), (101, 202)]
    short = ["字"] * 10 + ["；"] + ["字"] * 10 + ["。"]
    assert ner.split_sentences(short, []) == [(0, 22)]


def test_article_starts_need_evidence_of_a_new_article():
    texts = ["标题一", "新华社北京１月１日电正文。", "正文。", "小标题", "正文。",
             "标题二", "本报讯正文。", "正文。", "无标题的新闻", "本报讯又一篇。"]
    assert ner.article_starts(texts) == [0, 5, 8]
    after_credit = ["正文。", "（新华社记者某某摄）", "图片新闻（图片）", "说明。"]
    assert ner.article_starts(after_credit) == [0, 2]
