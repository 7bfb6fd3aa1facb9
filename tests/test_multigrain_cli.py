"""``bertkit pretrain --multigrain`` end to end through the real CLI (bertkit.multigrain.task, .io):
a tiny run whose directory loads back to the same model, the word vocabulary it keeps, one-line
errors for bad lexicons and options, and a lattice directory refused by BERT commands."""

from __future__ import annotations

import json
import random

import pytest
import torch

from bertkit.core import modelio
from bertkit.core.errors import BertkitError
from bertkit.multigrain import io as lattice_io
from bertkit.multigrain import task as lattice_task
from bertkit.multigrain.io import char_normalizer, load_lattice_dir
from bertkit.multigrain.lattice import Lexicon
from bertkit.multigrain.model import LatticeForPretraining, collate_lattices
from bertkit.multigrain.task import fill_windows, read_pieces, window_example
from conftest import cli

LINES = ["我爱北京天安门。", "球队比赛冠军进球。", "股票基金银行利率市场。", "你好世界！"]
LONG = "球队比赛冠军进球股票基金银行利率市场我爱北京天安门你好世界"  # longer than a window
LEXICON = "北京 3 ns\n天安门\n比赛\n冠军\n球队\n股票\n基金\n银行\n利率\n市场\n你好\n世界\n安门\n"
K = 6


def one_error_line(result) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("multigrain")
    corpus, lexicon = d / "corpus.txt", d / "lexicon.txt"
    corpus.write_text("\n".join(LINES * 10 + [LONG * 3]) + "\n", encoding="utf-8")
    lexicon.write_text(LEXICON, encoding="utf-8")
    return d, corpus, lexicon


@pytest.fixture(scope="module")
def run(files, tiny_model):
    """One tiny --multigrain run; the model the run saved last, kept in memory, beside its directory."""
    d, corpus, lexicon = files
    saved = []

    def keep(model, tokenizer, words, directory, dtype=None):
        saved.append(model)
        return lattice_io.save_lattice_dir(model, tokenizer, words, directory, dtype)

    out = d / "lattice"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lattice_task, "save_lattice_dir", keep)
        result = cli("pretrain", str(corpus), "--multigrain", "-m", str(tiny_model), "-o", str(out),
                     "--lexicon", str(lexicon), "--words", str(K), "--max-length", "24", "--batch-size", "4",
                     "--max-steps", "3", "--dev-fraction", "0.2", check=True)
    return out, saved[-1].eval(), result.stderr.decode()


def test_directory_loads_back_to_the_same_model(run):
    out, trained, _ = run
    bundle = load_lattice_dir(out)
    assert isinstance(bundle.model, LatticeForPretraining)
    assert isinstance(modelio.load_model(str(out), None), LatticeForPretraining)  # through the registry too
    normalize = bundle.normalize
    lattices = [window_example([normalize(t)], bundle.lexicon).units for t in [*LINES, LONG[:20]]]
    assert any(u.end > u.start for units in lattices for u in units)  # words matched
    batch = collate_lattices(lattices, bundle.char_vocab, bundle.word_vocab)
    with torch.no_grad():
        ours, theirs = bundle.model(**batch), trained(**batch)
    assert torch.allclose(ours.char_logits, theirs.char_logits, atol=1e-5)
    assert torch.allclose(ours.word_logits, theirs.word_logits, atol=1e-5)


def test_word_vocabulary_is_the_most_used_words(run):
    out, _, log = run
    words = (out / "words.txt").read_text(encoding="utf-8").splitlines()
    assert 0 < len(words) <= K and len(set(words)) == len(words)
    assert set(words) <= set(line.split()[0] for line in LEXICON.splitlines())
    assert "keeping the 6 most used" in log and "of the occurrences" in log


def test_logs_and_records_lattice_speed_beside_step_time(run):
    out, _, log = run
    assert "sentences/s" in log and "mean training step" in log
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["config"]["extra"]["lattice"]["sentences_per_second"] > 0
    assert state["timing"]["mean_step_ms"] > 0
    assert "masked_unit_accuracy" in state["history"][-1]


def test_save_fp16_halves_the_weights_and_loads_as_float32(files, tiny_model, tmp_path):
    from safetensors import safe_open

    _, corpus, lexicon = files
    out = tmp_path / "half"
    cli("pretrain", str(corpus), "--multigrain", "-m", str(tiny_model), "-o", str(out), "--lexicon", str(lexicon),
        "--max-length", "24", "--batch-size", "4", "--max-steps", "1", "--dev-fraction", "0", "--save-fp16", check=True)
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(name).dtype for name in fh.keys()} == {torch.float16}
    assert next(load_lattice_dir(out).model.parameters()).dtype == torch.float32


def test_long_lines_become_windows_of_whole_characters(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LONG * 2 + "\n\n", encoding="utf-8")
    pieces = read_pieces([str(corpus)], lambda text: text, max_chars=10)
    assert all(len(p) <= 10 for p in pieces) and "".join(pieces) == LONG * 2
    lexicon = Lexicon(["北京", "天安门", "安门"])
    windows = fill_windows(["北京天", "安门", "比赛冠军进球"], lexicon, max_units=7)
    # 北京天 (4 units: 北京 + 3 characters) + 安门 (3) fill the first window; the third line opens the next
    assert [[piece for piece, _ in w] for w in windows] == [["北京天", "安门"], ["比赛冠军进球"]]
    example = window_example(windows[0])
    words = {(u.text, u.start, u.end) for u in example.units if u.end > u.start}
    assert words == {("北京", 0, 1), ("安门", 3, 4)}  # 天安门 crosses the two lines: not a unit
    assert example.segments == [(0, 1), (2, 2), (3, 4)]


def test_a_line_that_does_not_fit_is_cut_where_its_head_fills_the_window():
    lexicon = Lexicon(["北京", "天安门", "安门"])
    windows = fill_windows(["我爱", "北京天安门"], lexicon, max_units=6)  # 北京天安门: 5 characters + 3 words
    # the head 北京天 (3 characters + 北京) fills the window; 天安门 across the cut is lost, 安门 stays
    assert [[piece for piece, _ in w] for w in windows] == [["我爱", "北京天"], ["安门"]]
    assert [sum(len(units) for _, units in w) for w in windows] == [6, 3]
    # every character kept once, in order
    assert "".join(piece for w in windows for piece, _ in w) == "我爱北京天安门"
    assert all(sum(len(u) for _, u in w) <= 3 for w in fill_windows(["北京天安门"], lexicon, max_units=3))


def test_character_normalisation_follows_the_vocabulary(tiny_model):
    normalize = char_normalizer(modelio.load_tokenizer(str(tiny_model)))
    assert normalize("我 爱\tABC") == "我爱abc"


@pytest.mark.parametrize("content, expected", [
    (b"", "no words"),
    (b"\n\n", "no words"),
    (b"\xff\xfe\x00\x01", "not UTF-8"),
    ("北京\n 3 ns\n".encode(), ":2: a lexicon line without a word"),
    (None, "cannot read lexicon"),
])
def test_bad_lexicons_give_one_error_line(files, tiny_model, tmp_path, content, expected):
    _, corpus, _ = files
    lexicon = tmp_path / "lexicon.txt"
    if content is not None:
        lexicon.write_bytes(content)
    result = cli("pretrain", str(corpus), "--multigrain", "-m", str(tiny_model), "-o", str(tmp_path / "out"),
                 "--lexicon", str(lexicon))
    assert expected in one_error_line(result)


def test_a_corpus_without_lexicon_words_is_refused(files, tiny_model, tmp_path):
    _, corpus, _ = files
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("人民\n", encoding="utf-8")
    result = cli("pretrain", str(corpus), "--multigrain", "-m", str(tiny_model), "-o", str(tmp_path / "out"),
                 "--lexicon", str(lexicon), "--max-length", "24")
    assert "no word of the lexicon" in one_error_line(result)


@pytest.mark.parametrize("extra, expected", [
    ([], "pass -m MODEL_DIR"),
    (["-m", "TINY", "--prune-vocab"], "--prune-vocab cannot be used with --multigrain"),
    (["-m", "TINY", "--mlm-head", "all"], "--mlm-head all cannot be used"),
    (["-m", "TINY", "--vocab", "vocab.txt"], "--vocab cannot be used"),
    (["-m", "TINY", "--hidden", "256"], "--hidden cannot be used"),
    (["-m", "TINY", "--layers", "2"], "--layers cannot be used"),
    (["-m", "LATTICE"], "already a Lattice-BERT model"),
    (["-m", "TINY", "--max-length", "24", "--recompute", "full"], "does not support them yet"),
])
def test_bad_multigrain_options_give_one_error_line(files, tiny_model, run, tmp_path, extra, expected):
    _, corpus, lexicon = files
    extra = [str(tiny_model) if a == "TINY" else str(run[0]) if a == "LATTICE" else a for a in extra]
    result = cli("pretrain", str(corpus), "--multigrain", "-o", str(tmp_path / "out"), "--lexicon", str(lexicon), *extra)
    assert expected in one_error_line(result)


@pytest.mark.parametrize("option", [["--lexicon", "lexicon.txt"], ["--words", "10"]])
def test_multigrain_options_without_multigrain_are_refused(files, tmp_path, option):
    _, corpus, _ = files
    result = cli("pretrain", str(corpus), "-o", str(tmp_path / "out"), *option)
    assert "goes with --multigrain" in one_error_line(result)


def test_lattice_directory_is_refused_by_bert_commands(run, news_data, tmp_path):
    out = str(run[0])
    texts = tmp_path / "texts.txt"
    texts.write_text("我爱北京\n", encoding="utf-8")
    # classification and NER take it (tests/test_multigrain_finetune.py); spelling correction does not
    correct = ["train", str(news_data[0]), "--task", "correct", "-m", out, "-o", str(tmp_path / "t")]
    for args in (["embed", str(texts), "-m", out], correct, [*correct, "--lr", "1e-4"]):
        line = one_error_line(cli(*args))
        assert "is a Lattice-BERT model (bertkit pretrain --multigrain); this command cannot use it yet" in line


def test_incomplete_lattice_directory_is_reported(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    (copy / "words.txt").unlink()
    with pytest.raises(BertkitError, match="has no words.txt") as error:
        load_lattice_dir(copy)
    assert len(str(error.value).splitlines()) == 1
    assert modelio.resolve_model(str(run[0]), layouts=("lattice-bert",)) == str(run[0])


def test_masks_differ_between_steps_and_repeat_with_the_seed(run):
    out, _, _ = run
    bundle = load_lattice_dir(out)
    task = lattice_task.LatticePretrainTask(bundle.model, bundle.tokenizer, bundle.words, dev=[])
    examples = [window_example([bundle.normalize(t)], bundle.lexicon) for t in LINES * 2]

    def labels(seed):
        batch = task.collate(examples, torch.Generator().manual_seed(seed))
        return torch.cat([batch["char_labels"], batch["word_labels"]], dim=1)

    assert torch.equal(labels(1), labels(1)) and not torch.equal(labels(1), labels(2))
    random.seed(0)  # the masks depend on the loop's generator only, not on the global RNG
    first = labels(3)
    random.seed(1)
    assert torch.equal(first, labels(3))
