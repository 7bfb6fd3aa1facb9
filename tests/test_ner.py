"""NER: reading BIO / BIOES / JSONL, span decoding, constrained Viterbi, entity F1, and
`bertkit train --task ner` / `predict` / `eval` end to end on a tiny random model."""

import itertools
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bertkit.core.errors import BertkitError
from bertkit.ner.data import entity_scores, read_ner
from bertkit.ner.model import Entity, Transitions, allowed, label_set, may_end, spans_to_tags, tags_to_spans
from bertkit.ner.runner import NerTagger
from conftest import cli, make_tokenizer, tiny_vocab


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_reads_bio_and_bioes_into_the_same_entities(tmp_path):
    bio = _write(tmp_path / "a.conll", "我\tO\n爱\tO\n北\tB-LOC\n京\tI-LOC\n\n王\tB-PER\n五\tI-PER\n李\tB-PER\n")
    bioes = _write(tmp_path / "b.conll", "我\tO\n爱\tO\n北\tB-LOC\n京\tE-LOC\n\n王\tB-PER\n五\tE-PER\n李\tS-PER\n")
    a, b = read_ner(bio), read_ner(bioes)
    assert (a.scheme, b.scheme) == ("BIO", "BIOES")
    assert [s.text for s in a.sentences] == ["我爱北京", "王五李"]
    assert [s.entities for s in a.sentences] == [s.entities for s in b.sentences] == [
        [Entity(2, 4, "LOC")], [Entity(0, 2, "PER"), Entity(2, 3, "PER")]]
    assert a.types == ["LOC", "PER"] and a.sentences[1].line == 6


def test_adjacent_and_nested_looking_spans_decode_as_written():
    assert tags_to_spans(["B-PER", "I-PER", "B-PER", "B-LOC", "I-LOC"]) == [
        Entity(0, 2, "PER"), Entity(2, 3, "PER"), Entity(3, 5, "LOC")]
    # an ORG whose inside looks like a LOC: the type change ends the ORG (no nesting in BIO)
    assert tags_to_spans(["B-ORG", "I-ORG", "I-LOC", "I-LOC"]) == [Entity(0, 2, "ORG"), Entity(2, 4, "LOC")]
    for scheme in ("BIO", "BIOES"):
        spans = [Entity(0, 1, "PER"), Entity(1, 3, "PER"), Entity(4, 7, "ORG")]
        assert tags_to_spans(spans_to_tags(8, spans, scheme)) == spans


def _legal(tags, scheme):
    return all(allowed(tags[i - 1] if i else None, t, scheme) for i, t in enumerate(tags)) and may_end(tags[-1], scheme)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_constrained_viterbi_is_the_best_legal_sequence_and_never_illegal(scheme):
    labels = label_set(["LOC", "PER"], scheme)
    transitions = Transitions(labels, scheme)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):  # brute force over every sequence
        for _ in range(20):
            scores = np.log(rng.dirichlet(np.ones(len(labels)) * 0.3, size=n))
            best = max((seq for seq in itertools.product(labels, repeat=n) if _legal(seq, scheme)),
                       key=lambda seq: sum(scores[i, labels.index(t)] for i, t in enumerate(seq)))
            assert transitions.viterbi(scores) == list(best)
    for _ in range(200):  # long random sequences, peaked on illegal tags
        scores = np.log(rng.dirichlet(np.ones(len(labels)) * 0.1, size=int(rng.integers(1, 40))))
        assert _legal(transitions.viterbi(scores), scheme)


def test_entity_scores_by_hand():
    gold = [[Entity(0, 2, "PER"), Entity(3, 5, "LOC")], [Entity(1, 3, "ORG")]]
    predicted = [[Entity(0, 2, "PER"), Entity(3, 4, "LOC")], [Entity(1, 3, "ORG"), Entity(4, 5, "PER")]]
    scores = entity_scores(gold, predicted)  # 2 exact hits of 3 gold and 4 predicted
    assert (scores["precision"], scores["recall"], scores["f1"]) == (50.0, 66.67, 57.14)
    assert scores["per_type"]["PER"] == {"precision": 50.0, "recall": 100.0, "f1": 66.67, "n_gold": 1, "n_predicted": 2}
    assert scores["per_type"]["LOC"]["f1"] == 0.0


class _PerCharacterModel(nn.Module):
    """Logits from each token alone (no context): windowed reading must equal reading whole."""

    def __init__(self, labels, vocab_size):
        super().__init__()
        self.config = SimpleNamespace(id2label=dict(enumerate(labels)), num_labels=len(labels), max_position_embeddings=512)
        self.table = nn.Embedding(vocab_size, len(labels))
        torch.nn.init.normal_(self.table.weight, std=3.0)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table(input_ids))


def test_long_lines_are_read_in_windows_and_offsets_map_back_exactly():
    tokenizer = make_tokenizer(tiny_vocab())
    torch.manual_seed(3)
    model = _PerCharacterModel(label_set(["LOC", "PER"], "BIO"), len(tokenizer))
    rng = random.Random(1)
    pool = "北京天安门我爱你好世界的了在是"
    text = " ".join("".join(rng.choice(pool) for _ in range(rng.randint(1, 9))) for _ in range(40))  # ~200 chars, spaces
    windowed = next(NerTagger(model, tokenizer, max_length=10).tagged([text]))[1]
    whole = next(NerTagger(model, tokenizer, max_length=512).tagged([text]))[1]
    assert windowed == whole and len(whole) > 5
    for e in whole:
        piece = text[e.start:e.end]
        assert piece == piece.strip() and piece  # offsets fall on characters, never on the spaces around


def _conll(sentences):
    return "\n\n".join("\n".join(f"{c}\t{t}" for c, t in zip(text, spans_to_tags(len(text), ents, "BIO")))
                       for text, ents in sentences) + "\n"


def _synthetic(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        left = "".join(rng.choice("的了在是我有和") for _ in range(rng.randint(1, 4)))
        name, place = rng.choice(["王五", "李四", "张三"]), rng.choice(["北京", "天安门"])
        out.append((left + name + "在" + place, [Entity(len(left), len(left) + 2, "PER"),
                                                   Entity(len(left) + 3, len(left) + 3 + len(place), "LOC")]))
    return out


def test_train_predict_eval_end_to_end(tiny_model, tmp_path):
    train = _write(tmp_path / "train.conll", _conll(_synthetic(64, 1)))
    dev = _write(tmp_path / "dev.conll", _conll(_synthetic(16, 2)))
    out = tmp_path / "ner"
    cli("train", train, "--task", "ner", "--dev", dev, "-m", str(tiny_model), "-o", str(out), "--epochs", "8",
        "--lr", "3e-3", "--batch-size", "8", check=True)
    scores = json.loads(cli("eval", dev, "-m", str(out), check=True).stdout)  # the task read from the model
    assert scores["f1"] > 60 and set(scores["per_type"]) == {"LOC", "PER"}
    lines = ["我在北京", "", "王五在天安门 " * 30]
    result = cli("predict", "-", "-m", str(out), input="\n".join(lines).encode(), check=True)
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == lines and records[1]["entities"] == []
    for r in records:
        assert all(r["text"][e["start"]:e["end"]] == e["text"] for e in r["entities"])
    assert len(records[2]["entities"]) > 10  # entities found all along a line past the window
    from transformers import AutoModelForTokenClassification

    assert AutoModelForTokenClassification.from_pretrained(out).config.id2label[0] == "O"


@pytest.mark.parametrize("content, name, args, message", [
    ("我\tO\n爱\n", "t.conll", [], "t.conll:2: expected char<TAB>TAG"),
    ("我\tO\n爱\tX-PER\n", "t.conll", [], "t.conll:2: tag 'X-PER' is not O"),
    ("我\tO\n北\tI-LOC\n京\tI-LOC\n\n王\tB-PER\n五\tI-LOC\n", "t.conll", [],
     "t.conll:2: I-LOC after O is not a legal BIO sequence (2 such tags, at lines 2, 6)"),
    ('{"text": "我爱北京", "entities": [{"start": 2, "end": 5, "type": "LOC"}]}\n', "t.jsonl", [],
     "t.jsonl:1: entity [2, 5) LOC falls outside its text of 4 characters"),
    ('{"text": "我爱北京", "entities": [{"start": 1, "end": 3, "type": "LOC"}, {"start": 2, "end": 4, "type": "LOC"}]}\n',
     "t.jsonl", [], "t.jsonl:1: entities [1, 3) LOC and [2, 4) LOC overlap"),
])
def test_bad_training_data_is_one_error_line_with_file_and_line(tiny_model, tmp_path, content, name, args, message):
    path = _write(tmp_path / name, content)
    result = cli("train", path, "--task", "ner", "-m", str(tiny_model), "-o", str(tmp_path / "o"), *args)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err


def test_fix_tags_reads_a_stray_inside_tag_as_an_entity_start(tmp_path):
    path = _write(tmp_path / "t.conll", "我\tO\n北\tI-LOC\n京\tI-LOC\n")
    with pytest.raises(BertkitError):
        read_ner(path)
    assert read_ner(path, fix_tags=True).sentences[0].entities == [Entity(1, 3, "LOC")]


def test_predict_refuses_early_exit_options_on_an_ner_model_and_eval_a_non_ner_model(tiny_model, tmp_path):
    result = cli("eval", _write(tmp_path / "d.conll", "我\tO\n"), "-m", str(tiny_model), "--task", "ner")
    assert result.returncode == 1 and "is not an NER model" in result.stderr.decode()


def test_a_dev_type_the_training_data_never_had_is_refused(tiny_model, tmp_path):
    train = _write(tmp_path / "train.conll", "北\tB-LOC\n京\tI-LOC\n")
    dev = _write(tmp_path / "dev.conll", "王\tB-PER\n五\tI-PER\n")
    result = cli("train", train, "--task", "ner", "--dev", dev, "-m", str(tiny_model), "-o", str(tmp_path / "o"))
    err = result.stderr.decode()
    assert result.returncode == 1 and "dev.conll: entity type PER never occurs in" in err and len(err.splitlines()) == 1
