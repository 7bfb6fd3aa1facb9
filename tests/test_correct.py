"""Soft-Masked BERT: the equations, the loss, windows, the corrector's guarantees, and the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import BertForMaskedLM

from bertkit.core import modelio
from bertkit.correct.confusion import ConfusionSets, Corruptor, fuzzy_pinyin, is_chinese
from bertkit.correct.data import CharVocab, pad_ids, read_correction_pairs, windows
from bertkit.correct.model import SoftMaskedBert
from bertkit.correct.runner import THRESHOLD_GRID, Corrector

from conftest import cli, run_cli


@pytest.fixture()
def soft(tiny_model):
    torch.manual_seed(0)
    mlm = modelio.load_model(str(tiny_model), BertForMaskedLM)
    tok = modelio.load_tokenizer(str(tiny_model))
    return SoftMaskedBert(mlm, tok.mask_token_id).eval(), tok


def _batch(tok, texts):
    chars = CharVocab(tok)
    return pad_ids([[chars.id(c) for c in t] for t in texts], chars)


def test_soft_mask_is_the_papers_equation(soft, monkeypatch):
    model, tok = soft
    batch = _batch(tok, ["我爱北京", "球队"])
    emb = model.mlm.bert.embeddings
    seen = {}
    real_forward = model.mlm.bert.forward

    def spy(*args, **kwargs):
        seen["inputs_embeds"] = kwargs["inputs_embeds"]
        out = real_forward(*args, **kwargs)
        seen["hidden"] = out.last_hidden_state
        return out

    p = torch.rand(batch["input_ids"].shape)
    monkeypatch.setattr(model, "detect", lambda embedded, mask: p)
    monkeypatch.setattr(model.mlm.bert, "forward", spy)
    with torch.no_grad():
        out = model(**batch)
        words = emb.word_embeddings(batch["input_ids"])
        mask_word = emb.word_embeddings.weight[tok.mask_token_id]
        expected = p[..., None] * mask_word + (1 - p[..., None]) * words
        torch.testing.assert_close(seen["inputs_embeds"], expected)
        # with p = 1 the encoder sees exactly an all-[MASK] input (positions still added)
        all_mask = torch.full_like(batch["input_ids"], tok.mask_token_id)
        p.fill_(1.0)
        model(**batch)
        ref = real_forward(input_ids=all_mask, attention_mask=batch["attention_mask"]).last_hidden_state
        torch.testing.assert_close(seen["hidden"], ref)
        # residual: logits = head(h_c + e) with e the unmasked input embedding
        p.uniform_()
        out = model(**batch)
        embedded = emb(inputs_embeds=words)
        torch.testing.assert_close(out["logits"], model.mlm.cls(seen["hidden"] + embedded))


def test_loss_is_lambda_weighted_correction_plus_detection(soft):
    model, tok = soft
    chars = CharVocab(tok)
    src, tgt = "我爱北经", "我爱北京"
    batch = pad_ids([[chars.id(c) for c in src]], chars, labels=[[chars.id(c) for c in tgt]], detect=[[0, 0, 0, 1]])
    out = model(**batch)
    logits, prob = out["logits"], out["detect_prob"]
    keep = batch["attention_mask"].bool()
    l_c = F.cross_entropy(logits[0, 1:5], batch["labels"][0, 1:5])
    l_d = F.binary_cross_entropy(prob[keep], batch["detect_labels"][keep].float())
    torch.testing.assert_close(out["loss"], 0.8 * l_c + 0.2 * l_d)
    assert model.lam == 0.8


def test_detection_ignores_padding(soft):
    model, tok = soft
    alone = model(**_batch(tok, ["球队比赛"]))["detect_prob"][0, :6]
    padded = model(**_batch(tok, ["球队比赛", "我爱北京天安门你好"]))["detect_prob"][0, :6]
    torch.testing.assert_close(alone, padded)


def test_detector_without_host_lengths_matches_packed_gru(soft):
    model, tok = soft
    batch = _batch(tok, ["球队比赛", "我爱北京天安门你好", "好"])
    x = torch.randn(*batch["input_ids"].shape, model.mlm.config.hidden_size)
    mask = batch["attention_mask"]
    packed = model._bigru_packed(x, mask)
    torch.testing.assert_close(model._bigru_aligned(x, mask), packed)
    assert packed[0, 6:].abs().sum() == 0 and packed[2, 3:].abs().sum() == 0  # zeros past each row


def test_plain_kind_is_bert_mlm(soft, tiny_model):
    model, tok = soft
    plain = SoftMaskedBert(model.mlm, tok.mask_token_id, kind="plain")
    batch = _batch(tok, ["我爱北京"])
    torch.testing.assert_close(plain(**batch)["logits"], model.mlm(**batch).logits)
    assert not hasattr(plain, "detector")


def test_save_and_load_roundtrip(soft, tmp_path):
    model, tok = soft
    with torch.no_grad():
        model.residual_scale.fill_(0.3)  # learned, so saved with the detector
    model.save(tmp_path / "c", tok)
    again = SoftMaskedBert.load(str(tmp_path / "c")).eval()
    batch = _batch(tok, ["我爱北京"])
    torch.testing.assert_close(again(**batch)["logits"], model(**batch)["logits"])
    assert again.residual_scale.item() == pytest.approx(0.3)
    # a detector file from before the residual was learned: the paper's fixed weight 1
    weights = load_file(str(tmp_path / "c" / "detector.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "residual_scale"}, str(tmp_path / "c" / "detector.safetensors"))
    assert SoftMaskedBert.load(str(tmp_path / "c")).residual_scale.item() == 1.0
    # a directory written before bertkit.json: corrector.json holds the settings
    manifest = json.loads((tmp_path / "c" / "bertkit.json").read_text())
    (tmp_path / "c" / "corrector.json").write_text(json.dumps(manifest["config"]))
    (tmp_path / "c" / "bertkit.json").unlink()
    legacy = SoftMaskedBert.load(str(tmp_path / "c"))
    assert legacy.kind == "soft-masked" and legacy.residual_scale.item() == 1.0
    # the BERT part is a plain transformers directory
    assert BertForMaskedLM.from_pretrained(tmp_path / "c").config.hidden_size == 32


@pytest.mark.parametrize("n,size", [(0, 10), (5, 10), (10, 10), (11, 10), (37, 10), (1000, 126)])
def test_windows_decide_each_position_once(n, size):
    decided = []
    for s, e, lo, hi in windows(n, size):
        assert e - s <= size and 0 <= lo <= hi <= e - s
        decided += range(s + lo, s + hi)
    assert decided == list(range(n))


def _forcing_corrector(soft, char="球", **kw):
    """A corrector whose head always prefers ``char``: every Chinese character it may change, it changes."""
    model, tok = soft
    with torch.no_grad():
        model.mlm.cls.predictions.bias[tok.convert_tokens_to_ids(char)] += 100.0
    return Corrector(model, tok, max_length=16, **kw)


def test_corrector_only_changes_chinese_and_keeps_alignment(soft):
    corrector = _forcing_corrector(soft)
    lines = ["", "hello 123 😀", "我爱ＡＢＣ，北京！", "他 说：“好”", "中" * 10_000, "abc我"]
    out = list(corrector.correct(lines))
    assert len(out) == len(lines)
    for line, (text, changes) in zip(lines, out):
        assert len(text) == len(line)
        for a, b in zip(line, text):
            assert a == b or (is_chinese(a) and b == "球")
        assert [c.position for c in changes] == [i for i, ch in enumerate(line) if is_chinese(ch) and ch != "球"]
    assert out[4][0] == "球" * 10_000  # a 10,000-character line, corrected in windows, nothing lost


def test_confusion_decoding_picks_only_from_the_confusion_set(soft):
    model, tok = soft
    with torch.no_grad():
        model.mlm.cls.predictions.bias[tok.convert_tokens_to_ids("球")] += 100.0
        model.mlm.cls.predictions.bias[tok.convert_tokens_to_ids("京")] += 50.0
    corrector = Corrector(model, tok, threshold=0.0, candidates="confusion", confusion={"门": "京天", "北": "你"})
    text, changes = next(corrector.correct(["我爱北门"]))
    # 球 wins over the whole vocabulary but is in no confusion set; 门 -> 京 is; 北's set lacks both
    assert text == "我爱北京" and [(c.position, c.correction) for c in changes] == [(3, "京")]
    assert next(Corrector(model, tok, threshold=0.0).correct(["我爱北门"]))[0] == "球球球球"


def test_confusion_decoding_reports_the_full_softmax_probability(soft):
    """The normaliser is computed only where a change is possible; the probability reported must
    still be the whole vocabulary's softmax, and every position must get its set's best."""
    model, tok = soft
    text = "我爱北京天安门广场"
    confusion = {"我": "爱北京天", "爱": "我门", "北": "京天安门广场", "京": "我", "天": "安", "门": "广场我爱"}
    chars = CharVocab(tok)
    with torch.no_grad():
        probs = model(**_batch(tok, [text]))["logits"][0, 1:-1].softmax(-1)
    expected = []
    for i, ch in enumerate(text):
        cands = [ch, *confusion.get(ch, "")]
        best = max(cands, key=lambda c: float(probs[i, chars.id(c)]))
        if best != ch:
            expected.append((i, best, float(probs[i, chars.id(best)])))
    assert expected  # a random model prefers some other character somewhere
    _, changes = next(Corrector(model, tok, threshold=0.0, candidates="confusion", confusion=confusion).correct([text]))
    assert [(c.position, c.correction) for c in changes] == [(i, best) for i, best, _ in expected]
    for change, (_, _, p) in zip(changes, expected):
        assert change.probability == pytest.approx(p, rel=1e-4)


def test_threshold_trades_changes_for_precision(soft):
    model, tok = soft
    lines = ["我爱北京天安门"]
    loose = list(Corrector(model, tok, threshold=0.0).correct(lines))[0][1]
    strict = list(Corrector(model, tok, threshold=1.0).correct(lines))[0][1]
    assert len(loose) > 0 and strict == []


def test_corruptor_replaces_only_chinese_at_the_rate(tiny_model):
    tok = modelio.load_tokenizer(str(tiny_model))
    sets = ConfusionSets.build(tok.get_vocab(), confusion_dir=None)
    corrupt = Corruptor(sets, list(tok.get_vocab()), rate=0.15)
    rng = random.Random(0)
    text = "球队比赛冠军进球，abc 123！" * 4
    changed = total = 0
    for _ in range(300):
        out = corrupt(text, rng)
        assert len(out) == len(text)
        for a, b in zip(text, out):
            assert a == b or (is_chinese(a) and is_chinese(b))
            changed += a != b
        total += sum(map(is_chinese, text))
    assert 0.12 < changed / total < 0.18


def test_pinyin_confusion_groups_homophones(tiny_model):
    sets = ConfusionSets.build("的地得在再北京经精", confusion_dir=None)
    assert "再" in sets.homophone["在"] and "精" in sets.homophone["经"]
    assert fuzzy_pinyin("zhang") == fuzzy_pinyin("zan") == "zan"


def test_read_pairs_rejects_length_change(tmp_path):
    (tmp_path / "bad.tsv").write_text("我爱北经\t我爱北京啊\n", encoding="utf-8")
    with pytest.raises(Exception, match="differ in length"):
        read_correction_pairs(str(tmp_path / "bad.tsv"))


def test_cli_train_correct_and_eval(tiny_model, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in [("我爱北经", "我爱北京"), ("球队比塞", "球队比赛")] * 8), encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("球队比赛冠军进球。我爱北京天安门。\n" * 20, encoding="utf-8")
    out = tmp_path / "csc"
    cli("train", "--task", "correct", str(pairs), "--synthetic", str(corpus), "--dev", str(pairs), "-m", str(tiny_model),
            "-o", str(out), "--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--detector-lr", "5", "--residual-init", "0", check=True)
    assert json.loads((out / "trainer_state.json").read_text())["config"]["lr_scale"] == {"detector": 5.0, "residual_scale": 5.0}
    manifest = json.loads((out / "bertkit.json").read_text())
    meta = manifest["config"]
    assert manifest["kind"] == "corrector" and manifest["parts"] == {"detector": "detector.safetensors"}
    assert meta["kind"] == "soft-masked" and meta["threshold"] in THRESHOLD_GRID  # tuned on dev
    assert (out / "confusion.tsv").exists()
    scores = json.loads(cli("eval", str(pairs), "-m", str(out), check=True).stdout)
    assert {"det_f1", "cor_f1", "fpr", "char_cor_f1"} <= set(scores) and scores["n"] == 16
    assert scores["candidates"] == "confusion"
    (out / "bertkit.json").write_text(json.dumps(manifest | {"config": meta | {"threshold": 0.77}}))
    tuned = json.loads(cli("eval", str(pairs), "-m", str(out), "--tune", check=True).stdout)
    assert json.loads((out / "bertkit.json").read_text())["config"]["threshold"] == tuned["threshold"] != 0.77
    text = "我爱北经\n\nhello\n".encode()
    plain = cli("correct", "-", "-m", str(out), input=text, check=True).stdout.decode().split("\n")
    assert len(plain) == 4 and plain[1:] == ["", "hello", ""]
    details = [json.loads(l) for l in cli("correct", "-", "-m", str(out), "--details", input=text, check=True).stdout.splitlines()]
    assert [d["text"] for d in details][1:] == ["", "hello"] and all(isinstance(d["changes"], list) for d in details)


def test_cli_correct_bad_input(soft, tiny_model, tmp_path):
    bad = cli("correct", "-", "-m", str(tiny_model), input="我爱北京\n".encode())
    assert bad.returncode == 1 and b"not a spelling corrector" in bad.stderr and b"Traceback" not in bad.stderr
    model, tok = soft
    model.save(tmp_path / "csc", tok)
    utf = tmp_path / "bad.txt"
    utf.write_bytes("我爱北京\n".encode() + b"\xff\xfe\n")
    proc = cli("correct", str(utf), "-m", str(tmp_path / "csc"))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith(b"error:")] == [proc.stderr.strip().splitlines()[-1]]
    assert b"invalid UTF-8" in proc.stderr.strip().splitlines()[-1]


def test_shipped_corrector_end_to_end(tmp_path):
    """`bertkit correct` with the shipped default model: messy input stays line-aligned, only
    Chinese characters may change, and --details reports exactly the changes made."""
    from conftest import ROOT

    typos = (ROOT / "examples" / "typos.txt").read_text(encoding="utf-8").splitlines()
    messy = ["", "no Chinese here 123", "混合 Latin 123 和 emoji 😀🎉 文本", "全角标点：“你好”，（测试）！？",
             "长" * 4000 + "abc" + "句子" * 3000, "\t  空白  \t"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(typos + messy) + "\n", encoding="utf-8")
    proc = run_cli("correct", str(src), check=True, timeout=600)
    out = proc.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(typos) + len(messy)
    for before, after in zip(typos + messy, out):
        assert len(before) == len(after)
        assert all(a == b or (is_chinese(a) and is_chinese(b)) for a, b in zip(before, after))
    assert out[len(typos) + 1] == messy[1] and out[len(typos)] == ""
    details = cli("correct", str(src), "--details", check=True).stdout.decode("utf-8").splitlines()
    for before, after, record in zip(typos + messy, out, map(json.loads, details)):
        assert record["text"] == after
        for change in record["changes"]:
            assert before[change["position"]] == change["original"] and after[change["position"]] == change["correction"]


def test_training_goes_on_from_a_saved_corrector_with_its_detector(soft, tiny_model, tmp_path):
    from bertkit.correct.task import _initial_corrector

    model, tok = soft
    with torch.no_grad():
        model.detector_out.bias.fill_(3.0)  # a trained detector, unlike a new one
    model.save(tmp_path / "csc", tok)
    again = _initial_corrector(str(tmp_path / "csc"), tok, "soft-masked", prior=0.1)
    assert torch.equal(again.detector_out.bias, model.detector_out.bias)  # kept, not re-initialised
    fresh = _initial_corrector(str(tiny_model), tok, "soft-masked", prior=0.1)
    assert not torch.equal(fresh.detector_out.bias, model.detector_out.bias)
    with pytest.raises(Exception, match="soft-masked corrector"):
        _initial_corrector(str(tmp_path / "csc"), tok, "plain", prior=0.1)


def test_new_detector_starts_at_the_data_error_rate(tiny_model):
    from bertkit.correct.data import Pair, error_rate
    from bertkit.correct.task import _initial_corrector

    tok = modelio.load_tokenizer(str(tiny_model))
    # 1 wrong of 4 characters in the pair; 15% of the 4 Chinese of the 6 in the synthetic line
    train = [Pair("我爱北经", "我爱北京"), Pair(None, "球队ab比赛")]
    assert error_rate(train, 0.15) == pytest.approx((1 + 0.15 * 4) / 10)
    net = _initial_corrector(str(tiny_model), tok, "soft-masked", prior=0.16).eval()
    p = net(**_batch(tok, ["我爱北京天安门", "球队"]))["detect_prob"]
    keep = _batch(tok, ["我爱北京天安门", "球队"])["attention_mask"].bool()
    # a new detector's output is near the prior everywhere, not near 0.5
    assert (p[keep] - 0.16).abs().max() < 0.1
