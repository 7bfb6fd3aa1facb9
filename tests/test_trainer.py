"""The shared training loop: resume after a kill, and DDP under torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli

TRAIN_ARGS = ["--max-steps", "12", "--save-every", "3", "--eval-every", "6", "--batch-size", "8", "--seed", "7"]

# Runs the real CLI, but SIGKILLs the process as step 8 begins: after the step-6 checkpoint,
# before the step-9 one, like a machine that dies mid-run.
KILL_AT_STEP_8 = """
import os, signal, sys
import bertkit.training.loop as t
original = t.Trainer._step
def step(self, model, optimizer, scheduler, step, order):
    if step == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, model, optimizer, scheduler, step, order)
t.Trainer._step = step
from bertkit.cli import main
sys.argv = ["bertkit"] + sys.argv[1:]
main()
"""


def _weights(directory):
    return load_file(str(directory / "model.safetensors"))


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_model, news_data):
    train, dev = map(str, news_data)
    common = ["train", train, "--dev", dev, "-m", str(tiny_model), *TRAIN_ARGS]
    straight = tmp_path / "straight"
    cli(*common, "-o", str(straight), check=True)

    resumed = tmp_path / "resumed"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_8, *common, "-o", str(resumed)],
                            capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9
    state = json.loads((resumed / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 6
    # the output directory already holds the step-6 best, ready to use
    shipped, best = _weights(resumed), _weights(resumed / "checkpoints" / "best")
    assert shipped.keys() == best.keys() and all((shipped[name] == best[name]).all() for name in best)

    again = cli(*common, "-o", str(resumed))
    assert again.returncode != 0 and b"--resume" in again.stderr  # refuses to clobber a run
    cli(*common, "-o", str(resumed), "--resume", check=True)

    # the last weights, not only the shipped best-on-dev ones, which may come from before the kill
    for where in (lambda d: d / "checkpoints" / "last", lambda d: d):
        a, b = _weights(where(straight)), _weights(where(resumed))
        assert a.keys() == b.keys()
        for name in a:
            assert (a[name] == b[name]).all(), name
    sa = json.loads((straight / "trainer_state.json").read_text())
    sb = json.loads((resumed / "trainer_state.json").read_text())
    assert sa["step"] == sb["step"] == 12
    assert sa["best_metric"] == sb["best_metric"]


def test_train_under_torchrun_two_ranks_agree_with_recompute(tmp_path, tiny_model, news_data):
    train, dev = map(str, news_data)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bertkit.cli", "train", train, "--dev", dev,
         "-m", str(tiny_model), "-o", str(out), "--epochs", "2", "--batch-size", "8", "--grad-accum", "2",
         "--recompute", "full"],
        capture_output=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    checksums = state["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    # 96 examples / 2 ranks / (8 x 2 accumulated) = 3 steps an epoch, 2 epochs
    assert state["step"] == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]
    assert not any(p.name.endswith((".tmp", ".old")) for p in out.rglob("*"))
    assert (out / "model.safetensors").exists()


def test_max_minutes_stops_at_a_checkpoint_and_resume_finishes(tmp_path, tiny_model, news_data, monkeypatch):
    from bertkit.training import loop as trainer
    from bertkit.classify.task import run_training

    clock = iter(range(0, 10_000, 30))  # each look at the clock: 30 s later
    monkeypatch.setattr(trainer.time, "time", lambda: next(clock))
    train, dev = map(str, news_data)
    out = tmp_path / "budget"
    cfg = lambda **kw: trainer.TrainConfig(out, max_steps=12, save_every=5, eval_every=6, batch_size=8, seed=7, **kw)
    run_training(train, dev, str(tiny_model), cfg(max_minutes=2.0))
    state = json.loads((out / "trainer_state.json").read_text())
    assert 1 < state["step"] < 12  # stopped by the clock, not by max_steps
    assert json.loads((out / "checkpoints" / "last" / "state.json").read_text())["step"] == state["step"]
    assert state["history"][-1]["step"] == state["step"]  # evaluated where it stopped
    assert (out / "model.safetensors").exists()

    run_training(train, dev, str(tiny_model), cfg(resume=True))
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 12


def test_weights_with_tied_and_buffer_sharing_parameters_round_trip(tmp_path):
    import torch
    from torch import nn

    from bertkit.core.weights import load_weights, save_weights

    class Packed(nn.Module):  # like cuDNN's GRU on a GPU: parameters are views of one buffer
        def __init__(self, start: float):
            super().__init__()
            flat = torch.arange(start, start + 12.0)
            self.a = nn.Parameter(flat[:6].view(2, 3))
            self.b = nn.Parameter(flat[6:])
            self.head = nn.Linear(3, 2, bias=False)
            self.tied = nn.Linear(3, 2, bias=False)
            self.tied.weight = self.head.weight  # one tensor, two names

    source, target = Packed(0.0), Packed(100.0)
    save_weights(source, tmp_path / "w.safetensors")
    load_weights(target, tmp_path / "w.safetensors")
    for (name, x), (_, y) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(x, y), name
    assert target.tied.weight is target.head.weight
    with pytest.raises(ValueError):
        load_weights(nn.Linear(3, 2), tmp_path / "w.safetensors")


def test_lr_scale_gives_prefixed_parameters_their_own_rate(tmp_path):
    from bertkit.training import TrainConfig, build_optimizer

    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(3, 3), "detector": torch.nn.Linear(3, 1)})
    cfg = TrainConfig(tmp_path, lr=1e-4, weight_decay=0.01, lr_scale={"detector": 10.0})
    groups = build_optimizer(model, cfg).param_groups
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_param[id(model["encoder"].weight)] == (1e-4, 0.01)
    assert by_param[id(model["encoder"].bias)] == (1e-4, 0.0)
    assert by_param[id(model["detector"].weight)] == pytest.approx((1e-3, 0.01))
    assert by_param[id(model["detector"].bias)] == pytest.approx((1e-3, 0.0))
    assert groups[0]["lr"] == 1e-4  # the first group is the base rate the progress bar shows
    # without scales: the two groups of the BERT recipe, as before
    assert len(build_optimizer(model, TrainConfig(tmp_path, lr=1e-4)).param_groups) == 2


def test_hooks_and_a_task_loss_extend_the_loop_without_editing_it(tmp_path):
    """A pruning-style hook re-applies a mask after every optimizer step; a task's own loss
    replaces model(**batch); evaluation hooks add metrics before the best model is picked."""
    from torch import nn

    from bertkit.core.weights import unwrap
    from bertkit.training import TrainConfig, Trainer, TrainerHook

    class Task:
        def __init__(self):
            torch.manual_seed(0)
            self.model = nn.Linear(4, 1)
            self.losses = 0

        def collate(self, items, generator):
            x = torch.stack([torch.tensor(i, dtype=torch.float32) for i in items])
            return {"x": x, "y": x.sum(1, keepdim=True)}

        def loss(self, model, batch):
            self.losses += 1
            return ((model(batch["x"]) - batch["y"]) ** 2).mean()

        def evaluate(self, model):
            return {"neg_bias": -abs(float(model.bias))}

        def save(self, model, directory):
            torch.save({}, directory / "saved.pt")

    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    events = []

    class Prune(TrainerHook):
        def after_optimizer_step(self, trainer, model, step):
            with torch.no_grad():
                unwrap(model).weight.mul_(mask)
            events.append(("step", step))

        def on_evaluate(self, trainer, model, step, metrics):
            metrics["pruned_share"] = float((unwrap(model).weight == 0).float().mean())
            events.append(("eval", step))

    task = Task()
    examples = [[float(i % 3), 1.0, float(i % 5), 2.0] for i in range(32)]
    cfg = TrainConfig(tmp_path / "run", max_steps=4, batch_size=8, eval_every=2, lr=0.1, metric="neg_bias")
    Trainer(task, examples, cfg, hooks=[Prune()]).fit()
    assert task.losses == 4
    assert (task.model.weight * (1 - mask) == 0).all()
    assert events == [("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4)]
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["history"]
    assert [h["pruned_share"] for h in history] == [0.5, 0.5]


def test_the_loop_applies_recompute_from_its_config(tmp_path, tiny_model, news_data, capsys):
    from bertkit.classify.task import run_training
    from bertkit.training import RecomputeOptions, TrainConfig

    out = tmp_path / "rc"
    cfg = TrainConfig(out, max_steps=1, batch_size=8, recompute=RecomputeOptions(policy="full"))
    run_training(str(news_data[0]), None, str(tiny_model), cfg)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["config"]["recompute"]["policy"] == "full" and state["config"]["extra"]["recompute"] == "full"
    assert "activation recomputation: full" in capsys.readouterr().err
