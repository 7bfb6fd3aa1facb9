"""What a new user hits (issue 15): file modes, non-BERT model directories, input checked before
the model loads, non-UTF-8 Chinese text, outputs that would clobber, the Python API."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

from bertkit.core import modelio
from bertkit.core.errors import BertkitError
from conftest import cli


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("suffix", [".jsonl", ".npy", ".tsv"])
def test_outputs_get_a_new_files_mode_and_keep_an_existing_one(tmp_path, tiny_model, umask_022, suffix):
    (tmp_path / "in.txt").write_text("北京\n你好\n", encoding="utf-8")
    out = tmp_path / f"v{suffix}"
    cli("embed", str(tmp_path / "in.txt"), "-m", str(tiny_model), "-o", str(out), check=True)
    assert mode(out) == 0o644
    os.chmod(out, 0o640)
    cli("embed", str(tmp_path / "in.txt"), "-m", str(tiny_model), "-o", str(out), "--overwrite", check=True)
    assert mode(out) == 0o640


def test_saved_model_files_get_a_new_files_mode(tmp_path, tiny_model, umask_022):
    from transformers import AutoModel

    modelio.save_pretrained(AutoModel.from_pretrained(tiny_model), None, tmp_path / "m")
    assert mode(tmp_path / "m" / "model.safetensors") == 0o644
    from bertkit.core.weights import save_tensors
    import torch

    save_tensors({"x": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert mode(tmp_path / "w.safetensors") == 0o644


def test_a_model_that_is_not_bert_family_is_one_error_line(tmp_path, tiny_model):
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps(config | {"model_type": "gpt2", "architectures": ["GPT2Model"]}))
    for args in (["embed", "-"], ["correct", "-"], ["predict", "-"], ["eval", "-"]):
        result = cli(*args, "-m", str(gpt2), input="北京\n".encode())
        assert result.returncode == 1 and b"not a BERT-family encoder" in result.stderr, (args, result.stderr)
        assert b"Traceback" not in result.stderr


def one_error_line(result, *fragments, code: int = 1) -> str:
    err = result.stderr.decode()
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.returncode == code and len(lines) == 1 and lines[0].startswith("error:"), (result.returncode, err)
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def test_input_errors_come_before_any_model_loads(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(modelio, "load_model", no_model)
    monkeypatch.setattr(modelio, "resolve_model", no_model)
    (tmp_path / "empty.txt").write_text("")
    for path, says in [(tmp_path / "missing.txt", "no such file"), (tmp_path, "is a directory"),
                       (tmp_path / "empty.txt", "is empty")]:
        for args in (["embed", str(path)], ["correct", str(path)], ["predict", str(path), "-m", "x"],
                     ["eval", str(path)], ["train", str(path), "-o", str(tmp_path / "out")],
                     ["pretrain", str(path), "-o", str(tmp_path / "out")]):
            one_error_line(cli(*args), says)


GBK_TEXT = "我们今天去电脑城买东西\n北京欢迎你\n"


def test_gbk_input_gets_a_hint_and_reads_with_encoding(tmp_path, tiny_model):
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes(GBK_TEXT.encode("gbk"))
    line = one_error_line(cli("embed", str(gbk), "-m", str(tiny_model)), "GBK", "--encoding gb18030", "iconv")
    assert "gbk.txt:1" in line
    out = cli("embed", str(gbk), "-m", str(tiny_model), "--encoding", "gb18030", check=True)
    ref = cli("embed", "-", "-m", str(tiny_model), input=GBK_TEXT.encode(), check=True)
    assert out.stdout == ref.stdout and len(out.stdout.decode().splitlines()) == 2
    one_error_line(cli("embed", str(gbk), "--encoding", "utf-16"), "one-byte newlines")
    one_error_line(cli("embed", str(gbk), "--encoding", "klingon"), "not an encoding")


def test_existing_outputs_need_overwrite(tmp_path, tiny_model, news_data):
    (tmp_path / "in.txt").write_text("北京\n", encoding="utf-8")
    out = tmp_path / "v.tsv"
    out.write_text("keep me\n")
    one_error_line(cli("embed", str(tmp_path / "in.txt"), "-m", str(tiny_model), "-o", str(out)), "--overwrite")
    assert out.read_text() == "keep me\n"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    train, dev = news_data
    one_error_line(cli("train", str(train), "-m", str(tiny_model), "-o", str(model_dir), "--max-steps", "1"),
                   "--overwrite", "--resume")
    assert (model_dir / "config.json").read_text() == "{}"
    new = cli("embed", str(tmp_path / "in.txt"), "-m", str(tiny_model), "-o", str(tmp_path / "new" / "v.tsv"), check=True)
    assert b"creating directory" in new.stderr


def test_correct_refuses_a_non_corrector_before_any_work(tmp_path, tiny_model, monkeypatch):
    import bertkit.correct.runner as runner

    def no_confusion(*args, **kwargs):
        raise AssertionError("confusion sets were built for a model that is no corrector")

    monkeypatch.setattr(runner, "read_confusion", no_confusion)
    one_error_line(cli("correct", "-", "-m", str(tiny_model), input="北京\n".encode()), "not a spelling corrector")


def test_usage_errors_exit_2_and_help_is_plain():
    one_error_line(cli("embed"), "INPUT", code=2)
    one_error_line(cli("correct"), "INPUT", code=2)
    help_text = cli("embed", "--help").stdout.decode()
    assert "<bool>" not in help_text and "[[INPUT]]" not in help_text and "[INPUT]" in help_text
    assert "-o, --output FILE" in cli("predict", "--help").stdout.decode()
    assert "-o, --output-dir DIR" in cli("train", "--help").stdout.decode()


def test_one_eval_for_every_kind_and_old_spellings_still_work(tmp_path, tiny_model):
    pairs = tmp_path / "sts.tsv"
    pairs.write_text("北京\t北京欢迎你\t4.0\n你好\t世界\t1.0\n我爱北京\t我爱你\t2.5\n", encoding="utf-8")
    new = cli("eval", str(pairs), "-m", str(tiny_model), "--pooling", "mean", check=True)
    old = cli("embed", "--eval", str(pairs), "-m", str(tiny_model), "--pooling", "mean", check=True)
    assert json.loads(new.stdout) == json.loads(old.stdout) and "mean" in json.loads(new.stdout)
    assert b"deprecated" in old.stderr and b"bertkit eval" in old.stderr
    one_error_line(cli("eval", str(pairs), "-m", str(tiny_model), "--tune"), "--task correct", code=2)


def test_training_takes_compute_and_old_bf16_says_so(tmp_path, tiny_model, news_data, monkeypatch):
    from bertkit.training import loop

    seen = []
    monkeypatch.setattr(loop.Trainer, "fit", lambda self: seen.append(self.cfg.bf16))
    train, dev = news_data
    for flag, out in (["--compute", "bfloat16"], "a"), (["--bf16"], "b"), (["--compute", "float32"], "c"):
        run = cli("train", str(train), "-m", str(tiny_model), "-o", str(tmp_path / out), "--max-steps", "1", *flag)
        assert run.returncode == 0, run.stderr
        assert (b"--bf16 is deprecated" in run.stderr) == (flag == ["--bf16"])
    assert seen == [True, True, False]
    one_error_line(cli("train", str(train), "-o", str(tmp_path / "d"), "--compute", "float64"), "--compute")


README = modelio.REPO_ROOT / "README.md"


def python_examples() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python\n"):text.index("\n## ", text.index("## Python\n") + 1)]
    blocks = section.split("```python\n")[1:]
    assert blocks, "the README's Python section has no example"
    return "\n".join(block[:block.index("```")] for block in blocks)


def test_readme_python_example_runs(tmp_path, tiny_model, news_data, monkeypatch, capsys):
    train, dev = news_data
    cli("train", str(train), "-m", str(tiny_model), "-o", str(tmp_path / "runs" / "news"), "--max-steps", "2",
        check=True)
    monkeypatch.chdir(tmp_path)
    exec(compile(python_examples(), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("我们今天去电脑城买东西 [(6, '恼', '脑')]")
    assert -1 <= float(printed[1]) <= 1
    assert len(printed) == 4 and printed[2].split()[0] in ("sports", "finance")


def test_overwrite_starts_a_training_run_afresh(tmp_path, tiny_model, news_data):
    train, dev = news_data
    out = tmp_path / "run"
    base = ("train", str(train), "-m", str(tiny_model), "-o", str(out), "--max-steps", "2", "--batch-size", "8")
    cli(*base, check=True)
    one_error_line(cli(*base), "--overwrite")
    again = cli(*base, "--overwrite", "--seed", "7", check=True)
    assert b"removed the previous run" in again.stderr
    assert json.loads((out / "trainer_state.json").read_text())["config"]["seed"] == 7
