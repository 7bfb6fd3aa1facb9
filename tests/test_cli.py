"""Through the real CLI: a real job, and bad input that must fail in one line.

Most run in this process (``cli``); the shipped-model job runs as a new process, as a user would."""

import json
import re

import pytest

from conftest import cli, run_cli, synthetic_news, write_tsv


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, news_data):
    out = tmp_path_factory.mktemp("trained") / "clf"
    train, dev = news_data
    cli("train", str(train), "--dev", str(dev), "-m", str(tiny_model), "-o", str(out),
            "--epochs", "6", "--batch-size", "8", "--lr", "2e-3", check=True)
    return out


def test_train_learns_and_eval_reports_json(trained, news_data):
    proc = cli("eval", str(news_data[1]), "-m", str(trained), check=True)
    scores = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert scores["n"] == 32
    assert scores["accuracy"] >= 0.9, scores
    assert 0 <= scores["macro_f1"] <= 1


def test_predict_is_line_aligned_with_blank_and_long_lines(trained):
    long_line = "球队比赛冠军" * 40  # 240 characters: beyond the tiny model's 64 positions
    text = f"股票基金银行\n\n{long_line}\n进球教练\n"
    proc = cli("predict", "-", "-m", str(trained), input=text.encode(), check=True)
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 4
    records = [json.loads(l) for l in lines]
    assert records[0]["label"] == "finance"
    assert records[2]["label"] == "sports"  # all windows of the long line voted
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in records)


def test_predict_to_file(trained, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("股票基金\n球队比赛\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = cli("predict", str(src), "-m", str(trained), "-o", str(out), check=True)
    assert proc.stdout == b""
    assert len(out.read_text().splitlines()) == 2


def _assert_one_line_error(proc, *fragments):
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model, news_data):
    train, dev = news_data
    base = ["-m", str(tiny_model), "-o", str(tmp_path / "run"), "--max-steps", "1"]

    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    _assert_one_line_error(cli("train", str(empty), *base), "empty")

    blank = tmp_path / "blank.tsv"
    blank.write_text("label\ttext\nsports\t球队\n\nfinance\t股票\n", encoding="utf-8")
    _assert_one_line_error(cli("train", str(blank), *base), "blank.tsv:3", "blank line")

    bad_utf8 = tmp_path / "bad.tsv"
    bad_utf8.write_bytes("label\ttext\nsports\t球队\n".encode() + b"finance\t\xe8\xff\n")
    _assert_one_line_error(cli("train", str(bad_utf8), *base), "bad.tsv:3", "invalid UTF-8")

    binary = tmp_path / "data.tsv"
    binary.write_bytes(bytes(range(256)) * 4)
    _assert_one_line_error(cli("train", str(binary), *base), "binary")

    _assert_one_line_error(cli("predict", str(train), "-m", str(tiny_model)), "not a fine-tuned classifier")
    _assert_one_line_error(cli("train", str(train), *base, "--batch-size", "0"), "--batch-size")

    _assert_one_line_error(cli("train", str(train), "-m", str(tmp_path / "no-model"), "-o", str(tmp_path / "x")),
                           "does not exist")

    unseen = write_tsv(tmp_path / "dev_unseen.tsv", synthetic_news(4, 3) + [("weather", "的了在是")])
    _assert_one_line_error(cli("train", str(train), "--dev", str(unseen), *base), "weather", "dev_unseen.tsv:6")

    header_only = write_tsv(tmp_path / "header.tsv", [])
    _assert_one_line_error(cli("train", str(header_only), *base), "no examples")

    one_label = write_tsv(tmp_path / "one.tsv", [("sports", "球队")] * 10)
    _assert_one_line_error(cli("train", str(one_label), *base), "only one label")

    for option in (["--synthetic", str(train)], ["--plain"]):  # options of --task correct
        _assert_one_line_error(cli("train", str(train), *base, *option), "is an option of --task correct, not of --task classify")
    _assert_one_line_error(cli("train", str(train), *base, "--fix-tags"), "--fix-tags is an option of --task ner")
    _assert_one_line_error(cli("train", str(train), *base, "--task", "tag"), "--task must be classify or correct or ner")


def test_train_help_lists_the_task_options_after_task_and_the_training_options_last():
    rows = [re.match(r"  (?:-\w, )?(--[\w-]+)", line) for line in cli("train", "--help", check=True).stdout.decode().splitlines()]
    flags = [row.group(1) for row in rows if row]  # an option's own row, not its wrapped help
    assert flags.index("--task") < flags.index("--synthetic") < flags.index("--random") < flags.index("--save-fp16")
    assert flags.index("--max-length") < flags.index("--epochs") < flags.index("--seed")
    import inspect

    from bertkit.cli.pretrain import pretrain  # its own defaults for shared options, as Typer reads them
    defaults = {n: p.default for n, p in inspect.signature(pretrain).parameters.items()}
    assert (defaults["epochs"], defaults["batch_size"], defaults["lr"], defaults["warmup"]) == (1.0, 64, 5e-4, 0.06)


def test_help_lists_only_working_commands():
    proc = cli("--help", check=True)
    commands = proc.stdout.decode().split("Commands:\n")[1].splitlines()
    listed = {line.split()[0] for line in commands if line.startswith("  ") and not line.startswith("   ")}
    assert listed == {"pretrain", "train", "predict", "eval", "embed", "correct", "distill", "contrast", "compress"}
    for command in listed:
        assert cli(command, "--help").returncode == 0


def test_shipped_default_model_fine_tunes_and_predicts(tmp_path):
    from bertkit.core.modelio import models_root

    demo = models_root().parent / "demo"
    out = tmp_path / "news"
    run_cli("train", str(demo / "news_train.tsv"), "-o", str(out), "--max-steps", "3", "--batch-size", "8", check=True)
    proc = run_cli("predict", str(demo / "news_texts.txt"), "-m", str(out), check=True)
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len((demo / "news_texts.txt").read_text(encoding="utf-8").splitlines())
    assert all(json.loads(l)["label"] in {"finance", "realty", "stocks", "education", "science", "society",
                                          "politics", "sports", "game", "entertainment"} for l in lines)
