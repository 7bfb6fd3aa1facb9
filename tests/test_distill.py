"""Early exit by self-distillation (FastBERT): the entropy, the exit rules, batched exit, stage 2
leaving the teacher alone, a directory that round-trips, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel, BertConfig, BertForSequenceClassification

from bertkit.core.errors import BertkitError
from bertkit.distill.model import EarlyExitClassifier, ExitRule, distillation_loss, normalized_entropy
from conftest import cli


def test_normalized_entropy_by_hand():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.25, 0.25, 0.25][:2] + [0.0, 0.0][:0]])
    assert normalized_entropy(probs[:2]).tolist() == pytest.approx([0.0, 1.0])
    p = torch.tensor([[0.9, 0.1, 0.0]])
    expected = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(3)
    assert normalized_entropy(p).item() == pytest.approx(expected)
    assert normalized_entropy(torch.full((1, 4), 0.25)).item() == pytest.approx(1.0)


def test_exit_rules():
    probs = torch.tensor([[0.99, 0.01], [0.6, 0.4]])
    assert ExitRule(speed=0.5).leaves(probs, torch.zeros(2, dtype=torch.long)).tolist() == [True, False]
    assert ExitRule(speed=0.0).leaves(probs, torch.zeros(2, dtype=torch.long)).tolist() == [False, False]
    assert ExitRule(patience=2).leaves(probs, torch.tensor([2, 1])).tolist() == [True, False]
    for bad in (dict(speed=1.5), dict(speed=-0.1), dict(patience=0), dict(speed=0.5, patience=2), {}):
        with pytest.raises(BertkitError):
            ExitRule(**bad)


def tiny_early_exit(seed: int = 0, layers: int = 4) -> EarlyExitClassifier:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, max_position_embeddings=64)
    model = EarlyExitClassifier(BertForSequenceClassification(config)).eval()
    with torch.no_grad():  # confident students at some layers, unsure at others, so samples leave at various depths
        for student, scale in zip(model.students, (30.0, 20.0, 40.0)):
            student.out.weight.mul_(scale)
            student.out.bias[0] += 1.0  # and agreeing on class 0 at times, for PABEE
    return model


def random_batch(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=g)
    ids = torch.randint(5, 60, (n, int(lengths.max())), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return ids * mask, torch.zeros_like(ids), mask


def test_manual_layers_give_the_classifiers_own_logits():
    model = tiny_early_exit()
    ids, types, mask = random_batch(6)
    with torch.no_grad():
        ref = model.classifier(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        assert torch.allclose(model.all_logits(ids, types, mask)[-1], ref, atol=1e-5)
    probs, layers = model.early_exit(ids, types, mask, ExitRule(speed=0.0))
    assert layers.tolist() == [4] * 6 and torch.allclose(probs, ref.softmax(-1), atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 3])  # 3: the pool of 16 regroups across batches as samples leave
@pytest.mark.parametrize("rule", [ExitRule(speed=0.6), ExitRule(speed=0.9), ExitRule(patience=1)])
def test_batched_exit_matches_one_at_a_time(rule, batch_size):
    model = tiny_early_exit()
    ids, types, mask = random_batch(16)
    probs, layers = model.early_exit(ids, types, mask, rule, batch_size=batch_size)
    assert len(set(layers.tolist())) > 1, layers  # the check means something only if exits differ
    for i in range(16):
        n = int(mask[i].sum())
        p1, l1 = model.early_exit(ids[i:i + 1, :n], types[i:i + 1, :n], mask[i:i + 1, :n], rule)
        assert l1.item() == layers[i].item()
        assert torch.allclose(p1[0], probs[i], atol=1e-5)


@pytest.mark.parametrize("rule", [ExitRule(speed=0.3), ExitRule(speed=0.7), ExitRule(patience=2)])
def test_the_one_sample_rule_decides_as_the_batched_rule(rule):
    torch.manual_seed(0)
    probs = torch.cat([(torch.randn(200, 3) * 3).softmax(-1), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])])
    streaks = torch.randint(0, 4, (len(probs),))
    batched = rule.leaves(probs, streaks).tolist()
    assert 0 < sum(batched) < len(batched)  # both decisions occur
    assert [rule.leaves_one(p.tolist(), int(s)) for p, s in zip(probs, streaks)] == batched


def test_distillation_loss_is_kl_student_to_teacher():
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    ps, pt = s.softmax(-1)[0], t.softmax(-1)[0]
    expected = float((ps * (ps.log() - pt.log())).sum())
    assert distillation_loss([s, s], t).item() == pytest.approx(2 * expected)
    assert distillation_loss([t], t).item() == pytest.approx(0.0, abs=1e-7)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_model, news_data):
    out = tmp_path_factory.mktemp("distill") / "model"
    train, dev = news_data
    cli("distill", str(train), "--dev", str(dev), "-m", str(tiny_model), "-o", str(out), "--epochs", "4",
        "--batch-size", "8", "--lr", "2e-3", "--student-epochs", "3", check=True)
    return out


def test_stage2_leaves_backbone_and_teacher_unchanged(distilled):
    from safetensors.torch import load_file

    stage1 = load_file(str(distilled / "stage1" / "model.safetensors"))
    final = load_file(str(distilled / "model.safetensors"))
    assert stage1.keys() == final.keys()
    assert all(torch.equal(stage1[k], final[k]) for k in stage1)


def test_distilled_directory_round_trips_and_predicts(distilled, news_data):
    from bertkit.distill.runner import EarlyExitRunner

    AutoModel.from_pretrained(distilled)  # the backbone loads with transformers
    manifest = json.loads((distilled / "bertkit.json").read_text())
    assert manifest["kind"] == "early-exit-classifier" and "speed" in manifest["config"]
    runner = EarlyExitRunner.load(str(distilled), speed=0.3)
    texts = ["球队比赛冠军进球", "股票基金银行利率"]
    first = list(runner.predict_with_exits(texts))
    again = list(EarlyExitRunner.load(str(distilled), speed=0.3).predict_with_exits(texts))
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again))
    lines = cli("predict", "-", "-m", str(distilled), "--details", "--speed", "0.3",
                input="球队比赛冠军进球\n\n股票基金银行利率\n".encode(), check=True).stdout.decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3 and all(1 <= r["exit_layer"] <= 2 for r in records)
    scores = json.loads(cli("eval", str(news_data[1]), "-m", str(distilled), "--speed", "0.3", check=True).stdout)
    assert {"accuracy", "accuracy_full", "mean_exit_layer", "flops_ratio", "speedup"} <= scores.keys()
    assert scores["flops_ratio"] > 0 and 1 <= scores["mean_exit_layer"] <= 2 and "macro_f1" in scores


def test_curve_stores_the_speed_and_draws(distilled, news_data, tmp_path):
    proc = cli("distill", "--curve", str(news_data[1]), "-m", str(distilled), "--target-loss", "100",
               "--speeds", "0,0.5,1", "--plot", str(tmp_path / "curve.png"), check=True)
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["speed"] for r in rows] == [0.0, 0.5, 1.0]
    # at speed 0 every sample runs every layer and every student: dearer than the plain classifier
    # (here much dearer: the students are 128 wide on a 32-wide model); at speed 1 all leave at layer 1
    assert rows[0]["flops_ratio"] < 1 and rows[0]["flops_ratio"] < rows[-1]["flops_ratio"]
    assert rows[-1]["mean_exit_layer"] == 1
    assert json.loads((distilled / "bertkit.json").read_text())["config"]["speed"] == 1.0  # any loss allowed
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_exit_options_are_one_line_errors(distilled, tiny_model, news_data, tmp_path):
    def error(*args, code=1):
        result = cli(*args, input="球队\n".encode())
        lines = [line for line in result.stderr.decode().splitlines() if line.strip()]
        assert result.returncode == code and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        return lines[0]

    assert "--speed must be within [0, 1]" in error("predict", "-", "-m", str(distilled), "--speed", "1.5")
    assert "--patience must be at least 1" in error("predict", "-", "-m", str(distilled), "--patience", "0")
    assert "no early-exit students" in error("predict", "-", "-m", str(tiny_model), "--speed", "0.5")
    odd = tmp_path / "odd.tsv"
    odd.write_text("label\ttext\nweather\t今天天气很好\n", encoding="utf-8")
    assert "weather" in error("eval", str(odd), "-m", str(distilled), "--speed", "0.2")
    from transformers import AutoModelForSequenceClassification

    from bertkit.compress import model as compressed, quantize
    from bertkit.core import modelio

    small = modelio.load_model(str(tiny_model), AutoModelForSequenceClassification, num_labels=2)
    record = quantize.quantize(small)
    directory = compressed.save_compressed(small, modelio.load_tokenizer(str(tiny_model)), tmp_path / "small", [record])
    assert "distil the fine-tuned classifier it was compressed from" in error("distill", str(news_data[0]), "-m", str(directory), "-o", str(tmp_path / "o"))


def test_student_cls_attention_is_multihead_attention_read_at_cls():
    from bertkit.distill.model import StudentClassifier

    torch.manual_seed(0)
    student = StudentClassifier(32, 3).eval()
    x = torch.tanh(student.narrow(torch.randn(4, 9, 32)))
    padding = torch.zeros(4, 9, dtype=torch.bool)
    padding[1, 5:], padding[2, 2:] = True, True
    full, _ = student.attention(x, x, x, key_padding_mask=padding, need_weights=False)
    assert torch.allclose(student._cls_attention(x, padding), full[:, 0], atol=1e-6)


def test_stage1_counts_as_done_only_when_it_reached_its_last_step(tmp_path):
    from bertkit.distill.task import stage_finished

    assert not stage_finished(tmp_path)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 5, "total_steps": 9}))
    assert not stage_finished(tmp_path)  # stopped by --max-minutes: --resume goes on with stage 1
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 9, "total_steps": 9}))
    assert stage_finished(tmp_path)


def test_distill_usage_errors(tmp_path, news_data):
    train, dev = news_data
    for args, says in [(["--plot", str(tmp_path / "x.png"), str(train), "-o", str(tmp_path / "o")], "--curve"),
                       (["-", "--dev", str(dev), "-o", str(tmp_path / "o")], "not -"),
                       ([str(train)], "-o DIR")]:
        result = cli("distill", *args)
        assert result.returncode == 2 and says in result.stderr.decode(), result.stderr


def test_runner_pools_batches_as_one_at_a_time_would(distilled, news_data):
    """The runner pads a pool batch by batch and regroups it layer by layer: at batch size 3 (a
    pool of several batches, texts of many lengths, one long enough for several windows) every
    text gets what it gets alone."""
    from bertkit.classify.data import load_labelled
    from bertkit.distill.runner import EarlyExitRunner

    runner = EarlyExitRunner.load(str(distilled))
    texts = [ex.text for ex in load_labelled(str(news_data[1]))] + ["球队比赛冠军进球" * 12]
    entropy = sorted(normalized_entropy(p).item() for p, _ in runner.predict_with_exits(texts, ExitRule(speed=1.0)))
    rule = ExitRule(speed=entropy[len(entropy) // 2])  # half leave after layer 1, half go on
    pooled = list(runner.predict_with_exits(texts, rule, batch_size=3))
    alone = list(runner.predict_with_exits(texts, rule, batch_size=1))
    assert len({layer for _, layer in pooled}) > 1  # samples leave at different layers
    for (p, layer), (p1, layer1) in zip(pooled, alone):
        assert layer == layer1 and torch.allclose(p, p1, atol=1e-5)
