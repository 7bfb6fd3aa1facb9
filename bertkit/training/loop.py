"""The one training loop every bertkit command uses.

A *task* (pretraining, classification, ...) supplies the model, how to turn examples into a
batch, how to evaluate and how to save a loadable model; this module owns everything else:
AdamW with warmup + linear decay, gradient accumulation, optional bf16 autocast, activation
recomputation (``TrainConfig.recompute``), periodic evaluation, best/last checkpoints written
atomically, ``--resume``, seeding, the progress bar, and DistributedDataParallel under
``torchrun`` (gloo on CPU, nccl on GPU).

Techniques extend the loop without editing it:
- ``task.loss(model, batch)``, if the task defines it, replaces ``model(**batch)``'s loss
  (e.g. a distillation loss over per-layer outputs);
- hooks (:class:`TrainerHook`, from ``Trainer(..., hooks=...)`` or the task's ``hooks``) run after
  each optimizer step (e.g. re-applying pruning masks), at each step's end, and after each
  evaluation (adding metrics before the best model is picked).

Reproducibility contract: the data order of epoch ``e`` is a permutation drawn from
``seed + e``; the randomness a task uses to build the batch of step ``s`` (e.g. MLM masks) comes
from a generator seeded by ``(seed, s, micro-batch, rank)``; dropout uses the global torch RNG,
whose state is saved with each checkpoint.  A run killed after a checkpoint and resumed with
``resume=True`` therefore reaches the same weights as an uninterrupted run.

An interrupted run leaves a usable output directory: from the first evaluation on it holds the
model the run would ship if it ended there (the best so far), swapped in atomically whenever that
changes.  Ctrl-C or SIGTERM ends :meth:`Trainer.fit` with :class:`TrainingInterrupted`, which says
at which step and how to go on.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from ..core.device import default_device, module_device
from ..core.errors import BertkitError
from ..core.files import atomic_entries, write_json_atomic
from ..core.progress import log, training_progress
from ..core.weights import load_weights, unwrap
from .checkpoints import all_rng_states, checkpoint_dir, load_checkpoint, save_checkpoint, save_model_weights
from .distributed import any_rank, barrier, gather, parameter_checksum, world
from .recompute import RecomputeOptions, setup_recompute


@dataclass
class TrainConfig:
    """Hyper-parameters of the loop; ``batch_size`` is per process and per micro-batch."""

    output_dir: Path
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    bf16: bool = False
    eval_every: int = 0  # optimizer steps between evaluations; 0 = once per epoch
    save_every: int = 0  # optimizer steps between resumable checkpoints; 0 = at each evaluation
    seed: int = 42
    resume: bool = False
    metric: str | None = None  # key of evaluate()'s result to pick the best model (higher wins)
    log_every: int = 20
    max_minutes: float | None = None  # wall-clock budget of this run; stops early, resumable
    overwrite: bool = False  # start afresh where a previous run left checkpoints (else refused)
    # parameter-name prefix -> multiple of ``lr``: freshly initialised parts beside a pretrained
    # encoder (e.g. the spelling corrector's detection GRU) learn at a higher rate
    lr_scale: dict[str, float] = field(default_factory=dict)
    # activation recomputation, applied by the loop to the task's model before training
    recompute: RecomputeOptions = field(default_factory=RecomputeOptions)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in trainer_state.json


class TrainingInterrupted(BertkitError):
    """Ctrl-C or SIGTERM stopped training.  Not a KeyboardInterrupt: typer turns those into a
    silent exit 130, and the user needs the step and how to go on; ``exit_code`` is the shell's
    (128 + the signal)."""

    def __init__(self, step: int, total: int, saved: int | None, signum: int = signal.SIGINT):
        how = (f"--resume continues from step {saved}, the last checkpoint" if saved is not None else
               "it had no checkpoint yet: run the command again to start over")
        super().__init__(f"interrupted at step {step} of {total}; {how}")
        self.step, self.exit_code = step, 128 + signum


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop training alike."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (``kill``, a job scheduler, torchrun stopping its workers) stops training as Ctrl-C
    does; handlers are set from the main thread only, elsewhere SIGTERM keeps its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainTask(Protocol):
    """What a technique gives the loop.

    ``model(**batch)`` must return the loss (a tensor, or an object with ``.loss``), unless the
    task defines ``loss(model, batch) -> tensor``.  Optional: ``length(example)`` (for the
    recompute profiler's worst-case batch), ``hooks`` (a list of :class:`TrainerHook`).
    """

    model: nn.Module

    def collate(self, examples: Sequence[Any], generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def save(self, model: nn.Module, directory: Path) -> None: ...


class TrainerHook:
    """Callbacks into the loop; override what you need (each default does nothing).

    ``model`` is the model being trained (DDP-wrapped under torchrun: use
    :func:`bertkit.core.weights.unwrap` for its modules); ``step`` counts optimizer steps done.
    """

    def on_fit_start(self, trainer: "Trainer", model: nn.Module) -> None:
        """Before the first step (after a resume's checkpoint is loaded)."""

    def after_optimizer_step(self, trainer: "Trainer", model: nn.Module, step: int) -> None:
        """Right after ``optimizer.step()``, e.g. to re-apply pruning masks to the weights."""

    def on_step_end(self, trainer: "Trainer", model: nn.Module, step: int, loss: torch.Tensor) -> None:
        """After a whole optimizer step; ``loss`` stays on the device (read it only when needed)."""

    def on_evaluate(self, trainer: "Trainer", model: nn.Module, step: int, metrics: dict) -> None:
        """After evaluation, before the best model is picked: may add or change ``metrics``."""


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights, as in the BERT recipe; the
    parameters under a ``cfg.lr_scale`` prefix get their own groups at that multiple of ``lr``."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        scale = next((f for prefix, f in cfg.lr_scale.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    # the same order every run, so a resumed optimizer state matches its groups; the base rate
    # first, as the progress bar reports the first group's rate
    order = sorted(groups, key=lambda g: (g[0] != 1.0, g[0], not g[1]))
    return torch.optim.AdamW([{"params": groups[g], "lr": cfg.lr * g[0], "weight_decay": cfg.weight_decay if g[1] else 0.0}
                              for g in order], lr=cfg.lr)


def warmup_linear(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


# ---------------------------------------------------------------- the loop


class Trainer:
    """Runs ``task`` over ``examples`` according to ``cfg``; see the module docstring."""

    def __init__(self, task: TrainTask, examples: Sequence[Any], cfg: TrainConfig,
                 hooks: Sequence[TrainerHook] = ()):
        self.task, self.examples, self.cfg = task, examples, cfg
        self.hooks = [*hooks, *getattr(task, "hooks", ())]
        # the recompute profiler measures the model as it will train; --find-batch-size may
        # change cfg.batch_size, so the step count below follows it
        setup_recompute(task, examples, cfg, cfg.recompute)
        for name in ("batch_size", "grad_accum"):
            if getattr(cfg, name) < 1:
                raise BertkitError(f"--{name.replace('_', '-')} must be at least 1")
        if cfg.lr <= 0:
            raise BertkitError("--lr must be positive")
        self.rank, self.world_size = world()
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        per_rank = len(examples) // self.world_size
        self.steps_per_epoch = per_rank // (cfg.batch_size * cfg.grad_accum)
        if self.steps_per_epoch == 0:
            need = cfg.batch_size * cfg.grad_accum * self.world_size
            raise BertkitError(f"{len(examples)} training examples are fewer than one step needs ({need}); lower --batch-size")
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    # -- data

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed + epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def _micro_batches(self, step: int, order: list[int]):
        cfg = self.cfg
        in_epoch = step % self.steps_per_epoch
        for micro in range(cfg.grad_accum):
            start = (in_epoch * cfg.grad_accum + micro) * cfg.batch_size
            idx = order[start : start + cfg.batch_size]
            seed = ((cfg.seed * 1_000_003 + step) * 97 + micro) * 131 + self.rank
            gen = torch.Generator().manual_seed(seed % (2**63))
            yield self.task.collate([self.examples[i] for i in idx], gen)

    # -- one step

    def _forward_loss(self, model, batch) -> torch.Tensor:
        ctx = torch.autocast(device_type=module_device(model).type, dtype=torch.bfloat16) if self.cfg.bf16 else contextlib.nullcontext()
        with ctx:
            if hasattr(self.task, "loss"):
                return self.task.loss(model, batch)
            out = model(**batch)
        return out if isinstance(out, torch.Tensor) else out["loss"]  # HF outputs are dicts too

    def _step(self, model, optimizer, scheduler, step: int, order: list[int]) -> torch.Tensor:
        # the loss stays on the device: reading it would make the host wait for the GPU, which
        # could otherwise run this step while the host builds the next batch
        model.train()
        total = 0.0
        batches = list(self._micro_batches(step, order))
        device = module_device(model)
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = i == len(batches) - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else model.no_sync():
                loss = self._forward_loss(model, batch) / len(batches)
                loss.backward()
            total = total + loss.detach()
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        self._call("after_optimizer_step", model, step + 1)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    # -- evaluation and saving

    def _evaluate(self, model, step: int) -> dict[str, float]:
        metrics = {}
        if self.rank == 0 and hasattr(self.task, "evaluate"):
            model.eval()
            with torch.inference_mode():
                metrics = self.task.evaluate(unwrap(model))
        self._call("on_evaluate", model, step, metrics)
        return metrics

    def _is_better(self, metrics: dict, best: float | None) -> bool:
        key = self.cfg.metric
        if not key or key not in metrics:
            return False
        return best is None or metrics[key] > best

    def fit(self) -> dict:
        """Train to the end (or to ``--max-minutes``) and save; see the module docstring."""
        self.state: dict = {"step": 0, "best_metric": None, "best_step": None, "history": []}
        self.saved_step: int | None = None  # the step of the newest resumable checkpoint
        try:
            with _sigterm_interrupts():
                return self._fit()
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            raise TrainingInterrupted(self.state["step"], self.total_steps, self.saved_step, signum) from None

    def _fit(self) -> dict:
        cfg, task = self.cfg, self.task
        torch.manual_seed(cfg.seed + self.rank)  # ranks must not share dropout masks
        model = task.model.to(default_device())
        if self.world_size > 1:
            device_ids = [module_device(model).index] if torch.cuda.is_available() else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        optimizer = build_optimizer(model, cfg)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(self.total_steps, warmup))

        state = self.state
        last = self.ckpt_dir / "last"
        found = checkpoint_dir(last)  # every rank checks, so every rank fails alike
        if cfg.resume:
            if found is None:
                raise BertkitError(f"--resume: no checkpoint in {last}")
            self.state = state = load_checkpoint(found, model, optimizer, scheduler, self.rank, self.world_size)
            self.saved_step = state["step"]
            log(f"resumed from {found} at step {state['step']}", rank=self.rank)
        elif found is not None or (self.out / "trainer_state.json").exists():
            if not cfg.overwrite:
                raise BertkitError(f"{self.out} already holds a training run; pass --resume to continue it, "
                                   "--overwrite to start afresh, or pick a new -o")
            self._clear_previous_run()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self._call("on_fit_start", model)

        eval_every = cfg.eval_every or self.steps_per_epoch
        save_every = cfg.save_every or eval_every
        start = time.time()
        with training_progress(self.total_steps, state["step"], enabled=self.rank == 0) as bar:
            order, order_epoch = None, -1
            running = []
            while state["step"] < self.total_steps:
                step = state["step"]
                epoch = step // self.steps_per_epoch
                if epoch != order_epoch:
                    order, order_epoch = self._epoch_order(epoch), epoch
                loss = self._step(model, optimizer, scheduler, step, order)
                running.append(loss)
                state["step"] = step + 1
                self._call("on_step_end", model, state["step"], loss)
                bar.advance(loss, scheduler.get_last_lr()[0])
                done = state["step"] == self.total_steps or self._out_of_time(start, model)
                if state["step"] % eval_every == 0 or done:
                    metrics = self._evaluate(model, state["step"])
                    metrics["train_loss"] = float(sum(running)) / len(running)
                    running = []
                    state["history"].append({"step": state["step"], **metrics})
                    bar.report(state["step"], metrics)
                    if self.rank == 0:
                        self._keep(model, metrics, state, done)
                if state["step"] % save_every == 0 or done:
                    rng_states = all_rng_states(self.world_size)
                    if self.rank == 0:
                        save_checkpoint(last, model, optimizer, scheduler, state, rng_states)
                    self.saved_step = state["step"]
                barrier()
                if done:
                    break
        if state["step"] < self.total_steps:
            log(f"stopped at step {state['step']} of {self.total_steps}: --max-minutes reached; --resume continues", rank=self.rank)
        return self._finish(model, state, time.time() - start)

    def _clear_previous_run(self) -> None:
        """--overwrite: the old run's checkpoints and state go, so nothing can resume or mix with
        them; the old model stays until the new one replaces it at the first evaluation."""
        if self.rank == 0:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            (self.out / "trainer_state.json").unlink(missing_ok=True)
            log(f"--overwrite: removed the previous run's checkpoints in {self.out}")
        barrier()

    def _keep(self, model, metrics: dict, state: dict, done: bool) -> None:
        """After an evaluation (rank 0): a new best goes to ``checkpoints/best``, and the model the
        run would ship if it ended now (that best; with none, e.g. no dev set, the current weights)
        into the output directory, so an interrupted run leaves a loadable one.  The last
        evaluation's is left to :meth:`_finish`, which saves the final model there anyway."""
        better = self._is_better(metrics, state["best_metric"])
        if better:
            state["best_metric"], state["best_step"] = metrics[self.cfg.metric], state["step"]
            save_model_weights(self.ckpt_dir / "best", model)
        if not done and (better or not (self.ckpt_dir / "best").exists()):
            # the file loaders look for first goes last, so a first model appears all at once:
            # config.json, or bertkit.json where there is none (a Lattice-BERT directory)
            with atomic_entries(self.out, last=("bertkit.json", "config.json")) as staging:
                self.task.save(unwrap(model), staging)

    def _out_of_time(self, start: float, model) -> bool:
        if not self.cfg.max_minutes:
            return False
        over = time.time() - start >= self.cfg.max_minutes * 60
        # ranks' clocks differ: all stop at the same step
        return any_rank(over, self.world_size, module_device(model))

    def _finish(self, model, state: dict, seconds: float) -> dict:
        checksums = gather(parameter_checksum(model), self.world_size)
        if self.rank == 0:
            best = self.ckpt_dir / "best"
            if best.exists():  # the final model is the best one seen on dev
                load_weights(model, best / "model.safetensors")
            self.task.save(unwrap(model), self.out)
            summary = {
                **{k: v for k, v in state.items() if k != "history"},
                "total_steps": self.total_steps,
                "train_seconds_this_run": round(seconds, 1),
                "world_size": self.world_size,
                "rank_checksums": checksums,
                "config": _jsonable(asdict(self.cfg)),
                "history": state["history"],
            }
            write_json_atomic(self.out / "trainer_state.json", summary)
        barrier()
        return state


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
