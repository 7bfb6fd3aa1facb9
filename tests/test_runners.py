"""The runner contract: every technique's runner is built from a model in memory or loaded from a
directory, and evaluates to the dict its command prints."""

import random

import pytest
import torch
from transformers import AutoModel, BertForMaskedLM, BertForSequenceClassification

from bertkit.classify.data import load_labelled
from bertkit.classify.runner import Classifier
from bertkit.core import modelio
from bertkit.core.runner import Runner
from bertkit.correct.data import Pair
from bertkit.correct.model import SoftMaskedBert
from bertkit.correct.runner import Corrector
from bertkit.embed.model import parse_pooling
from bertkit.embed.runner import Embedder
from bertkit.pretrain.runner import MaskedLanguageModel
from conftest import MONEY, SPORT


@pytest.mark.parametrize("runner", [Classifier, Embedder, Corrector, MaskedLanguageModel])
def test_every_runner_has_the_shape(runner):
    assert issubclass(runner, Runner)
    assert not getattr(runner.load, "__isabstractmethod__", False)
    assert not getattr(runner.evaluate, "__isabstractmethod__", False)


def test_embedder_evaluates_a_model_in_memory_as_loaded(tiny_model):
    """A model in training (here: one with changed weights, never saved) is evaluated in memory."""
    rng = random.Random(0)
    text = lambda: "".join(rng.choice(SPORT + MONEY) for _ in range(rng.randint(3, 12)))
    pairs = ([text() for _ in range(40)], [text() for _ in range(40)], [rng.uniform(0, 5) for _ in range(40)])
    specs = [parse_pooling(p) for p in ("mean", "first-last-avg")]
    loaded = Embedder.load(str(tiny_model))
    model = AutoModel.from_pretrained(tiny_model).eval()
    in_memory = Embedder(model, modelio.load_tokenizer(str(tiny_model)))
    assert in_memory.evaluate(pairs, specs) == loaded.evaluate(pairs, specs)
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight.mul_(3.0)
    changed = in_memory.evaluate(pairs, specs)
    assert set(changed) == {"mean", "first-last-avg"} and changed != loaded.evaluate(pairs, specs)


def test_classifier_and_corrector_evaluate_in_memory(tiny_model, news_data):
    tokenizer = modelio.load_tokenizer(str(tiny_model))
    torch.manual_seed(0)
    net = BertForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, id2label={0: "finance", 1: "sports"}, label2id={"finance": 0, "sports": 1}).eval()
    scores = Classifier(net, tokenizer).evaluate(load_labelled(str(news_data[1])))
    assert set(scores) == {"accuracy", "macro_f1", "n"} and scores["n"] == 32

    mlm = modelio.load_model(str(tiny_model), BertForMaskedLM)
    corrector = Corrector(SoftMaskedBert(mlm, tokenizer.mask_token_id), tokenizer)
    pairs = [Pair("我爱北经", "我爱北京"), Pair("球队比赛", "球队比赛")]
    result = corrector.evaluate(pairs, tune=True)
    assert result["n"] == 2 and result["candidates"] == "all" and result["threshold"] == corrector.threshold
    assert {"det_f1", "cor_f1", "fpr"} <= set(result)
