import random
from collections import Counter

import pytest
import torch
from transformers import AutoModelForMaskedLM

from bertkit.core.vocab import make_tokenizer, shrink_embeddings
from bertkit.pretrain.data import PackedSequence, WholeWordMasker, collate_mlm, pack, segment_line
from bertkit.pretrain.data import prune_corpus_vocab as prune_vocab
from bertkit.pretrain.model import MaskedLMPretrainer, ModelShape, new_bert
from conftest import cli, tiny_vocab


@pytest.fixture
def tokenizer():
    return make_tokenizer(tiny_vocab())


def test_word_starts_follow_jieba(tokenizer):
    ids, starts = segment_line("我爱北京天安门", tokenizer)
    assert len(ids) == 7
    # jieba: 我 / 爱 / 北京 / 天安门
    assert starts == [True, True, True, False, True, False, False]


def test_whole_word_masking_rates(tokenizer):
    masker = WholeWordMasker(tokenizer, rate=0.15)
    rng = random.Random(0)
    # words of length 2: a chosen position's partner must be chosen too
    seq = PackedSequence(ids=list(range(10, 50)), word_start=[i % 2 == 0 for i in range(40)])
    outcomes = Counter()
    for _ in range(2000):
        ids, chosen, originals = masker(seq, rng)
        assert len(chosen) == 6  # round(0.15 * 40)
        assert all((p ^ 1) in chosen for p in chosen), "a word was split"
        assert originals == [seq.ids[p] for p in chosen]
        for p in chosen:
            outcomes["mask" if ids[p] == masker.mask_id else "same" if ids[p] == seq.ids[p] else "random"] += 1
        assert all(ids[p] == seq.ids[p] for p in range(40) if p not in chosen)
    total = sum(outcomes.values())
    assert outcomes["mask"] / total == pytest.approx(0.8, abs=0.02)
    assert outcomes["random"] / total == pytest.approx(0.1, abs=0.02)


def test_masked_head_equals_full_head(tokenizer):
    mlm = new_bert(len(tokenizer), ModelShape(hidden=32, layers=2, heads=2, max_position=64), seed=0).eval()
    seqs = [PackedSequence(*segment_line(t, tokenizer)) for t in ["我爱北京天安门", "球队比赛冠军进球", "股票基金"]]
    batch = collate_mlm(seqs, WholeWordMasker(tokenizer), tokenizer, torch.Generator().manual_seed(0))
    masked = MaskedLMPretrainer(mlm, "masked")(**batch)
    full = MaskedLMPretrainer(mlm, "all")(**batch)
    reference = mlm(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        labels=torch.full_like(batch["input_ids"], -100).view(-1).index_put_(
            (batch["mlm_positions"],), batch["mlm_labels"]).view_as(batch["input_ids"]),
    ).loss
    assert masked.item() == pytest.approx(full.item(), rel=1e-5)
    assert masked.item() == pytest.approx(reference.item(), rel=1e-5)


def test_pack_respects_length_and_keeps_every_token():
    lines = [([1] * 5, [True] * 5), ([2] * 7, [True] * 7), ([3] * 3, [True] * 3)]
    packed = pack(lines, 8)
    assert all(len(s.ids) <= 8 for s in packed)
    assert sorted(i for s in packed for i in s.ids) == sorted([1] * 5 + [2] * 7 + [3] * 3)


def test_prune_vocab_and_shrink_embeddings(tokenizer):
    seqs = [PackedSequence(*segment_line("我爱北京", tokenizer))]
    old_ids = list(seqs[0].ids)
    mlm = new_bert(len(tokenizer), ModelShape(hidden=32, layers=1, heads=2, max_position=64), seed=0)
    old_rows = mlm.get_input_embeddings().weight[old_ids].detach().clone()
    new_tok, keep = prune_vocab(seqs, tokenizer)
    assert len(new_tok) == 5 + 4
    assert new_tok.convert_ids_to_tokens(seqs[0].ids) == list("我爱北京")
    shrink_embeddings(mlm, keep)
    assert torch.equal(mlm.get_input_embeddings().weight[seqs[0].ids], old_rows)
    assert mlm.cls.predictions.decoder.weight is mlm.get_input_embeddings().weight
    assert mlm(torch.tensor([seqs[0].ids])).logits.shape[-1] == 9


def test_pruned_tokenizer_keeps_the_original_settings():
    from transformers import BertTokenizer

    cased = BertTokenizer(vocab=tiny_vocab() | {"A": len(tiny_vocab())}, do_lower_case=False)
    seqs = [PackedSequence(*segment_line("A我爱", cased))]
    new_tok, _ = prune_vocab(seqs, cased)
    assert new_tok.init_kwargs["do_lower_case"] is False
    assert new_tok.tokenize("A我") == ["A", "我"]


def test_pretrain_cli_end_to_end(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("我爱北京天安门。\n球队比赛冠军进球。\n股票基金银行利率市场。\n" * 30, encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    out = tmp_path / "pt"
    cli("pretrain", str(corpus), "-o", str(out), "--vocab", str(vocab), "--prune-vocab", "--hidden", "32",
            "--layers", "1", "--heads", "2", "--max-length", "32", "--batch-size", "4", "--max-steps", "4",
            "--dev-fraction", "0.2", "--save-fp16", "--recompute", "full", check=True)
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.dtype == torch.float16
    assert model.config.vocab_size < len(tiny_vocab())
