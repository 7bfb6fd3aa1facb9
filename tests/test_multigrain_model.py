"""The Lattice-BERT encoder (bertkit.multigrain.model): exact carry-over of a character BERT, the
lattice attention biases acting only through their own pairs, padding, the masked segment loss,
batching, saving and loading, and one training step."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from bertkit.core import modelio
from bertkit.core.errors import BertkitError
from bertkit.multigrain.lattice import (
    Lexicon,
    Relation,
    build_lattice,
    choose_segments,
    mask_segments,
    relation_matrix,
    segments,
)
from bertkit.multigrain.model import (
    LatticeConfig,
    LatticeForPretraining,
    LatticeModel,
    _SummedLookup,
    collate_lattices,
    from_char_bert,
    load_lattice,
    save_lattice,
)

CHARS = "研究生活很充实我爱你北京天安门"
CHAR_VOCAB = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS])}
WORDS = ["研究", "研究生", "生活", "充实", "北京", "天安", "安门", "天安门"]
WORD_VOCAB = {w: i for i, w in enumerate(WORDS)}
LEXICON = Lexicon.from_words(WORDS)


def tiny_bert(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(CHAR_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    return BertForMaskedLM(config).eval()


def tiny_config(**overrides) -> LatticeConfig:
    shape = dict(char_vocab_size=len(CHAR_VOCAB), word_vocab_size=len(WORD_VOCAB), hidden_size=32, num_layers=2,
                 num_heads=4, intermediate_size=64, max_position=32, max_distance=4, dropout=0.0,
                 attention_dropout=0.0)
    return LatticeConfig(**{**shape, **overrides})


def randomize_lattice_biases(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero distance and relation biases, so that tests exercise them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("distance_bias.weight", "relation_bias.weight")):
                param.copy_(torch.randn(param.shape, generator=generator))


def encode(model: LatticeModel, batch: dict) -> torch.Tensor:
    keys = ("input_ids", "starts", "ends", "is_word", "attention_mask")
    return model(**{k: batch[k] for k in keys})


def test_characters_only_lattice_computes_what_the_char_bert_computes():
    bert = tiny_bert()
    model = from_char_bert(bert, CHAR_VOCAB, WORD_VOCAB).eval()
    texts = ["研究生活很充实", "我爱猫"]  # 猫 is not in the vocabulary: [UNK]
    batch = collate_lattices([build_lattice(t, Lexicon()) for t in texts], CHAR_VOCAB, WORD_VOCAB)
    assert batch["input_ids"][1].tolist() == [2, CHAR_VOCAB["我"], CHAR_VOCAB["爱"], 1, 3, 0, 0, 0, 0]
    with torch.no_grad():
        ours = model(**batch)
        theirs = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours.hidden_states[real], theirs.hidden_states[-1][real], atol=1e-5)
    assert torch.allclose(ours.char_logits[real], theirs.logits[real], atol=1e-5)
    # the words start as the mean of their characters' embeddings
    table = model.lattice.embeddings
    expected = bert.bert.embeddings.word_embeddings.weight[[CHAR_VOCAB[c] for c in "研究生"]].mean(0)
    assert torch.allclose(table.word_embeddings.weight[WORD_VOCAB["研究生"]], expected)
    assert torch.allclose(table.start_position_embeddings.weight + table.end_position_embeddings.weight,
                          bert.bert.embeddings.position_embeddings.weight)


@pytest.mark.parametrize("relation, having, lacking", [
    (Relation.OVERLAP, "研究生活", "很充实"),  # 研究生 and 生活 overlap; 充实 only contains characters
    (Relation.CONTAIN, "很充实", "我爱你"),  # 充实 contains 充 and 实; characters alone contain nothing
])
def test_a_relation_bias_changes_only_the_sentences_with_that_relation(relation, having, lacking):
    torch.manual_seed(0)
    model = LatticeModel(tiny_config()).eval()
    lattices = [build_lattice(having, LEXICON), build_lattice(lacking, LEXICON)]
    batch = collate_lattices(lattices, CHAR_VOCAB, WORD_VOCAB)
    real = batch["attention_mask"].bool()
    pairs = real[:, :, None] & real[:, None, :]
    present = ((relation_matrix(batch["starts"], batch["ends"]) == relation) & pairs).flatten(1).any(1)
    assert present.tolist() == [True, False]
    with torch.no_grad():
        before = encode(model, batch)
        model.position_bias.relation_bias.weight[relation] = torch.tensor([3.0, -2.0, 1.0, 4.0])
        after = encode(model, batch)
    assert (after[0][real[0]] - before[0][real[0]]).abs().max() > 1e-3
    assert torch.equal(after[1][real[1]], before[1][real[1]])


def test_distance_biases_change_outputs_and_are_clipped():
    torch.manual_seed(0)
    model = LatticeModel(tiny_config(max_distance=2)).eval()
    batch = collate_lattices([build_lattice("研究生活很充实", LEXICON)], CHAR_VOCAB, WORD_VOCAB)
    rows = model.lattice_structure(batch["starts"], batch["ends"])
    assert rows[:, :4].min() >= 0 and rows[:, :4].max() < 4 * 5
    assert torch.equal(rows[:, 4] - 4 * 5, relation_matrix(batch["starts"], batch["ends"]))
    # end-end distance from [CLS] (position 0) to [SEP] (position 8) is clipped to +2: row 3 * 5 + 2 + 2
    sep = int(batch["attention_mask"].sum()) - 1
    assert rows[0, 3, 0, sep] == 3 * 5 + 4
    with torch.no_grad():
        before = encode(model, batch)
        model.position_bias.distance_bias.weight[3 * 5 + 4] = 5.0
        after = encode(model, batch)
    assert (after - before).abs().max() > 1e-3


def test_summed_lookup_matches_embedding_lookups_and_their_gradients():
    torch.manual_seed(0)
    table = torch.randn(30, 4, dtype=torch.double, requires_grad=True)
    index = torch.randint(0, 30, (2, 5, 7, 7))
    expected = F.embedding(index, table).sum(1).permute(0, 3, 1, 2)
    assert torch.allclose(_SummedLookup.apply(table, index), expected)
    assert torch.autograd.gradcheck(lambda t: _SummedLookup.apply(t, index), (table,))


def test_padding_does_not_change_the_outputs_of_real_units():
    torch.manual_seed(0)
    model = LatticeModel(tiny_config()).eval()
    randomize_lattice_biases(model)
    short, long = build_lattice("很充实", LEXICON), build_lattice("北京天安门研究生活", LEXICON)
    alone = collate_lattices([short], CHAR_VOCAB, WORD_VOCAB)
    padded = collate_lattices([short, long], CHAR_VOCAB, WORD_VOCAB)
    n = alone["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] > n and padded["attention_mask"][0, n:].eq(0).all()
    with torch.no_grad():
        assert torch.allclose(encode(model, alone)[0], encode(model, padded)[0, :n], atol=1e-5)


def test_collate_layout_words_masks_and_unknowns():
    units = build_lattice("很充实", LEXICON)  # 很 充 实 充实
    batch = collate_lattices([units], CHAR_VOCAB, WORD_VOCAB, masked=[[False, True, False, True]])
    v = CHAR_VOCAB
    assert batch["input_ids"][0].tolist() == [v["[CLS]"], v["很"], v["[MASK]"], v["实"], v["[MASK]"], v["[SEP]"]]
    assert batch["starts"][0].tolist() == [0, 1, 2, 3, 2, 4] and batch["ends"][0].tolist() == [0, 1, 2, 3, 3, 4]
    assert batch["is_word"][0].tolist() == [False] * 6  # the masked word enters as [MASK]
    assert batch["char_labels"][0].tolist() == [-100, -100, v["充"], -100, -100, -100]
    assert batch["word_labels"][0].tolist() == [-100, -100, -100, -100, WORD_VOCAB["充实"], -100]
    plain = collate_lattices([units], CHAR_VOCAB, WORD_VOCAB, add_special_tokens=False)
    assert plain["input_ids"][0].tolist() == [v["很"], v["充"], v["实"], WORD_VOCAB["充实"]]
    assert plain["is_word"][0].tolist() == [False, False, False, True] and "char_labels" not in plain
    with pytest.raises(ValueError, match="not in word_vocab"):
        collate_lattices([build_lattice("很充实", Lexicon(["很充"]))], CHAR_VOCAB, WORD_VOCAB)


def masked_batch(texts, seed: int = 0) -> dict:
    rng = random.Random(seed)
    lattices, masks = [], []
    for text in texts:
        units = build_lattice(text, LEXICON)
        segs = segments(len(text), units)
        masks.append(mask_segments(units, segs, choose_segments(segs, 0.4, generator=rng)))
        lattices.append(units)
    return collate_lattices(lattices, CHAR_VOCAB, WORD_VOCAB, masked=masks)


def test_masked_segment_loss_is_the_mean_over_masked_units_only():
    torch.manual_seed(0)
    model = LatticeForPretraining(tiny_config()).eval()
    randomize_lattice_biases(model)
    batch = masked_batch(["研究生活很充实", "北京天安门", "我爱你"])
    chars, words = batch["char_labels"] != -100, batch["word_labels"] != -100
    assert chars.any() and words.any()
    with torch.no_grad():
        out = model(**batch)
        inputs = {k: v for k, v in batch.items() if not k.endswith("labels")}
        full = model(**inputs)
    per_unit = torch.cat([F.cross_entropy(full.char_logits[chars], batch["char_labels"][chars], reduction="none"),
                          F.cross_entropy(full.word_logits[words], batch["word_labels"][words], reduction="none")])
    assert per_unit.numel() == int(chars.sum() + words.sum())
    assert torch.allclose(out.loss, per_unit.mean(), atol=1e-6)
    assert out.char_logits.shape == (int(chars.sum()), len(CHAR_VOCAB))
    assert out.word_logits.shape == (int(words.sum()), len(WORD_VOCAB))
    with torch.no_grad():
        nothing = model(**inputs, char_labels=torch.full_like(batch["char_labels"], -100))
    assert nothing.loss.item() == 0.0


def test_save_and_load_give_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = LatticeForPretraining(tiny_config()).eval()
    randomize_lattice_biases(model)
    (tmp_path / "vocab.txt").write_text("kept\n", encoding="utf-8")
    save_lattice(model, tmp_path)
    assert json.loads((tmp_path / "bertkit.json").read_text())["architecture"] == "lattice-bert"
    assert (tmp_path / "vocab.txt").read_text() == "kept\n" and not (tmp_path / "config.json").exists()
    loaded = load_lattice(tmp_path)
    assert isinstance(loaded, LatticeForPretraining) and loaded.config == model.config
    batch = masked_batch(["研究生活很充实", "北京天安门"])
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.hidden_states, b.hidden_states)
    encoder = modelio.load_model(str(tmp_path), LatticeModel)  # through the registered architecture
    assert isinstance(encoder, LatticeModel)
    (tmp_path / "lattice_config.json").write_text('{"architectures": ["LatticeModel"], "hidden_size": 32}')
    with pytest.raises(BertkitError, match="corrupt"):
        load_lattice(tmp_path)


def test_a_gradient_step_lowers_the_pretraining_loss():
    model = from_char_bert(tiny_bert(), CHAR_VOCAB, WORD_VOCAB).eval()  # eval: no dropout, still trainable
    batch = masked_batch(["研究生活很充实", "北京天安门", "我爱你北京"], seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = model(**batch).loss
    loss.backward()
    relation_grad = model.lattice.position_bias.relation_bias.weight.grad
    assert relation_grad is not None and relation_grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        assert model(**batch).loss < loss.detach() - 1e-3


def test_config_round_trip_and_checks():
    config = tiny_config()
    assert LatticeConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        LatticeConfig.from_dict({**config.to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="multiple"):
        tiny_config(hidden_size=30)
    model = LatticeModel(tiny_config(max_position=4))
    batch = collate_lattices([build_lattice("研究生活", LEXICON)], CHAR_VOCAB, WORD_VOCAB)  # [SEP] at 5
    with pytest.raises(ValueError, match="max_position"):
        encode(model, batch)
