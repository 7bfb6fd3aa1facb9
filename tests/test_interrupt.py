"""An interrupted training run: its output directory loads from the first evaluation on, and the
messages say where the run stopped and how to go on."""

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli

# 12 steps: checkpoints at 3, 6, 9, 12; evaluations at 6 and 12
TRAIN_ARGS = ["--max-steps", "12", "--save-every", "3", "--eval-every", "6", "--batch-size", "8", "--seed", "7"]


def _signal_at(monkeypatch, step_number: int, signum=signal.SIGINT) -> None:
    """A real signal to this process as optimizer step ``step_number`` begins, like Ctrl-C."""
    from bertkit.training import loop

    original = loop.Trainer._step

    def step(self, model, optimizer, scheduler, step, order):
        if step == step_number - 1:
            os.kill(os.getpid(), signum)
        return original(self, model, optimizer, scheduler, step, order)

    monkeypatch.setattr(loop.Trainer, "_step", step)


def _train(tiny_model, news_data, out, *extra):
    train, dev = map(str, news_data)
    return cli("train", train, "--dev", dev, "-m", str(tiny_model), "-o", str(out), *TRAIN_ARGS, *extra)


def test_ctrl_c_after_the_first_evaluation_leaves_the_best_model_loadable(tmp_path, tiny_model, news_data, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    _signal_at(monkeypatch, 8)
    stopped = _train(tiny_model, news_data, out)
    assert stopped.returncode == 130
    assert stopped.stderr.decode().strip().splitlines()[-1] == \
        "error: interrupted at step 7 of 12; --resume continues from step 6, the last checkpoint"

    # the step-6 best, as transformers and bertkit load it, and nothing half-written beside it
    state = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    for name, tensor in load_file(str(out / "checkpoints" / "best" / "model.safetensors")).items():
        assert torch.equal(state[name], tensor), name
    lines = cli("predict", "-", "-m", str(out), input="球队比赛冠军\n股票基金银行\n".encode(), check=True).stdout
    assert len(lines.decode().splitlines()) == 2
    assert not any(p.name.endswith((".tmp", ".old")) for p in out.rglob("*"))

    monkeypatch.undo()
    resumed = _train(tiny_model, news_data, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()


def test_ctrl_c_before_the_first_evaluation_and_loading_says_to_resume(tmp_path, tiny_model, news_data, monkeypatch):
    out = tmp_path / "run"
    _signal_at(monkeypatch, 5)
    stopped = _train(tiny_model, news_data, out)
    assert stopped.returncode == 130
    assert "error: interrupted at step 4 of 12; --resume continues from step 3" in stopped.stderr.decode()
    assert not (out / "config.json").exists()

    failed = cli("predict", "-", "-m", str(out), input="球队比赛冠军\n".encode())
    assert failed.returncode == 1
    err = failed.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(out / "checkpoints") in err and "--resume" in err and "no model yet" in err


def test_without_a_dev_set_each_evaluation_updates_the_model(tmp_path, tiny_model, news_data, monkeypatch):
    """No best to keep: the output directory gets the current weights at each evaluation."""
    from bertkit.classify.runner import Classifier
    from bertkit.classify.task import run_training
    from bertkit.training import TrainConfig, loop

    original = loop.Trainer._step

    def step(self, model, optimizer, scheduler, step, order):
        if step == 3:  # after the evaluation of step 2, before the first checkpoint (4)
            raise KeyboardInterrupt
        return original(self, model, optimizer, scheduler, step, order)

    monkeypatch.setattr(loop.Trainer, "_step", step)
    out = tmp_path / "nodev"
    cfg = TrainConfig(out, max_steps=12, eval_every=2, save_every=4, batch_size=8, seed=7)
    with pytest.raises(loop.TrainingInterrupted) as stopped:
        run_training(str(news_data[0]), None, str(tiny_model), cfg)
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == "interrupted at step 3 of 12; it had no checkpoint yet: run the command again to start over"
    assert not (out / "checkpoints" / "best").exists()
    assert Classifier.load(str(out)).labels == ["finance", "sports"]


def test_sigterm_stops_training_like_ctrl_c(tmp_path, tiny_model, news_data, monkeypatch):
    def unhandled(signum, frame):  # what SIGTERM would do to this test run without the loop's handler
        raise RuntimeError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        _signal_at(monkeypatch, 2, signal.SIGTERM)
        stopped = _train(tiny_model, news_data, tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the loop restores the handler it found
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert stopped.stderr.decode().strip().splitlines()[-1] == \
        "error: interrupted at step 1 of 12; it had no checkpoint yet: run the command again to start over"


def test_a_model_update_lets_no_signal_in_between_its_files(tmp_path, monkeypatch):
    """A model's files are swapped in one by one: Ctrl-C waits until all are in, and the other
    entries of the directory (a run's checkpoints) stay."""
    from bertkit.core import files

    directory = tmp_path / "run"
    (directory / "checkpoints" / "last").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_text("old")
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        if not renamed:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the first file moves in
        real_replace(src, dst)
        renamed.append(os.path.basename(dst))

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_entries(directory, last="config.json") as staging:
            for name in ("config.json", "model.safetensors", "vocab.txt"):
                (staging / name).write_text("new")
    assert renamed[-1] == "config.json" and len(renamed) == 3
    assert all((directory / name).read_text() == "new" for name in ("config.json", "model.safetensors", "vocab.txt"))
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoints", "config.json", "model.safetensors", "vocab.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("names, expected_last", [
    (("config.json", "bertkit.json", "model.safetensors", "vocab.txt"), ["bertkit.json", "config.json"]),
    (("lattice_config.json", "bertkit.json", "model.safetensors", "words.txt"), ["bertkit.json"]),  # no config.json
])
def test_atomic_entries_moves_the_last_names_in_their_order_after_the_rest(tmp_path, monkeypatch, names, expected_last):
    """The training loop's mid-run save lists ("bertkit.json", "config.json"): a BERT directory
    gets config.json last, a Lattice-BERT one (which has none) its manifest."""
    from bertkit.core import files

    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        renamed.append(os.path.basename(dst))

    monkeypatch.setattr(files.os, "replace", replace)
    with files.atomic_entries(tmp_path / "out", last=("bertkit.json", "config.json")) as staging:
        for name in names:
            (staging / name).write_text("new")
    assert renamed[-len(expected_last):] == expected_last and len(renamed) == len(names)
