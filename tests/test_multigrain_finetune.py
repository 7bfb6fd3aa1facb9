"""Lattice-BERT fine-tuned through the kit's own commands (bertkit.multigrain.heads, .encoding):
`bertkit train` (classification, --task ner), `predict` and `eval` from a tiny Lattice-BERT directory
(a conftest char BERT carried over by from_char_bert), models that load back to the same outputs,
lattices really built at inference, and one-line refusals from the commands that cannot use them."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from bertkit.classify.runner import Classifier
from bertkit.core import modelio
from bertkit.core.encoding import TextEncoder
from bertkit.multigrain.encoding import LatticeCharEncoder, LatticeEncoder
from bertkit.multigrain.heads import LatticeForSequenceClassification, LatticeForTokenClassification
from bertkit.multigrain.io import load_lattice_dir, save_lattice_dir
from bertkit.multigrain.model import from_char_bert
from bertkit.ner.model import Entity, spans_to_tags
from bertkit.ner.runner import NerTagger
from conftest import cli

WORDS = ["球队", "比赛", "冠军", "进球", "股票", "基金", "银行", "利率", "市场", "北京", "天安门"]
LONG = "球队比赛冠军进球股票基金银行利率市场" * 12  # 216 characters: 4 windows of the tiny model's 62


def one_error_line(result) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def lattice_dir(tiny_model, tmp_path_factory):
    """A Lattice-BERT directory as `bertkit pretrain --multigrain` leaves one (without its steps)."""
    from transformers import BertForMaskedLM

    tokenizer = modelio.load_tokenizer(str(tiny_model))
    bert = BertForMaskedLM.from_pretrained(tiny_model)
    model = from_char_bert(bert, tokenizer.get_vocab(), {w: i for i, w in enumerate(WORDS)})
    return save_lattice_dir(model, tokenizer, WORDS, tmp_path_factory.mktemp("lattice") / "base")


def _train_keeping_the_model(*args):
    """`bertkit train ARGS` through the real CLI; the model it saved last, kept in memory."""
    saved, real = [], modelio.save_model

    def keep(model, *rest, **kwargs):
        saved.append(copy.deepcopy(model))
        return real(model, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modelio, "save_model", keep)
        result = cli("train", *args, check=True)
    return saved[-1].eval(), result.stderr.decode()


@pytest.fixture(scope="module")
def classifier(lattice_dir, news_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lattice-clf") / "clf"
    model, _ = _train_keeping_the_model(str(news_data[0]), "--dev", str(news_data[1]), "-m", str(lattice_dir),
                                        "-o", str(out), "--epochs", "4", "--batch-size", "16", "--lr", "3e-3")
    return out, model


def _conll(n: int, seed: int) -> str:
    """Sentences like 的了银行在北京: an ORG then a LOC, both lexicon words of the tiny model."""
    rng, blocks = random.Random(seed), []
    for _ in range(n):
        left = "".join(rng.choice("的了是我有和") for _ in range(rng.randint(1, 4)))
        org, place = rng.choice(["银行", "基金", "球队"]), rng.choice(["北京", "天安门"])
        text = left + org + "在" + place
        entities = [Entity(len(left), len(left) + 2, "ORG"), Entity(len(left) + 3, len(text), "LOC")]
        blocks.append("\n".join(f"{c}\t{t}" for c, t in zip(text, spans_to_tags(len(text), entities, "BIO"))))
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def tagger(lattice_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("lattice-ner")
    (d / "train.conll").write_text(_conll(48, 1), encoding="utf-8")
    (d / "dev.conll").write_text(_conll(16, 2), encoding="utf-8")
    model, _ = _train_keeping_the_model(str(d / "train.conll"), "--task", "ner", "--dev", str(d / "dev.conll"),
                                        "-m", str(lattice_dir), "-o", str(d / "ner"), "--epochs", "6",
                                        "--batch-size", "8", "--lr", "3e-3")
    return d, model


# ---------------------------------------------------------------- classification


def test_classifier_trains_predicts_and_evaluates_through_the_cli(classifier, news_data):
    out, model = classifier
    assert isinstance(model, LatticeForSequenceClassification)
    manifest = modelio.Manifest.read(out)
    assert (manifest.kind, manifest.architecture) == ("classifier", "lattice-bert")
    assert not (out / "config.json").exists() and (out / "words.txt").read_text(encoding="utf-8").split() == WORDS
    scores = json.loads(cli("eval", str(news_data[1]), "-m", str(out), check=True).stdout)  # task read from the model
    assert scores["n"] == 32 and scores["accuracy"] >= 0.9
    lines = ["球队比赛冠军进球", "", "股票 基金 abc 2021", LONG]
    result = cli("predict", "-", "-m", str(out), input="\n".join(lines).encode(), check=True)
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(records) == len(lines)  # line-aligned: the blank and the long line each give one
    assert all(set(r["probs"]) == {"finance", "sports"} and abs(sum(r["probs"].values()) - 1) < 1e-4 for r in records)
    assert records[0]["label"] == "sports"
    from bertkit.classify.runner import Classifier  # the long line: its windows' mean, as the runner gives it

    runner = Classifier.load(str(out))
    expected = next(iter(runner.predict_proba([LONG])))
    assert all(abs(records[3]["probs"][label] - float(p)) < 1e-4 for label, p in zip(runner.labels, expected))


def test_saved_classifier_gives_the_trained_models_outputs(classifier, tiny_model):
    out, trained = classifier
    texts = ["球队比赛冠军进球", "", "股票基金银行利率", LONG, ("球队比赛", "股票市场")]
    loaded = Classifier.load(str(out))
    assert isinstance(loaded.model, LatticeForSequenceClassification) and loaded.model.words == WORDS
    again = torch.stack(list(loaded.predict_proba(texts)))
    before = torch.stack(list(Classifier(trained, loaded.tokenizer).predict_proba(texts)))
    assert torch.equal(again, before)


def test_the_lattice_is_used_a_different_lexicon_gives_different_logits(classifier):
    out, _ = classifier
    runner = Classifier.load(str(out))
    texts = ["球队比赛冠军进球", "股票基金银行利率"]
    words = {u.text for u in runner.encoder.encode(texts[0])[0].units if u.end > u.start}
    assert words == {"球队", "比赛", "冠军", "进球"}
    base = torch.stack(list(runner.predict_proba(texts)))
    for other in (WORDS[1:] + WORDS[:1], ["人民", "你好"], []):  # other rows for the same words, other words, none
        runner.model.words = other
        changed = torch.stack(list(Classifier(runner.model, runner.tokenizer).predict_proba(texts)))
        assert not torch.allclose(base, changed, atol=1e-6), other
    runner.model.words = list(WORDS)
    assert torch.equal(base, torch.stack(list(Classifier(runner.model, runner.tokenizer).predict_proba(texts))))


def test_without_words_a_lattice_input_is_berts_input(tiny_model):
    tokenizer = modelio.load_tokenizer(str(tiny_model))
    bert, lattice = TextEncoder(tokenizer, 16), LatticeEncoder(tokenizer, [], 16)
    for a, b in [("球队比赛", None), ("股票基金银行利率市场北京天安门我爱", None), ("球队比赛冠军进球", "股票市场"),
                 ("", None), ("球队比赛冠军进球股票基金银行利率", "市场北京天安门我爱你好")]:
        ours, theirs = lattice.encode(a, b), bert.encode(a, b)
        assert len(ours) == len(theirs) and [len(w) for w in ours] == [len(w) for w in theirs]
        x, y = lattice.pad_batch(ours), bert.pad_batch(theirs)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(x[key], y[key]), (a, b, key)
        assert torch.equal(x["starts"], torch.arange(x["starts"].shape[1]).expand_as(x["starts"]) * x["attention_mask"])
    assert lattice.truncated_pairs == bert.truncated_pairs == 1


def test_a_pair_keeps_each_sides_words_apart(tiny_model):
    tokenizer = modelio.load_tokenizer(str(tiny_model))
    window = LatticeEncoder(tokenizer, WORDS, 32).encode("市场球队", "比赛")[0]  # 场球 and 队比 are not words
    words = [(u.text, u.start, u.end) for u in window.units if u.end > u.start]
    assert words == [("市场", 0, 1), ("球队", 2, 3), ("比赛", 5, 6)]  # b starts after [SEP] at position 4
    batch = LatticeEncoder(tokenizer, WORDS, 32).pad_batch([window])
    sep = tokenizer.sep_token_id
    assert batch["input_ids"][0, 5] == sep and batch["token_type_ids"][0].tolist() == [0] * 6 + [1, 1] + [0, 0, 1] + [1]


# ---------------------------------------------------------------- NER


def test_ner_trains_predicts_and_evaluates_through_the_cli(tagger):
    d, model = tagger
    out = d / "ner"
    assert isinstance(model, LatticeForTokenClassification)
    assert modelio.Manifest.read(out).kind == "ner"
    scores = json.loads(cli("eval", str(d / "dev.conll"), "-m", str(out), check=True).stdout)
    assert scores["f1"] > 60 and set(scores["per_type"]) == {"LOC", "ORG"}
    lines = ["我在北京", "", "银行 在 天 安门 " * 30]  # spaces, and longer than the 62-character window
    result = cli("predict", "-", "-m", str(out), input="\n".join(lines).encode(), check=True)
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == lines and records[1]["entities"] == []
    for r in records:
        assert all(r["text"][e["start"]:e["end"]] == e["text"] and e["text"] == e["text"].strip() for e in r["entities"])
    assert len(records[2]["entities"]) > 10


def test_saved_tagger_gives_the_trained_models_outputs(tagger):
    d, trained = tagger
    loaded = NerTagger.load(str(d / "ner"))
    assert isinstance(loaded.model, LatticeForTokenClassification) and loaded.model.words == WORDS
    texts = ["的银行在北京", "我 有 基金在天安门", "球队在北京" * 20]
    fresh = NerTagger(trained, loaded.tokenizer)
    for (pos_a, a), (pos_b, b) in zip(loaded._scores(texts), fresh._scores(texts)):
        assert pos_a == pos_b and (a == b).all()
    assert list(loaded.entities(texts)) == list(fresh.entities(texts))


def test_ner_batches_label_characters_only(tiny_model):
    encoder = LatticeCharEncoder(modelio.load_tokenizer(str(tiny_model)), WORDS)
    text = "我 在北京"
    piece = encoder.encode(text, [0, 2, 3, 4])
    assert [u.text for u in piece] == ["我", "在", "北", "京", "北京"]
    batch = encoder.batch([piece, encoder.encode("银行", [0, 1])], [[0, 0, 1, 2], [3, 4]])
    assert batch["labels"].tolist() == [[-100, 0, 0, 1, 2, -100, -100], [-100, 3, 4, -100, -100, -100, -100]]
    assert batch["is_word"][0].tolist() == [False] * 5 + [True, False]  # [CLS] 我在北京 北京 [SEP]


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("args", [
    ["embed", "TEXTS", "-m", "CLF"],
    ["distill", "TRAIN", "-m", "CLF", "-o", "OUT"],
    ["distill", "--curve", "DEV", "-m", "CLF"],
    ["compress", "-m", "CLF", "--train", "TRAIN", "--dev", "DEV", "-o", "OUT"],
    ["train", "TRAIN", "--task", "correct", "-m", "BASE", "-o", "OUT"],
    ["predict", "TEXTS", "-m", "CLF", "--speed", "0.5"],
    ["eval", "DEV", "-m", "BASE"],  # an encoder is scored as embeddings
])
def test_commands_that_cannot_use_a_lattice_model_say_so_in_one_line(args, classifier, lattice_dir, news_data, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("球队比赛\n", encoding="utf-8")
    names = {"TEXTS": str(texts), "CLF": str(classifier[0]), "BASE": str(lattice_dir), "TRAIN": str(news_data[0]),
             "DEV": str(news_data[1]), "OUT": str(tmp_path / "out")}
    line = one_error_line(cli(*[names.get(a, a) for a in args]))
    assert "is a Lattice-BERT model (bertkit pretrain --multigrain); this command cannot use it yet" in line


def test_predict_with_a_pretrained_lattice_model_says_it_is_not_fine_tuned(lattice_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("球队比赛\n", encoding="utf-8")
    assert "is not a fine-tuned classifier" in one_error_line(cli("predict", str(texts), "-m", str(lattice_dir)))
    assert load_lattice_dir(lattice_dir).words == WORDS
