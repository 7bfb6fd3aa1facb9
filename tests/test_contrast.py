"""Contrastive sentence embeddings: the objectives against hand-computed cases, the methods' training
parts (frozen guide, projection head, dropout views), and `bertkit contrast` end to end."""

import json
import math

import pytest
import torch
from torch import nn

from safetensors import safe_open
from transformers import AutoModel

from bertkit.contrast.model import (ProjectionHead, SelfGuided, SimCSE, cosent_loss, in_batch_negatives_loss,
                                    masked_max, sg_opt_loss, simcse_loss, weight_drift)
from conftest import FILLER, MONEY, SPORT, cli

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_sg_opt_by_hand():
    # two sentences, one frozen layer: c_1 = e1, c_2 = e2; h_1 = e1, h_2 = (e1 + e2)/sqrt2
    cls = torch.stack([E1, E2])
    pooled = torch.stack([E1, (E1 + E2)]).unsqueeze(1)
    t = 0.5
    s = 1 / math.sqrt(2)
    # sentence 1: positive cos(e1, e1) = 1, negative cos(e1, h_2) = s; sentence 2: positive s, negative 0
    expected = (-math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t)))
                - math.log(math.exp(s / t) / (math.exp(s / t) + math.exp(0.0)))) / 2
    assert sg_opt_loss(cls, pooled, t).item() == pytest.approx(expected, rel=1e-5)


def test_sg_opt_shares_every_layers_negatives():
    # two layers: sentence i's negatives are the other sentence's h at both layers
    cls = torch.stack([E1, E2])
    pooled = torch.stack([torch.stack([E1, E2]), torch.stack([E1 + E2, E1])])  # (B=2, L=2, H=2)
    t = 1.0
    c = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    rows = []
    for i in range(2):
        negs = [c(cls[i], pooled[1 - i, k]) for k in range(2)]
        for k in range(2):
            pos = c(cls[i], pooled[i, k])
            rows.append(-pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs)))
    assert sg_opt_loss(cls, pooled, t).item() == pytest.approx(sum(rows) / 4, rel=1e-5)


def test_simcse_and_in_batch_negatives_by_hand():
    a = torch.stack([E1, E2])
    b = torch.stack([E1, E1 + E2])
    s = 1 / math.sqrt(2)
    expected = (-math.log(math.exp(1 / 0.05) / (math.exp(1 / 0.05) + math.exp(s / 0.05)))
                - math.log(math.exp(s / 0.05) / (math.exp(0.0) + math.exp(s / 0.05)))) / 2
    assert simcse_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert in_batch_negatives_loss(a, b, scale=20.0).item() == pytest.approx(
        simcse_loss(a, b, temperature=1 / 20).item(), rel=1e-6)


def test_cosent_by_hand():
    first = torch.stack([E1, E1, E1])
    second = torch.stack([E1, E1 + E2, E2])  # cosines 1, s, 0
    s = 1 / math.sqrt(2)
    scores = torch.tensor([1.0, 5.0, 3.0])  # wrongly ordered: pair 2 should beat 1 and 3, 3 should beat 1
    cos = [1.0, s, 0.0]
    terms = [20 * (cos[j] - cos[i]) for i in range(3) for j in range(3) if scores[i] > scores[j]]
    expected = math.log(1 + sum(math.exp(x) for x in terms))
    assert cosent_loss(first, second, scores).item() == pytest.approx(expected, rel=1e-5)
    assert cosent_loss(first, second, torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_max_ignores_padding_and_head_and_drift():
    hidden = torch.tensor([[[1.0, -5.0], [3.0, 9.0]]])
    assert masked_max(hidden, torch.tensor([[1, 0]])).tolist() == [[1.0, -5.0]]
    assert ProjectionHead(8, width=16)(torch.randn(3, 8)).shape == (3, 16)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    assert weight_drift(a, b).item() == 0.0
    with torch.no_grad():
        a.bias += torch.tensor([3.0, 4.0])
    assert weight_drift(a, b).item() == pytest.approx(25.0)


# ---------------------------------------------------------------- the methods' training parts


def _batch(bert, n=4, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, bert.config.vocab_size, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_sg_bert_trains_its_copy_and_never_the_frozen_guide(tiny_model):
    sg = SelfGuided(AutoModel.from_pretrained(tiny_model), head_width=64).train()
    frozen_before = {k: v.clone() for k, v in sg.frozen.state_dict().items()}
    trained_before = {k: v.clone() for k, v in sg.bert.encoder.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in sg.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        sg(**_batch(sg.bert, seed=step)).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not sg.frozen.training  # the guide runs without dropout even while training
    for name, value in sg.frozen.state_dict().items():
        assert torch.equal(value, frozen_before[name]), name
    assert all(not p.requires_grad for p in sg.bert.embeddings.parameters())  # fixed, as in the released code
    assert any(not torch.equal(v, trained_before[k]) for k, v in sg.bert.encoder.state_dict().items())
    assert weight_drift(sg.bert, sg.frozen).item() > 0


def test_simcse_views_differ_only_by_dropout(tiny_model):
    model = SimCSE(AutoModel.from_pretrained(tiny_model))
    batch = _batch(model.bert)
    torch.manual_seed(0)
    first, second = model.train().views(**batch)
    assert not torch.allclose(first, second)  # dropout on: two masks, two views
    first, second = model.eval().views(**batch)
    torch.testing.assert_close(first, second)  # dropout off: the same sentence, the same vector
    for module in model.modules():  # dropout off while training: again identical
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    first, second = model.train().views(**batch)
    torch.testing.assert_close(first, second)


# ---------------------------------------------------------------- bertkit contrast end to end


def _sentences(n, seed):
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice((SPORT, MONEY)[i % 2] + FILLER) for _ in range(rng.randint(5, 14))) for i in range(n)]


@pytest.fixture(scope="module")
def sts_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sts")
    sentences = _sentences(64, 3)
    (d / "corpus.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    pairs = [(sentences[i], sentences[i + 2], "4.0" if i % 2 == 0 else "1.5") for i in range(0, 40)]
    pairs += [(sentences[i], sentences[i + 1], "0.5") for i in range(0, 20)]
    (d / "pairs.tsv").write_text("".join("\t".join(p) + "\n" for p in pairs), encoding="utf-8")
    (d / "dev.tsv").write_text("s1\ts2\tscore\n" + "".join("\t".join(p) + "\n" for p in pairs[::3]), encoding="utf-8")
    return d


@pytest.mark.parametrize("method", ["sg", "simcse"])
def test_contrast_saves_an_embedding_model_without_training_parts(tiny_model, sts_files, tmp_path, method):
    out = tmp_path / method
    cli("contrast", str(sts_files / "corpus.txt"), "--method", method, "-m", str(tiny_model), "-o", str(out),
        "--dev", str(sts_files / "dev.tsv"), "--batch-size", "8", "--max-steps", "4", "--eval-every", "2", check=True)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    reference = AutoModel.from_pretrained(tiny_model).state_dict()
    assert len(keys) == len(reference)  # the encoder only: no frozen copy, projection head or MLP
    assert not [k for k in keys if k.split(".")[0] in ("frozen", "head", "mlp", "bert")]
    assert sorted(p.name for p in out.glob("*_Pooling")) == ["1_Pooling"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["history"]] == [2, 4] and "spearman" in state["history"][0]
    assert json.loads((out / "bertkit.json").read_text())["config"]["pooling"] == "cls"


def test_cosent_model_embeds_like_sentence_transformers(tiny_model, sts_files, tmp_path):
    import numpy as np
    import sentence_transformers as st

    from bertkit.embed.runner import Embedder

    out = tmp_path / "cosent"
    cli("contrast", str(sts_files / "pairs.tsv"), "--method", "cosent", "-m", str(tiny_model), "-o", str(out),
        "--batch-size", "8", "--max-steps", "3", check=True)
    texts = _sentences(6, 9)
    ours = torch.stack(list(Embedder.load(str(out)).embed(texts))).numpy()  # no --pooling: the saved one (mean)
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    embedded = cli("embed", "-", "-m", str(out), input="\n".join(texts).encode(), check=True).stdout.decode()
    assert len(embedded.splitlines()) == 6
    # whitening on top of the contrastive model starts from its own pooling
    cli("embed", "--fit", str(sts_files / "corpus.txt"), "--pooling", "whitening-8", "-m", str(out),
        "-o", str(tmp_path / "white"), check=True)
    assert json.loads((tmp_path / "white" / "bertkit.json").read_text())["config"]["base_pooling"] == "mean"


def test_mnrl_trains_on_anchor_positive_pairs(tiny_model, sts_files, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    sentences = _sentences(20, 4)
    pairs.write_text("".join(f"{a}\t{b}\n" for a, b in zip(sentences, sentences[1:])), encoding="utf-8")
    cli("contrast", str(pairs), "--method", "mnrl", "-m", str(tiny_model), "-o", str(tmp_path / "m"),
        "--batch-size", "4", "--max-steps", "2", check=True)
    assert (tmp_path / "m" / "modules.json").exists()


@pytest.mark.parametrize("content, args, message", [
    ("", [], "is empty"),
    ("只有一行\n\n", [], "1 non-blank line; contrastive training needs at least 2"),
    ("一\n二\n三\n", ["--batch-size", "1"], "--batch-size 1: --method sg compares each example with the rest of its batch"),
    ("一\n二\n三\n", ["--method", "simclr"], "unknown --method 'simclr'"),
    ("句一\t句二\t4\n句三\t句四\thigh\n", ["--method", "cosent"], ":2: score 'high' is not a number"),
    ("句一\t句二\t4\n", ["--method", "mnrl"], ":1: expected anchor<TAB>positive, got 3 columns"),
])
def test_contrast_bad_input_is_one_error_line(tiny_model, tmp_path, content, args, message):
    corpus = tmp_path / "in.txt"
    corpus.write_text(content, encoding="utf-8")
    result = cli("contrast", str(corpus), "-m", str(tiny_model), "-o", str(tmp_path / "out"), *args)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
